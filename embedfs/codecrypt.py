"""Encrypted members of an embedfs archive (version 2): code that must stay secret.

A member packed encrypted stores ``nonce || AES-256-GCM(frames) || tag`` where ``frames`` are
the zstd frames a plain member would store (see docs/embedfs-format.md, "Encrypted members"):

    K                 the code key (32 bytes, keys.json "code_key"; never in the image)
    K_enc, K_nonce    HKDF-Expand-SHA256(K, info, 32) with the two labels below
    ad                "embedfs-v2 member\\0" || u16 path length || path (UTF-8)
    nonce             HMAC-SHA256(K_nonce, ad || frames)[:12]  (synthetic: a function of the
                      key, the path and the bytes encrypted, so the same key never takes one
                      nonce for two different messages, whatever the seed or the run)
    stored            nonce || AES-256-GCM(K_enc, nonce, frames, ad)   (ciphertext || 16-byte tag)

The member's recorded SHA-256 is of ``stored``: the root hash and MRENCLAVE cover the
ciphertext without publishing a hash of the plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from embedfs.errors import InputError, IntegrityError

CODE_KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = NONCE_SIZE + TAG_SIZE  # stored bytes beyond the frames
ENCRYPTION_INFO = b"embedfs-v2 code encryption key"
NONCE_INFO = b"embedfs-v2 code nonce key"
AD_DOMAIN = b"embedfs-v2 member\x00"


def subkey(code_key: bytes, info: bytes) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(code_key)


def associated_data(path: bytes) -> bytes:
    """What binds a member's ciphertext to its path (length-prefixed: no two paths share it)."""
    return AD_DOMAIN + struct.pack("<H", len(path)) + path


class CodeCipher:
    """Seals and opens the stored bytes of encrypted members under one code key."""

    def __init__(self, code_key: bytes):
        if not isinstance(code_key, (bytes, bytearray)) or len(code_key) != CODE_KEY_SIZE:
            raise InputError(f"the code key must be {CODE_KEY_SIZE} bytes; give the code_key of the keys file")
        self._aead = AESGCM(subkey(bytes(code_key), ENCRYPTION_INFO))
        self._nonce_key = subkey(bytes(code_key), NONCE_INFO)

    def seal(self, path: bytes, frames: bytes) -> bytes:
        """The stored bytes of a member at ``path`` (UTF-8) whose zstd frames are ``frames``."""
        ad = associated_data(path)
        nonce = hmac.new(self._nonce_key, ad + frames, hashlib.sha256).digest()[:NONCE_SIZE]
        return nonce + self._aead.encrypt(nonce, frames, ad)

    def open(self, path: str, stored: bytes | memoryview) -> bytes:
        """The zstd frames of an encrypted member, or IntegrityError (check "code decryption")
        when the key is another or the stored bytes were changed."""
        stored = bytes(stored)
        if len(stored) < OVERHEAD:
            raise IntegrityError(f"{path}: encrypted content is {len(stored)} bytes, shorter than nonce and tag; "
                                 "the archive was modified", path=path, check="code decryption")
        encoded = path.encode("utf-8", "surrogateescape")
        try:
            return self._aead.decrypt(stored[:NONCE_SIZE], stored[NONCE_SIZE:], associated_data(encoded))
        except InvalidTag:
            raise IntegrityError(f"{path}: encrypted content does not decrypt under this code key (wrong key, or "
                                 "the archive was modified)", path=path, check="code decryption") from None
