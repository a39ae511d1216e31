"""Per-chunk AES-GCM: nonce and associated data that bind a chunk to its file and position.

nonce = u64 chunk index | u32 final flag            (unique per chunk; every file has its own key)
aad   = "SCNFSPF-CHUNK" | u8 version | file id (16) | u64 chunk index | u8 final | path (UTF-8)

Encrypted chunks are stored as ciphertext followed by the 16-byte tag. Authenticated chunks
stay plaintext; their tag is AES-GCM over an empty plaintext with aad = chunk aad | data,
kept in the fspf.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = struct.Struct("<QI")
_POSITION = struct.Struct("<QB")
_AAD_PREFIX = b"SCNFSPF-CHUNK\x01"


class ChunkCipher:
    """Seals and opens the chunks of one file under that file's key."""

    def __init__(self, key: bytes, file_id: bytes, path: str) -> None:
        self._aead = AESGCM(key)
        self._identity = _AAD_PREFIX + file_id
        self._path = path.encode()

    def _nonce_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        nonce = _NONCE.pack(index, int(final))
        return nonce, self._identity + _POSITION.pack(index, int(final)) + self._path

    def seal(self, index: int, final: bool, data: bytes) -> bytes:
        """Ciphertext of one chunk followed by its tag."""
        nonce, aad = self._nonce_aad(index, final)
        return self._aead.encrypt(nonce, data, aad)

    def open(self, index: int, final: bool, sealed: bytes) -> bytes | None:
        """Plaintext of one sealed chunk, or None if it does not authenticate."""
        nonce, aad = self._nonce_aad(index, final)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            return None

    def mac(self, index: int, final: bool, data: bytes) -> bytes:
        """Tag of one plaintext chunk (authenticated regions)."""
        nonce, aad = self._nonce_aad(index, final)
        return self._aead.encrypt(nonce, b"", aad + data)
