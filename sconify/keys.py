"""Where key material comes from, and the keys file that carries it out of the build.

Keys are the only randomness in a conversion. By default they come from the OS CSPRNG; for
reproducible CI builds ``--deterministic-keys-from FILE`` derives every byte from a secret seed
file with HKDF-SHA256 (same seed, same image: anyone holding the seed can decrypt, so treat the
seed like the keys themselves).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sconify.atomic import atomic_write_bytes
from sconify.errors import UsageError

KEYS_FILE_SCHEMA = "sconify.keys/v1"
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


@dataclass(frozen=True)
class KeysFile:
    """What the attestation service must hand to the enclave: the fspf key and its tag."""

    fspf_path: str
    fspf_key: bytes
    fspf_tag: bytes
    mrenclave: str
    session_name: str

    def to_json(self) -> bytes:
        doc = {
            "schema": KEYS_FILE_SCHEMA,
            "session": self.session_name,
            "mrenclave": self.mrenclave,
            "fspf_path": self.fspf_path,
            "fspf_key": self.fspf_key.hex(),
            "fspf_tag": self.fspf_tag.hex(),
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def write(self, path: str | os.PathLike) -> None:
        """Write with mode 0600: the file holds the key to every protected file."""
        atomic_write_bytes(path, self.to_json(), mode=0o600)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "KeysFile":
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("schema") != KEYS_FILE_SCHEMA:
                raise ValueError(f"schema is {doc.get('schema')!r}, expected {KEYS_FILE_SCHEMA!r}")
            return cls(
                fspf_path=doc["fspf_path"],
                fspf_key=bytes.fromhex(doc["fspf_key"]),
                fspf_tag=bytes.fromhex(doc["fspf_tag"]),
                mrenclave=doc["mrenclave"],
                session_name=doc["session"],
            )
        except OSError as exc:
            raise UsageError(f"cannot read keys file {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            # Never echo the content or the parser's message: the file holds the key.
            raise UsageError(
                f"keys file {path} is not a sconify keys file (missing or malformed field); "
                "pass the keys.json written by sconify-image"
            ) from None
