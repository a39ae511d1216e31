"""The fspf on-disk format, version 1: records, body encoding and the two envelopes.

Layout (all integers little-endian; see docs/fspf-format.md):

    header   = magic "SCNFSPF\\0" | u8 version | u8 envelope | 6 zero bytes
    plain    = header | body | tag                  tag = AES-GCM(zero key, zero nonce, aad=header|body)
    encrypted= header | nonce(12) | AES-GCM(key, nonce, body, aad=header|nonce) | tag
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sconify.fspf.errors import FspfError

MAGIC = b"SCNFSPF\0"
VERSION = 1
ENVELOPE_PLAIN = 0
ENVELOPE_ENCRYPTED = 1
HEADER = struct.Struct("<8sBB6x")
NONCE_SIZE = 12
TAG_SIZE = 16
FSPF_KEY_SIZE = 32

KINDS = ("kernel", "ephemeral")
PROTECTIONS = ("not-protected", "authenticated", "encrypted")
# A file record may also be a symlink the service made in a volume at run time: its target
# string is the record's authenticated content (docs/fspf-format.md).
FILE_PROTECTIONS = PROTECTIONS + ("symlink",)
KEY_LENGTHS = (16, 24, 32)
# 64 KiB: AES-GCM reaches its plateau here on this machine (measured 1.9 GB/s at 4 KiB,
# 2.9 at 16 KiB, 3.3 at 64 KiB, 3.3 at 1 MiB on one core) while random reads stay cheap.
DEFAULT_CHUNK_SIZE = 64 * 1024
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
MAX_PATH_BYTES = 4096

_REGION = struct.Struct("<BBBI")
_FILE = struct.Struct("<QBI16sB")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


@dataclass(frozen=True)
class Region:
    """A subtree of the file system with one kind of storage and one protection."""

    path: str
    kind: str = "kernel"
    protection: str = "not-protected"
    kernel_path: str | None = None  # where a kernel region's files are stored; None if ephemeral
    key_length: int = 32
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class FileRecord:
    """One protected file: its identity, its key and (authenticated) its chunk tags."""

    path: str
    size: int
    protection: str
    chunk_size: int
    file_id: bytes = field(repr=False)
    key: bytes = field(repr=False)
    chunk_tags: tuple[bytes, ...] = field(default=(), repr=False)


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a file: at least one, so an empty file still has a tagged chunk."""
    return max(1, -(-size // chunk_size))


def stored_size(size: int, chunk_size: int, protection: str) -> int:
    """Bytes a file occupies on disk: encrypted files carry a tag after each chunk."""
    if protection == "encrypted":
        return size + TAG_SIZE * chunk_count(size, chunk_size)
    return size


def encode_body(regions: list[Region], files: list[FileRecord]) -> bytes:
    """Serialise regions and files (both already sorted by path)."""
    out = bytearray(_U32.pack(len(regions)))
    for region in regions:
        _put_str(out, region.path)
        out += _REGION.pack(
            KINDS.index(region.kind),
            PROTECTIONS.index(region.protection),
            region.key_length,
            region.chunk_size,
        )
        _put_str(out, region.kernel_path or "")
    out += _U32.pack(len(files))
    for record in files:
        _put_str(out, record.path)
        out += _FILE.pack(
            record.size,
            FILE_PROTECTIONS.index(record.protection),
            record.chunk_size,
            record.file_id,
            len(record.key),
        )
        out += record.key
        out += _U32.pack(len(record.chunk_tags))
        out += b"".join(record.chunk_tags)
    return bytes(out)


def decode_body(body: bytes) -> tuple[list[Region], list[FileRecord]]:
    """Parse a body, checking every field; raise FspfError on anything malformed."""
    reader = _Reader(body)
    regions = []
    for _ in range(reader.count(_REGION.size + 4)):
        path = reader.string()
        kind, protection, key_length, chunk_size = reader.unpack(_REGION)
        kernel_path = reader.string()
        region = Region(
            path=path,
            kind=_enum(KINDS, kind, "region kind"),
            protection=_enum(PROTECTIONS, protection, "region protection"),
            kernel_path=kernel_path or None,
            key_length=key_length,
            chunk_size=chunk_size,
        )
        _check_region(region)
        regions.append(region)
    files = []
    for _ in range(reader.count(_FILE.size + 6)):
        path = reader.string()
        size, protection, chunk_size, file_id, key_length = reader.unpack(_FILE)
        key = reader.take(key_length)
        tags = tuple(reader.take(TAG_SIZE) for _ in range(reader.count(TAG_SIZE)))
        record = FileRecord(
            path=path,
            size=size,
            protection=_enum(FILE_PROTECTIONS, protection, "file protection"),
            chunk_size=chunk_size,
            file_id=file_id,
            key=key,
            chunk_tags=tags,
        )
        _check_file(record)
        files.append(record)
    if reader.remaining():
        raise _corrupt(f"{reader.remaining()} unexpected bytes after the file table")
    _check_sorted([r.path for r in regions], "regions")
    _check_sorted([f.path for f in files], "files")
    return regions, files


def seal_plain(body: bytes) -> bytes:
    """A plaintext fspf: header, body and an integrity tag (AES-GCM with the zero key)."""
    header = HEADER.pack(MAGIC, VERSION, ENVELOPE_PLAIN)
    return header + body + plain_tag(header + body)


def plain_tag(data: bytes) -> bytes:
    return AESGCM(bytes(FSPF_KEY_SIZE)).encrypt(bytes(NONCE_SIZE), b"", data)


def seal_encrypted(body: bytes, key: bytes, nonce: bytes) -> bytes:
    """An encrypted fspf: header, nonce, AES-GCM ciphertext of the body, tag."""
    header = HEADER.pack(MAGIC, VERSION, ENVELOPE_ENCRYPTED)
    return header + nonce + AESGCM(key).encrypt(nonce, body, header + nonce)


def envelope_of(data: bytes) -> int:
    """Check magic and version; return ENVELOPE_PLAIN or ENVELOPE_ENCRYPTED."""
    if len(data) < HEADER.size + TAG_SIZE or data[:8] != MAGIC:
        raise FspfError(
            "not an fspf file (bad magic or too short); pass a file written by `sconify fspf create`"
        )
    _, version, envelope = HEADER.unpack_from(data)
    if version != VERSION:
        raise FspfError(
            f"fspf format version {version} is not supported (this sconify reads version {VERSION}); "
            "use a matching sconify release or recreate the fspf"
        )
    if envelope not in (ENVELOPE_PLAIN, ENVELOPE_ENCRYPTED):
        raise _corrupt(f"unknown envelope type {envelope}")
    return envelope


def tag_of(data: bytes) -> bytes:
    """The AES-GCM tag of an fspf file (readable without the key)."""
    envelope_of(data)
    return data[-TAG_SIZE:]


def open_envelope(data: bytes, key: bytes | None) -> bytes:
    """Check the tag and return the body; a plaintext fspf needs no key."""
    envelope = envelope_of(data)
    header = data[: HEADER.size]
    if envelope == ENVELOPE_PLAIN:
        body = data[HEADER.size : -TAG_SIZE]
        if plain_tag(header + body) != data[-TAG_SIZE:]:
            raise _corrupt("its integrity tag does not match its content")
        return body
    if key is None:
        raise FspfError("the fspf is encrypted; pass the key printed by `sconify fspf encrypt`")
    if len(key) != FSPF_KEY_SIZE:
        raise FspfError(
            f"the fspf key must be {FSPF_KEY_SIZE} bytes ({2 * FSPF_KEY_SIZE} hex digits), "
            f"got {len(key)}; pass the key printed by `sconify fspf encrypt`"
        )
    if len(data) < HEADER.size + NONCE_SIZE + TAG_SIZE:
        raise _corrupt("the encrypted fspf is too short")
    nonce = data[HEADER.size : HEADER.size + NONCE_SIZE]
    try:
        return AESGCM(key).decrypt(nonce, data[HEADER.size + NONCE_SIZE :], header + nonce)
    except InvalidTag:
        raise FspfError(
            "cannot decrypt the fspf: wrong key, or the fspf was modified; "
            "pass the key printed by the `sconify fspf encrypt` that produced it"
        ) from None


def path_bytes(path: str) -> bytes:
    """A path's bytes as the kernel names it: UTF-8, and each byte that is not UTF-8 (decoded by
    os.fsdecode as a lone surrogate, U+DC80..U+DCFF) as itself."""
    return path.encode("utf-8", "surrogateescape")


def path_text(data: bytes) -> str:
    """The str of a path's bytes, as os.fsdecode gives it (path_bytes' inverse)."""
    return data.decode("utf-8", "surrogateescape")


def normalise_path(path: str, what: str = "path") -> str:
    """An absolute path without '.', '..', empty components or a trailing slash. Its bytes are
    any but NUL (a file name the kernel accepts), as os.fsencode gives them."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise FspfError(f"{what} {path!r} is not absolute; write it with a leading '/'")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FspfError(f"{what} {path!r} contains '..'; write the path without it")
    if any("\0" in p for p in parts):
        raise FspfError(f"{what} {path!r} contains a NUL byte; remove it")
    normal = "/" + "/".join(parts)
    try:
        encoded = path_bytes(normal)
    except UnicodeEncodeError:
        raise FspfError(f"{what} {path!r} holds a surrogate that names no byte; pass the name os.fsdecode gives") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise FspfError(f"{what} is longer than {MAX_PATH_BYTES} bytes; shorten it")
    return normal


def check_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FspfError(
            f"chunk size {chunk_size} is out of range; pick {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes "
            f"(default {DEFAULT_CHUNK_SIZE})"
        )


def check_key_length(key_length: int) -> None:
    if key_length not in KEY_LENGTHS:
        raise FspfError(f"key length {key_length} is not supported; use 16, 24 or 32 bytes")


def _check_region(region: Region) -> None:
    if normalise_path(region.path, "region path") != region.path:
        raise _corrupt(f"region path {region.path!r} is not normalised")
    if (region.kind == "kernel") != (region.kernel_path is not None):
        raise _corrupt(f"region {region.path} has an inconsistent kernel path")
    check_key_length(region.key_length)
    check_chunk_size(region.chunk_size)


def _check_file(record: FileRecord) -> None:
    if normalise_path(record.path, "file path") != record.path or record.path == "/":
        raise _corrupt(f"file path {record.path!r} is not normalised")
    if record.protection == "not-protected":
        raise _corrupt(f"file {record.path} is recorded without protection")
    check_key_length(len(record.key))
    check_chunk_size(record.chunk_size)
    expected = chunk_count(record.size, record.chunk_size) if record.protection != "encrypted" else 0
    if len(record.chunk_tags) != expected:
        raise _corrupt(f"file {record.path} has {len(record.chunk_tags)} chunk tags, expected {expected}")


def _check_sorted(paths: list[str], what: str) -> None:
    encoded = [path_bytes(p) for p in paths]  # byte order, as the runtime compares them (strcmp)
    if any(a >= b for a, b in zip(encoded, encoded[1:])):
        raise _corrupt(f"{what} are not sorted or not unique")


def _enum(names: tuple[str, ...], value: int, what: str) -> str:
    if value >= len(names):
        raise _corrupt(f"unknown {what} {value}")
    return names[value]


def _put_str(out: bytearray, text: str) -> None:
    data = path_bytes(text)
    out += _U16.pack(len(data))
    out += data


def _corrupt(detail: str) -> FspfError:
    return FspfError(f"corrupt fspf: {detail}; rebuild it with `sconify fspf create/addr/addf`")


class _Reader:
    """Bounded reads from a body; every overrun is a corrupt-fspf error."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> bytes:
        if n > self.remaining():
            raise _corrupt("it ends in the middle of a record")
        chunk = bytes(self._data[self._pos : self._pos + n])
        self._pos += n
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple:
        return layout.unpack(self.take(layout.size))

    def count(self, min_item_size: int) -> int:
        """A u32 element count, bounded by what the remaining bytes could hold."""
        (n,) = self.unpack(_U32)
        if n * min_item_size > self.remaining():
            raise _corrupt(f"a count of {n} entries exceeds the file size")
        return n

    def string(self) -> str:
        (n,) = self.unpack(_U16)
        return path_text(self.take(n))
