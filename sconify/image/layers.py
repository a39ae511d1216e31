"""Layer blobs: compression kinds, media types, digest-checking streams and pinned compressors.

Everything here streams: no function holds a whole layer in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import zlib
from typing import BinaryIO, Callable

import zstandard
from dataclasses import dataclass
from isal import igzip, isal_zlib

from sconify.errors import ImageError, UsageError

CHUNK_SIZE = 1 << 20

COMPRESSIONS = ("none", "gzip", "zstd")

# Pinned compressor settings: changing any of these changes every output digest.
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
ZSTD_THREADS = 2  # zstd output with threads >= 1 does not depend on the thread count
# A run of bytes the producer knows does not compress (an embedfs archive: zstd frames already)
# goes into a frame of its own at this level: the same size as level 3 there, a third of the CPU.
ZSTD_FAST_LEVEL = 1
# With gzip that run is a gzip member of its own (RFC 1952 allows several; every reader takes
# them) at level 0, stored blocks: deflate saves ~0.2 % there at ~45 MB/s, this runs at ~1.2 GB/s.
GZIP_FAST_LEVEL = 0

OCI_LAYER_MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_LAYER_MEDIA_TYPES = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
}
_COMPRESSION_BY_MEDIA_TYPE = {
    **{media_type: kind for kind, media_type in OCI_LAYER_MEDIA_TYPES.items()},
    **{media_type: kind for kind, media_type in DOCKER_LAYER_MEDIA_TYPES.items()},
}



@dataclass(frozen=True)
class LayerLimits:
    """Bounds on how far one layer blob may expand when decompressed (decompression bombs).

    A layer tar may hold at most ``max_layer_size`` bytes, and at most ``max_expansion`` times
    its stored size once it is past ``expansion_allowance`` bytes.
    """

    max_layer_size: int = 64 << 30  # uncompressed bytes of one layer tar
    max_expansion: int = 100  # uncompressed / stored bytes; real layers compress 2-20x
    expansion_allowance: int = 256 << 20  # bytes any layer may expand to, whatever its ratio

    def bound(self, stored_size: int) -> int:
        """The most uncompressed bytes a layer stored in ``stored_size`` bytes may hold."""
        return min(self.max_layer_size, max(self.expansion_allowance, self.max_expansion * stored_size))

    @classmethod
    def from_options(cls, max_layer_size: int | None = None, max_expansion: int | None = None) -> "LayerLimits":
        """The default bounds with those given (``--max-layer-size``, ``--max-expansion``) replaced."""
        asked = {"max_layer_size": max_layer_size, "max_expansion": max_expansion}
        for name, value in asked.items():
            if value is not None and value <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be positive")
        return cls(**{name: value for name, value in asked.items() if value is not None})


_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def check_digest(digest: object, what: str) -> str:
    """Return ``digest`` if it is a well-formed ``sha256:<64 hex>``, else raise ImageError."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise ImageError(
            f"{what} has an invalid or unsupported digest {str(digest)[:80]!r}; "
            "only sha256:<64 lowercase hex> digests are supported, re-create the image"
        )
    return digest


def compression_for_media_type(media_type: str, what: str) -> str:
    """Map an OCI or Docker layer media type to "none", "gzip" or "zstd"."""
    try:
        return _COMPRESSION_BY_MEDIA_TYPE[media_type]
    except KeyError:
        raise ImageError(
            f"{what} has unknown layer media type {media_type!r}; "
            "only tar, tar+gzip and tar+zstd layers are supported"
        ) from None


def sniff_compression(head: bytes) -> str:
    """Guess a blob's compression from its first bytes."""
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return "none"


def check_compression(compression: str) -> str:
    if compression not in COMPRESSIONS:
        raise ImageError(
            f"unknown compression {compression!r}; use one of {', '.join(COMPRESSIONS)}"
        )
    return compression


# The errors of reading a layer blob, one wording for every reader (these streams, and
# layerread.BackgroundTar).
# ``fix`` is the advice that ends the line: a blob whose store knows better (a registry: push
# the image again) passes its own.
CORRUPT = "the image is corrupt, re-create or re-pull it"


def longer_than_recorded(what: str, size: int, fix: str = CORRUPT) -> ImageError:
    return ImageError(f"{what} is longer than its recorded size {size}; {fix}")


def truncated(what: str, count: int, size: int, fix: str = CORRUPT) -> ImageError:
    return ImageError(f"{what} is truncated ({count} of {size} bytes); {fix}")


def digest_mismatch(what: str, actual: str, expected: str, fix: str = CORRUPT) -> ImageError:
    return ImageError(f"{what} has digest {actual}, expected {expected}; {fix}")


def not_valid_data(what: str, compression: str, exc: BaseException) -> ImageError:
    return ImageError(f"{what} is not valid {compression} data ({' '.join(str(exc).split())}); {CORRUPT}")


def expansion_refused(what: str, limit: int, stored_size: int) -> ImageError:
    return ImageError(
        f"{what} expands to more than {limit} bytes from {stored_size} stored bytes "
        "(a decompression bomb?); refusing it - if the image is trusted, raise the bound "
        "(LayerLimits / --max-layer-size, --max-expansion; see docs/security.md)"
    )


def too_large(what: str, size: int, limits: LayerLimits) -> ImageError:
    """An uncompressed layer over ``limits.max_layer_size``."""
    return ImageError(
        f"{what} is {size} bytes, more than the {limits.max_layer_size} a layer may hold; "
        "refusing it - if the image is trusted, raise --max-layer-size (see docs/security.md)"
    )


def uncompressed_diff_id_mismatch(digest: str, diff_id: str) -> ImageError:
    return ImageError(
        f"uncompressed layer {digest} does not match its diff_id {diff_id}; "
        "the image config is corrupt, re-create the image"
    )


class VerifyingReader(io.RawIOBase):
    """Read a stream and check its SHA-256 (and size, when known) when the end is reached.

    ``on_eof`` runs after a successful check, e.g. to drain and verify an underlying blob;
    ``fix`` ends the error line (see ``CORRUPT``).
    """

    def __init__(
        self,
        raw: BinaryIO,
        digest: str,
        what: str,
        size: int | None = None,
        on_eof: Callable[[], None] | None = None,
        fix: str = CORRUPT,
    ) -> None:
        super().__init__()
        self._raw = raw
        self._fix = fix
        self._digest = digest
        self._what = what
        self._size = size
        self._on_eof = on_eof
        self._hash = hashlib.sha256()
        self._count = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._done:
            return 0
        view = memoryview(buffer)
        data = self._raw.read(len(view))
        if not data:
            self._finish()
            return 0
        n = len(data)
        view[:n] = data
        self._hash.update(data)
        self._count += n
        if self._size is not None and self._count > self._size:
            raise longer_than_recorded(self._what, self._size, self._fix)
        return n

    def _finish(self) -> None:
        self._done = True
        if self._size is not None and self._count != self._size:
            raise truncated(self._what, self._count, self._size, self._fix)
        actual = "sha256:" + self._hash.hexdigest()
        if actual != self._digest:
            raise digest_mismatch(self._what, actual, self._digest, self._fix)
        if self._on_eof is not None:
            self._on_eof()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _ErrorTranslatingReader(io.RawIOBase):
    """Turn decompressor exceptions into one-line ImageErrors."""

    def __init__(self, raw: BinaryIO, what: str, compression: str, source: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._source = source
        self._what = what
        self._compression = compression

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        try:
            data = self._raw.read(len(view))
        except (OSError, EOFError, zlib.error, isal_zlib.error, zstandard.ZstdError) as exc:
            if isinstance(exc, ImageError):
                raise
            raise not_valid_data(self._what, self._compression, exc) from None
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self._source.close()
        super().close()


class BoundedReader(io.RawIOBase):
    """Raise ImageError once more than ``limit`` bytes come out of a stream."""

    def __init__(self, raw: BinaryIO, limit: int, error: Callable[[], ImageError]) -> None:
        super().__init__()
        self._raw = raw
        self._left = limit
        self._error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        # Ask for one byte more than allowed so the excess is seen without reading far past it.
        data = self._raw.read(min(len(view), self._left + 1))
        n = len(data)
        if n > self._left:
            raise self._error()
        view[:n] = data
        self._left -= n
        return n

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


def bound_decompressed(tar: BinaryIO, stored_size: int, limits: LayerLimits, what: str) -> BinaryIO:
    """``tar`` (a decompressed layer) failing with ImageError past ``limits.bound(stored_size)``."""
    limit = limits.bound(stored_size)

    return io.BufferedReader(
        BoundedReader(tar, limit, lambda: expansion_refused(what, limit, stored_size)), CHUNK_SIZE
    )  # type: ignore[return-value]


def open_decompressed(blob: BinaryIO, compression: str, what: str) -> BinaryIO:
    """Wrap a stored blob stream in a decompressing stream."""
    if compression == "none":
        return blob
    if compression == "gzip":
        # isal (ISA-L) inflates about twice as fast as zlib, to the same bytes.
        inner: BinaryIO = igzip.GzipFile(fileobj=blob, mode="rb")  # type: ignore[assignment]
    elif compression == "zstd":
        inner = zstandard.ZstdDecompressor().stream_reader(
            blob, read_across_frames=True, closefd=True
        )
    else:
        raise ImageError(f"{what}: unknown compression {compression!r}")
    return io.BufferedReader(_ErrorTranslatingReader(inner, what, compression, blob), CHUNK_SIZE)


class HashingWriter(io.RawIOBase):
    """Count and SHA-256 the bytes written through to ``target``."""

    def __init__(self, target: BinaryIO) -> None:
        super().__init__()
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def compress_stream(source: BinaryIO, target: BinaryIO, compression: str) -> tuple[str, str, int]:
    """Compress the tar stream ``source`` into ``target`` with the pinned settings.

    Returns ``(diff_id, digest, size)``: the SHA-256 of the uncompressed input, and the
    SHA-256 and length of the bytes written.
    """
    check_compression(compression)
    diff_hash = hashlib.sha256()
    out = HashingWriter(target)
    if compression == "none":
        sink: BinaryIO = out  # type: ignore[assignment]
    elif compression == "gzip":
        sink = gzip.GzipFile(  # type: ignore[assignment]
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=out, mtime=0
        )
    else:
        cctx = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, threads=ZSTD_THREADS, write_checksum=True, write_content_size=False
        )
        sink = cctx.stream_writer(out, closefd=False)  # type: ignore[assignment]
    while chunk := source.read(CHUNK_SIZE):
        diff_hash.update(chunk)
        sink.write(chunk)
    if sink is not out:
        sink.close()
    return "sha256:" + diff_hash.hexdigest(), out.digest, out.size


def compress_bytes(data: bytes, compression: str) -> bytes:
    """``data`` compressed with the pinned settings: one gzip member or zstd frame (as is for none)."""
    out = io.BytesIO()
    compress_stream(io.BytesIO(data), out, compression)
    return out.getvalue()


def copy_stream(source: BinaryIO, target: BinaryIO) -> int:
    """Copy ``source`` to ``target`` in chunks; return the number of bytes."""
    total = 0
    while chunk := source.read(CHUNK_SIZE):
        target.write(chunk)
        total += len(chunk)
    return total


def copy_exactly(source: BinaryIO, target: BinaryIO, count: int) -> int:
    """Copy ``count`` bytes of ``source`` to ``target`` in chunks; the bytes the source was
    short of (0 when all were copied: the caller words its own error)."""
    while count:
        chunk = source.read(min(count, CHUNK_SIZE))
        if not chunk:
            break
        target.write(chunk)
        count -= len(chunk)
    return count


def drain(stream: BinaryIO) -> None:
    """Read a stream to its end (so digest checks at EOF run)."""
    while stream.read(CHUNK_SIZE):
        pass
