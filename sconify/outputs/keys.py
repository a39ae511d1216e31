"""Where key material comes from, and the keys file that carries it out of the build.

Keys are the only randomness in a conversion. By default they come from the OS CSPRNG; for
reproducible CI builds ``--deterministic-keys-from FILE`` derives every byte from a secret seed
file with HKDF-SHA256 (same seed, same image: anyone holding the seed can decrypt, so treat the
seed like the keys themselves).

The keys file (schema ``sconify.keys/v2``, docs/session.md) holds one entry per volume: the
path, fspf path, fspf key, fspf tag (and the image's tag, which the runtime never moves) and
protection of every protected region; and, when the
image has encrypted code (``--encrypted-code``), the ``code_key`` its embedfs members are
sealed with (embedfs.codecrypt). Keys never go into the image, the manifest or a log.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sconify.atomic import StagedFiles, atomic_write_bytes
from sconify.errors import UsageError

KEYS_FILE_SCHEMA = "sconify.keys/v2"
OLD_KEYS_FILE_SCHEMA = "sconify.keys/v1"  # one fspf for every region: refused, see KeysFile.read
FSPF_KEY_SIZE = 32
FSPF_TAG_SIZE = 16
CODE_KEY_SIZE = 32  # embedfs.codecrypt.CODE_KEY_SIZE
MIN_SEED_BYTES = 32

RandomSource = Callable[[int], bytes]


class DeterministicRandom:
    """A byte source derived from a seed and what is being built: call n gives
    HKDF(seed, info = context | n). The context (the input image's config digest, which covers
    every layer, and the regions) makes other inputs get other keys, so one key never encrypts
    two different plaintexts under the same nonces."""

    def __init__(self, seed: bytes, context: bytes):
        self._seed = seed
        self._context = context
        self._counter = 0

    def __call__(self, length: int) -> bytes:
        self._counter += 1
        return HKDF(
            algorithm=hashes.SHA256(),
            length=length,
            salt=b"sconify deterministic keys v2",
            info=self._context + b"|sconify key %d" % self._counter,
        ).derive(self._seed)


def random_source(seed_file: str | None, context: bytes = b"") -> RandomSource:
    """os.urandom, or keys derived from the secret seed file and the build ``context``."""
    if seed_file is None:
        return os.urandom
    path = Path(seed_file)
    try:
        seed = path.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read --deterministic-keys-from {seed_file}: {exc.strerror}; "
            "create it with: head -c 32 /dev/urandom > seed.bin"
        ) from None
    if len(seed) < MIN_SEED_BYTES:
        raise UsageError(
            f"--deterministic-keys-from {seed_file} holds {len(seed)} bytes; it needs at least "
            f"{MIN_SEED_BYTES} secret random bytes (head -c 32 /dev/urandom > {seed_file})"
        )
    return DeterministicRandom(seed, context)


def new_code_key(seed_file: str | None, context: bytes = b"") -> bytes:
    """The key encrypted code is sealed with: random, or derived from the seed file like the
    volume keys but from a source of its own (so the volume keys of a conversion do not change
    when --encrypted-code is added). Sealing uses synthetic nonces (embedfs.codecrypt), so one
    key across conversions never meets two messages under one nonce."""
    return random_source(seed_file, context + b"|sconify code key")(CODE_KEY_SIZE)


PROTECTIONS = ("encrypted", "authenticated")  # what a volume's files are


@dataclass(frozen=True)
class VolumeKeys:
    """One volume: where its fspf sits in the image, its key and the tag it must carry."""

    path: str  # the region, e.g. /app/data ('/' with --authenticate-root)
    fspf_path: str  # <path>/.sconify.fspf
    fspf_key: bytes = field(repr=False)
    fspf_tag: bytes
    protection: str  # encrypted | authenticated
    # The tag of the image's own copy (the conversion's fspf_tag), kept as fspf_tag_image when the
    # runtime moves fspf_tag for a mounted volume: a container that runs on the image's copy (no
    # volume mounted) is still accepted (docs/runtime.md, "Freshness").
    image_tag: bytes | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "fspf_path": self.fspf_path,
            "fspf_key": self.fspf_key.hex(),
            "fspf_tag": self.fspf_tag.hex(),
            "fspf_tag_image": (self.image_tag or self.fspf_tag).hex(),
            "protection": self.protection,
        }

    @classmethod
    def from_dict(cls, doc: dict) -> "VolumeKeys":
        volume = cls(
            path=doc["path"],
            fspf_path=doc["fspf_path"],
            fspf_key=bytes.fromhex(doc["fspf_key"]),
            fspf_tag=bytes.fromhex(doc["fspf_tag"]),
            protection=doc["protection"],
            image_tag=bytes.fromhex(doc["fspf_tag_image"]) if "fspf_tag_image" in doc else None,
        )
        if (
            not isinstance(volume.path, str)
            or not volume.path.startswith("/")
            or not isinstance(volume.fspf_path, str)
            or len(volume.fspf_key) != FSPF_KEY_SIZE
            or len(volume.fspf_tag) != FSPF_TAG_SIZE
            or (volume.image_tag is not None and len(volume.image_tag) != FSPF_TAG_SIZE)
            or volume.protection not in PROTECTIONS
        ):
            raise ValueError("malformed volume")
        return volume


@dataclass(frozen=True)
class KeysFile:
    """What the attestation service must hand to the enclave: for every volume (a protected
    region with its own fspf) the fspf key and the tag that fspf must carry."""

    volumes: tuple[VolumeKeys, ...]
    mrenclave: str
    session_name: str
    # SHA-256 of the whole measured executable: the runtime refuses a file whose bytes outside
    # every loaded segment (not in MRENCLAVE) were changed. "" when not recorded.
    executable_sha256: str = ""
    # The key of the embedfs's encrypted members (--encrypted-code); None when there are none.
    code_key: bytes | None = field(default=None, repr=False)
    # SHA-256 of the image's /.sconify/runtime.json (its policy and volumes): the launcher
    # refuses another one. "" when not recorded (--runtime none).
    runtime_config_sha256: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "volumes", tuple(sorted(self.volumes, key=lambda v: v.path)))

    def volume(self, path: str) -> VolumeKeys | None:
        """The volume whose region is ``path``, or None."""
        return next((v for v in self.volumes if v.path == path), None)

    def to_json(self) -> bytes:
        doc = {
            "schema": KEYS_FILE_SCHEMA,
            "session": self.session_name,
            "mrenclave": self.mrenclave,
            "volumes": [volume.to_dict() for volume in self.volumes],
        }
        if self.executable_sha256:
            doc["executable_sha256"] = self.executable_sha256
        if self.code_key is not None:
            doc["code_key"] = self.code_key.hex()
        if self.runtime_config_sha256:
            doc["runtime_config_sha256"] = self.runtime_config_sha256
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def write(self, path: str | os.PathLike, staged: StagedFiles | None = None) -> None:
        """Write with mode 0600: the file holds the key to every protected file (``staged``:
        only staged there, see sconify.atomic.StagedFiles)."""
        atomic_write_bytes(path, self.to_json(), mode=0o600, staged=staged)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "KeysFile":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            schema = doc.get("schema")
            if schema == OLD_KEYS_FILE_SCHEMA:
                raise UsageError(
                    f"keys file {path} is {OLD_KEYS_FILE_SCHEMA} (one fspf for the whole image, written "
                    f"by an older sconify-image); this sconify reads {KEYS_FILE_SCHEMA} (one fspf per "
                    "volume): re-convert the image, or verify it with the sconify version that wrote it"
                )
            if schema != KEYS_FILE_SCHEMA:
                raise ValueError(f"schema is {schema!r}, expected {KEYS_FILE_SCHEMA!r}")
            volumes = tuple(VolumeKeys.from_dict(v) for v in doc["volumes"])
            if len({v.path for v in volumes}) != len(volumes) or not isinstance(doc["mrenclave"], str):
                raise ValueError("duplicate volume")
            executable_sha256 = doc.get("executable_sha256", "")
            runtime_config_sha256 = doc.get("runtime_config_sha256", "")
            if not isinstance(executable_sha256, str) or not isinstance(runtime_config_sha256, str):
                raise ValueError("executable_sha256")
            code_key = bytes.fromhex(doc["code_key"]) if "code_key" in doc else None
            if code_key is not None and len(code_key) != CODE_KEY_SIZE:
                raise ValueError("code_key")
            return cls(volumes=volumes, mrenclave=doc["mrenclave"], session_name=doc["session"],
                       executable_sha256=executable_sha256, code_key=code_key,
                       runtime_config_sha256=runtime_config_sha256)
        except OSError as exc:
            raise UsageError(f"cannot read keys file {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            # Never echo the content or the parser's message: the file holds the keys.
            raise UsageError(
                f"keys file {path} is not a sconify keys file (missing or malformed field); "
                "pass the keys.json written by sconify-image"
            ) from None
