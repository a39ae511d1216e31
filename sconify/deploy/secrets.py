"""A deployment's secrets: what the policy declares (``Secret``), their values
(``secrets.json``, schema ``sconify.secrets/v1``, mode 0600), made once and kept.

Kinds (docs/deploy.md): ``ascii`` (``size`` letters and digits from the CSPRNG), ``binary``
(``size`` random bytes), ``x509`` (an ECDSA P-256 key and a self-signed certificate for
``common_name``, valid ``valid_days``). A value never leaves this module but into
``secrets.json``: errors name the secret, never its value, and ``describe`` says what a value
is without showing it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets as csprng
import string
from dataclasses import dataclass
from pathlib import Path

from sconify.atomic import StagedFiles, atomic_write_bytes
from sconify.errors import UsageError

SECRETS_SCHEMA = "sconify.secrets/v1"
KINDS = ("ascii", "binary", "x509")
DEFAULT_SIZE = {"ascii": 24, "binary": 32}
MAX_SIZE = 4096
DEFAULT_VALID_DAYS = 365
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,127}$")  # a volume's key: <volume name>_key
ASCII_ALPHABET = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Secret:
    """A secret as the policy declares it (never its value)."""

    name: str
    kind: str
    size: int = 0  # ascii: characters, binary: bytes; 0 for x509
    common_name: str = ""  # x509
    valid_days: int = 0  # x509
    export_public: bool | None = None  # SCONE's flag, kept as the policy says it

    def to_policy(self) -> dict:
        doc: dict = {"name": self.name, "kind": self.kind}
        if self.kind == "x509":
            doc.update({"common_name": self.common_name, "valid_days": self.valid_days})
        else:
            doc["size"] = self.size
        if self.export_public is not None:
            doc["export_public"] = self.export_public
        return doc


def check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UsageError(f"{where}: secret name {str(name)[:40]!r} is not valid; use letters, digits, '_' and '-' "
                         "(starting with a letter or '_', at most 128)")
    return name


def secret_from_policy(doc: object, where: str) -> tuple[Secret, str | None]:
    """A declaration of the policy's ``secrets`` list, and the ``value`` it carries (a value typed
    into policy.yaml, moved to secrets.json by ``init``), or None."""
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: each entry of secrets must be a mapping with name and kind")
    name = check_name(doc.get("name"), where)
    kind = doc.get("kind")
    if kind not in KINDS:
        raise UsageError(f"{where}: secret {name} has kind {str(kind)[:20]!r}; use one of {', '.join(KINDS)}")
    value = doc.get("value")
    if value is not None and (kind == "x509" or not isinstance(value, str)):
        raise UsageError(f"{where}: secret {name}: a value in the policy must be text (ascii: as it is, binary: "
                         "hex); an x509 secret is generated")
    export_public = doc.get("export_public")
    if export_public is not None and not isinstance(export_public, bool):
        raise UsageError(f"{where}: secret {name}: export_public must be true or false")
    if kind == "x509":
        common_name = doc.get("common_name", name)
        days = doc.get("valid_days", DEFAULT_VALID_DAYS)
        if not isinstance(common_name, str) or not common_name or not isinstance(days, int) or not 0 < days <= 36500:
            raise UsageError(f"{where}: secret {name}: common_name must be text and valid_days a number of days "
                             "(1 to 36500)")
        return Secret(name, kind, common_name=common_name, valid_days=days, export_public=export_public), None
    size = doc.get("size", DEFAULT_SIZE[kind])
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_SIZE:
        raise UsageError(f"{where}: secret {name}: size must be a number from 1 to {MAX_SIZE}")
    return Secret(name, kind, size=size, export_public=export_public), value


def parse_secret_option(text: str) -> Secret:
    """``--secret NAME:KIND[:SIZE]`` (x509: ``NAME:x509[:COMMON_NAME]``)."""
    name, _, rest = text.partition(":")
    kind, _, extra = rest.partition(":")
    where = f"--secret {text}"
    if kind not in KINDS:
        raise UsageError(f"{where}: give NAME:KIND[:SIZE] with KIND one of {', '.join(KINDS)} "
                         "(e.g. --secret DB_PASSWORD:ascii:24, --secret tls:x509:app.example.com)")
    doc: dict = {"name": name, "kind": kind}
    if extra:
        if kind == "x509":
            doc["common_name"] = extra
        elif extra.isdigit():
            doc["size"] = int(extra)
        else:
            raise UsageError(f"{where}: SIZE must be a number of {'characters' if kind == 'ascii' else 'bytes'}")
    return secret_from_policy(doc, where)[0]


def generate(secret: Secret) -> dict:
    """A new value of ``secret`` as secrets.json holds it."""
    if secret.kind == "ascii":
        return {"kind": "ascii", "value": "".join(csprng.choice(ASCII_ALPHABET) for _ in range(secret.size))}
    if secret.kind == "binary":
        return {"kind": "binary", "value_hex": csprng.token_bytes(secret.size).hex()}
    return self_signed(secret.common_name, secret.valid_days)


def self_signed(common_name: str, valid_days: int) -> dict:
    """An ECDSA P-256 key and a self-signed certificate for ``common_name`` (PEM, PKCS#8)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
    )
    try:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        certificate = builder.sign(key, hashes.SHA256())
    except ValueError:  # not a DNS name (e.g. has a space): the common name alone
        certificate = builder.sign(key, hashes.SHA256())
    return {
        "kind": "x509",
        "certificate": certificate.public_bytes(serialization.Encoding.PEM).decode(),
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
    }


def from_policy_value(secret: Secret, value: str, where: str) -> dict:
    """The secrets.json entry of a value typed into policy.yaml."""
    if secret.kind == "ascii":
        return {"kind": "ascii", "value": value}
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{where}: the value of binary secret {secret.name} must be hex") from None
    return {"kind": "binary", "value_hex": raw.hex()}


def matches(secret: Secret, entry: dict) -> bool:
    """Whether a kept value is of the kind the policy declares."""
    return entry.get("kind") == secret.kind


def describe(entry: dict) -> str:
    """What a value is, without the value: its kind and size, a certificate's subject and expiry."""
    kind = entry.get("kind")
    if kind == "ascii":
        return f"ascii, {len(entry.get('value', ''))} characters"
    if kind == "binary":
        return f"binary, {len(entry.get('value_hex', '')) // 2} bytes"
    if kind == "x509":
        from cryptography import x509

        try:
            certificate = x509.load_pem_x509_certificate(entry["certificate"].encode())
        except (KeyError, ValueError, AttributeError):
            return "x509, certificate unreadable"
        until = certificate.not_valid_after_utc.strftime("%Y-%m-%d")
        return f"x509, {certificate.subject.rfc4514_string()}, valid until {until}"
    return "unknown kind"


@dataclass
class SecretsFile:
    """secrets.json: the values of one deployment's secrets."""

    policy: str
    values: dict[str, dict]

    def to_json(self) -> bytes:
        doc = {"schema": SECRETS_SCHEMA, "policy": self.policy, "secrets": dict(sorted(self.values.items()))}
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def write(self, path: str | os.PathLike, staged: StagedFiles | None = None) -> None:
        atomic_write_bytes(path, self.to_json(), mode=0o600, staged=staged)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "SecretsFile":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("schema") != SECRETS_SCHEMA or not isinstance(doc.get("policy"), str):
                raise ValueError("schema")
            values = doc["secrets"]
            if not isinstance(values, dict) or not all(
                    isinstance(entry, dict) and entry.get("kind") in KINDS for entry in values.values()):
                raise ValueError("secrets")
            return cls(doc["policy"], dict(values))
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            # Never echo the content or the parser's message: the file holds the values.
            raise UsageError(f"{path} is not a sconify secrets file ({SECRETS_SCHEMA}); move it away and rerun "
                             "`sconify deploy init` to make new secrets") from None
