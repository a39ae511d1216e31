"""Signed measurements: an in-toto Statement v1 whose predicate is the measurement manifest,
in a DSSE envelope (as cosign and in-toto lay out attestations).

* Statement: ``_type`` https://in-toto.io/Statement/v1, ``subject`` the image (name: its
  repository or reference, digest: the SHA-256 of its manifest), ``predicateType``
  ``PREDICATE_TYPE``, ``predicate`` the manifest.json document.
* Envelope: ``payloadType`` application/vnd.in-toto+json, ``payload`` the statement in base64,
  ``signatures`` [{keyid, sig}]: the signature (base64) over the DSSE pre-authentication
  encoding ``"DSSEv1" SP len(type) SP type SP len(body) SP body``. ECDSA P-256 keys sign with
  SHA-256 (an ASN.1 DER signature, as cosign), Ed25519 keys sign the PAE directly. ``keyid`` is
  the hex SHA-256 of the public key's DER SubjectPublicKeyInfo.

The crypto (``cryptography``) is imported when a key is loaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from sconify.errors import UsageError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://sconify.dev/measurement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
MAX_ENVELOPE_SIZE = 4 << 20
KEY_HINT = ("create one with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem` "
            "(or `-algorithm ed25519`)")


class EnvelopeError(Exception):
    """An envelope that does not verify: the message is one line for the report."""


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def load_signing_key(path: str):
    """An ECDSA P-256 or Ed25519 private key (PEM, unencrypted)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise UsageError(f"cannot read signing key {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not an unencrypted PEM private key; {KEY_HINT}") from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UsageError(f"{path} is neither an ECDSA P-256 nor an Ed25519 key; {KEY_HINT}")


def load_verify_key(path: str):
    """An ECDSA P-256 or Ed25519 public key (PEM)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read signer key {path}: {exc.strerror}") from None
    except ValueError:
        raise UsageError(
            f"{path} is not a PEM public key; export it with `openssl pkey -in key.pem -pubout -out signer.pem`"
        ) from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UsageError(f"{path} is neither an ECDSA P-256 nor an Ed25519 public key")


def keyid(public) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def algorithm(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return "ed25519" if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)) else "ecdsa-p256"


def statement(name: str, manifest_digest: str, manifest: dict[str, Any]) -> bytes:
    """The in-toto Statement (canonical JSON bytes) for the image ``name`` at ``manifest_digest``."""
    algo, _, hexdigest = manifest_digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise UsageError(f"cannot attest {name}: its manifest digest {manifest_digest!r} is not a sha256 digest")
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": hexdigest}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": manifest,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def sign_envelope(payload: bytes, key) -> dict[str, Any]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    message = pae(PAYLOAD_TYPE, payload)
    if algorithm(key) == "ed25519":
        signature = key.sign(message)
    else:
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": keyid(key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}],
    }


def envelope_bytes(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()


def parse_envelope(data: bytes, where: str) -> dict[str, Any]:
    """The envelope of ``data`` (JSON, or the first line of a .intoto.jsonl)."""
    text = data.decode("utf-8", errors="replace").strip()
    first = text.splitlines()[0] if text else ""
    try:
        envelope = json.loads(first)
    except ValueError:
        raise EnvelopeError(f"{where} is not a DSSE envelope (not JSON)") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("signatures"), list) \
            or not isinstance(envelope.get("payload"), str) or not isinstance(envelope.get("payloadType"), str):
        raise EnvelopeError(f"{where} is not a DSSE envelope (payloadType, payload, signatures)")
    return envelope


def verify_envelope(envelope: dict[str, Any], public, signer_name: str) -> dict[str, Any]:
    """The statement of ``envelope`` once a signature by ``public`` verifies over its PAE."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if envelope["payloadType"] != PAYLOAD_TYPE:
        raise EnvelopeError(f"the envelope carries {envelope['payloadType'][:60]!r}, not an in-toto statement")
    try:
        payload = base64.b64decode(envelope["payload"], validate=True)
    except ValueError:
        raise EnvelopeError("the envelope's payload is not base64") from None
    message = pae(PAYLOAD_TYPE, payload)
    wanted = keyid(public)
    ids = []
    for entry in envelope["signatures"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
            continue
        ids.append(str(entry.get("keyid", "")))
        if entry.get("keyid") not in (None, "", wanted):
            continue
        try:
            signature = base64.b64decode(entry["sig"], validate=True)
            if algorithm(public) == "ed25519":
                public.verify(signature, message)
            else:
                public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise EnvelopeError(
                "the signature does not match the signed statement (statement or signature changed)") from None
        break
    else:
        others = ", ".join(i[:16] + "..." for i in ids if i) or "none"
        raise EnvelopeError(f"signed by another key (keyid {others}), not by {signer_name}")
    try:
        doc = json.loads(payload)
    except ValueError:
        raise EnvelopeError("the signed payload is not JSON") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise EnvelopeError("the signed payload is not an in-toto Statement v1")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise EnvelopeError(f"the signed statement's predicateType is {str(doc.get('predicateType'))[:80]!r}, "
                            f"not {PREDICATE_TYPE}")
    return doc


def subject_digests(doc: dict[str, Any]) -> list[str]:
    subjects = doc.get("subject")
    found = []
    for subject in subjects if isinstance(subjects, list) else []:
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(digest, dict) and isinstance(digest.get("sha256"), str):
            found.append("sha256:" + digest["sha256"])
    return found
