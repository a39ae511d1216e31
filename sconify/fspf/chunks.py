"""Per-chunk AES-GCM: nonce and associated data that bind a chunk to its file and position.

nonce = u64 chunk index | u32 final flag            (unique per chunk; every file has its own key)
aad   = "SCNFSPF-CHUNK" | u8 version | file id (16) | u64 chunk index | u8 final | path (its bytes)

Encrypted chunks are stored as ciphertext followed by the 16-byte tag. Authenticated chunks
stay plaintext; their tag is AES-GCM over an empty plaintext with aad = chunk aad | data,
kept in the fspf.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sconify.fspf.format import path_bytes

TAG_SIZE = 16
_NONCE = struct.Struct("<QI")
_POSITION = struct.Struct("<QB")
_AAD_PREFIX = b"SCNFSPF-CHUNK\x01"


class ChunkCipher:
    """Seals, opens and authenticates the chunks of one file under that file's key."""

    def __init__(self, key: bytes, file_id: bytes, path: str) -> None:
        self._aead = AESGCM(key)
        self._identity = _AAD_PREFIX + file_id
        self._path = path_bytes(path)
        self.aad_size = len(self._identity) + _POSITION.size + len(self._path)

    def nonce(self, index: int, final: bool) -> bytes:
        return _NONCE.pack(index, int(final))

    def aad(self, index: int, final: bool) -> bytes:
        return self._identity + _POSITION.pack(index, int(final)) + self._path

    def seal_into(self, index: int, final: bool, data: memoryview, out: memoryview) -> None:
        """Write ciphertext then tag of one chunk into `out` (len(data) + 16 bytes)."""
        self._aead.encrypt_into(self.nonce(index, final), data, self.aad(index, final), out)

    def open(self, index: int, final: bool, sealed: bytes) -> bytes | None:
        """Plaintext of one sealed chunk, or None if it does not authenticate."""
        try:
            return self._aead.decrypt(self.nonce(index, final), sealed, self.aad(index, final))
        except InvalidTag:
            return None

    def mac(self, index: int, final: bool, data: bytes) -> bytes:
        """Tag of one plaintext chunk (authenticated regions)."""
        return self._aead.encrypt(self.nonce(index, final), b"", self.aad(index, final) + data)

    def mac_in_place(self, index: int, final: bool, buffer: memoryview) -> bytes:
        """`mac` of the chunk held in buffer[aad_size:], writing the aad into buffer[:aad_size].

        Saves a copy of every chunk when tags are computed from a stream.
        """
        buffer[: self.aad_size] = self.aad(index, final)
        return self._aead.encrypt(self.nonce(index, final), b"", buffer)
