"""The image model every transport reads into and writes from: config, ordered layers."""

from __future__ import annotations

import errno
import functools
import io
import json
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

from sconify.conversion.direct import DirectWriter
from sconify.errors import ImageError
from sconify.image import layers as L

# Returns the stored bytes of a blob, unchecked. An opener may carry ``where`` (the store it
# reads from, named in errors) and ``fix`` (the advice for a damaged blob there).
BlobOpener = Callable[[], BinaryIO]


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact JSON: the byte form of every manifest and config we write."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BoundedReader(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``offset`` of a file, with its own position."""

    def __init__(self, fd: int, offset: int, size: int):
        self._fd = fd
        self._offset = offset
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, min(self._size, base + pos))
        return self._pos

    def readinto(self, buffer) -> int:
        wanted = min(len(buffer), self._size - self._pos)
        if wanted <= 0:
            return 0
        # straight into the buffer: a pread's bytes object (for 1 MiB, fresh pages every time)
        # and its copy cost 4x as much CPU
        n = os.preadv(self._fd, [memoryview(buffer)[:wanted]], self._offset + self._pos)
        self._pos += n
        return n


class FileSlice(BoundedReader):
    """A BoundedReader over a file it opens itself, and closes."""

    def __init__(self, path: str | os.PathLike, offset: int, size: int) -> None:
        super().__init__(os.open(path, os.O_RDONLY), offset, size)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


@dataclass(frozen=True)
class FileRange:
    """Bytes ``[offset, offset+size)`` of a file on disk: where a file-backed blob is stored.

    Writers use it to copy a blob kernel-side (``copy_to``) instead of through Python buffers.
    """

    path: str
    offset: int
    size: int
    # The whole file is a temp blob sconify wrote for this layer alone (LayerWriter): nothing
    # else changes it, so a writer may hard-link it into the output instead of copying.
    private: bool = False

    def open(self) -> BinaryIO:
        return io.BufferedReader(FileSlice(self.path, self.offset, self.size), L.CHUNK_SIZE)  # type: ignore[return-value]

    def copy_to(self, out: int | DirectWriter) -> None:
        """Append the range to the file ``out`` (a descriptor: at its current position), without
        passing the bytes through Python: ``copy_file_range`` (a reflink or an in-kernel copy),
        else ``sendfile``, else a pread/write loop; a DirectWriter reads the range into its own
        buffer. ImageError if the file is shorter than the range."""
        with open(self.path, "rb", buffering=0) as source:
            if isinstance(out, DirectWriter):
                done = out.copy_from(source.fileno(), self.offset, self.size)
            else:
                done = copy_range(source.fileno(), out, self.offset, self.size)
        if done != self.size:
            raise ImageError(
                f"{self.path} ends {self.size - done} bytes short of the blob stored at offset "
                f"{self.offset} ({self.size} bytes); was it changed? re-create or re-pull the image"
            )


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


@functools.cache
def _fallocate():
    """libc's fallocate(2) (Python's os has no punch-hole call), or None where there is none."""
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


def punch_pages(fd: int, offset: int, size: int) -> int:
    """Drop the whole pages within ``size`` bytes at ``offset`` of the temp file ``fd``: they read
    as zeros from then on, and their page cache and disk blocks are freed at once (a punched
    hole), so the next writes on the machine can take those pages instead of fresh ones. Bytes
    outside the range are never changed; the pages it only partly covers stay. The bytes
    punched, 0 where the file system or the C library cannot (then nothing changed)."""
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + size) // mmap.PAGESIZE * mmap.PAGESIZE
    fallocate = _fallocate()
    if end <= start or fallocate is None:
        return 0
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start, end - start) != 0:
        return 0  # EOPNOTSUPP and the like: the bytes simply stay until the file is closed
    return end - start


# copy_file_range/sendfile refuse some pairs of files (another filesystem on older kernels,
# special files, a kernel without the call): those errors fall back to the next way of copying.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}


def copy_range(in_fd: int, out_fd: int, offset: int, size: int) -> int:
    """Append ``size`` bytes at ``offset`` of ``in_fd`` to ``out_fd`` (at its file position)
    without passing them through Python where the kernel can (``copy_file_range``, else
    ``sendfile``), else by a pread/write loop; the bytes copied (fewer only at end of file)."""
    done = _kernel_copy(in_fd, out_fd, offset, size)
    if done < size:
        done += _loop_copy(in_fd, out_fd, offset + done, size - done)
    return done


def _kernel_copy(in_fd: int, out_fd: int, offset: int, size: int) -> int:
    """Copy up to ``size`` bytes from ``in_fd`` at ``offset`` to ``out_fd`` in the kernel; the
    bytes copied (fewer at end of file, or where neither call works on these files)."""
    done = 0
    use_copy_file_range = hasattr(os, "copy_file_range")
    while done < size:
        want = min(size - done, 1 << 30)
        try:
            if use_copy_file_range:
                # offset_dst None: write at, and advance, out_fd's own file position.
                n = os.copy_file_range(in_fd, out_fd, want, offset + done)  # type: ignore[attr-defined]
            else:
                n = os.sendfile(out_fd, in_fd, offset + done, want)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            if use_copy_file_range:
                use_copy_file_range = False  # try sendfile from where we are
                continue
            return done
        if n == 0:
            if use_copy_file_range and done == 0:
                # Some filesystems answer 0 instead of an error; sendfile tells EOF for sure.
                use_copy_file_range = False
                continue
            return done
        done += n
    return done


def _loop_copy(in_fd: int, out_fd: int, offset: int, size: int) -> int:
    done = 0
    while done < size:
        data = os.pread(in_fd, min(size - done, L.CHUNK_SIZE), offset + done)
        if not data:
            break
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view):]
        done += len(data)
    return done


class SliceOpener:
    """A BlobOpener for a FileRange; ``keep`` is held so a temp file outlives the Layer."""

    def __init__(self, path: str | os.PathLike, offset: int, size: int, keep: object = None,
                 private: bool = False) -> None:
        self.range = FileRange(os.fspath(path), offset, size, private)
        self._keep = keep

    def __call__(self) -> BinaryIO:
        return self.range.open()


def slice_opener(path: str | os.PathLike, offset: int, size: int, keep: object = None,
                 private: bool = False) -> BlobOpener:
    """An opener for a window of a file. ``keep`` is held so a temp file outlives the Layer;
    ``private``: see FileRange."""
    return SliceOpener(path, offset, size, keep, private)


@dataclass(frozen=True)
class Layer:
    """One layer blob: where its bytes come from and what they must hash to."""

    digest: str  # sha256 of the stored (possibly compressed) blob
    size: int  # length of the stored blob
    diff_id: str  # sha256 of the uncompressed tar
    compression: str  # "none" | "gzip" | "zstd"
    media_type: str
    opener: BlobOpener = field(repr=False, compare=False)
    source: str = field(default="", compare=False)  # names the blob in error messages
    trusted: bool = field(default=False, compare=False)  # digests computed or verified by us
    limits: L.LayerLimits = field(default_factory=L.LayerLimits, compare=False, repr=False)
    # False: the content does not compress (ciphertext), so an uncompressed layer stays
    # uncompressed in the output unless a compression is asked for.
    compressible: bool = field(default=True, compare=False)

    def verify(self) -> None:
        """Read the whole layer once: check blob size, digest and diff_id (ImageError if wrong)."""
        from sconify.image.layerread import BackgroundTar

        if self.trusted:
            return
        with BackgroundTar(self) as tar:  # blob, inflating and diff_id threads
            tar.finish()

    @property
    def file_range(self) -> FileRange | None:
        """Where the stored blob lies on disk, when it is a byte range of a file (else None)."""
        found = getattr(self.opener, "range", None)
        return found if isinstance(found, FileRange) and found.size == self.size else None

    def copy_blob(self, target: BinaryIO) -> None:
        """Append the stored blob to ``target``.

        An untrusted layer is verified first and hashed again while copied. A trusted one
        (its digests computed or checked by us already) is copied as it is: kernel-side when it
        is a byte range of a file and ``target`` is a file, else through Python buffers; only
        its length is checked.
        """
        if not self.trusted:
            self.verify()
            with self.open_blob() as blob:
                L.copy_stream(blob, target)
            return
        where = self.file_range
        out = target if isinstance(target, DirectWriter) else _file_descriptor(target)
        if where is not None and out is not None:
            target.flush()  # what tarfile or a caller buffered goes before the blob
            where.copy_to(out)
            return
        with self.open_raw() as blob:
            copied = L.copy_stream(blob, target)
        if copied != self.size:
            raise ImageError(
                f"layer blob {self.digest} ({self.source}) has {copied} bytes, expected {self.size}; "
                "was it changed? re-create or re-pull the image"
            )

    def open_raw(self) -> BinaryIO:
        """The stored bytes as they are, unchecked (ImageError naming the blob if it is missing)."""
        try:
            return self.opener()
        except FileNotFoundError:
            raise ImageError(
                f"layer blob {self.digest} ({self.source}) is missing; re-create or re-pull the image"
            ) from None

    @property
    def blob_what(self) -> str:
        """The blob as errors name it: its digest, and the store it comes from when the opener says."""
        where = getattr(self.opener, "where", None)
        return f"layer blob {self.digest}" + (f" from {where}" if where else "")

    @property
    def blob_fix(self) -> str:
        """The advice that ends the error line of a damaged blob."""
        return getattr(self.opener, "fix", None) or L.CORRUPT

    def open_blob(self) -> BinaryIO:
        """The stored bytes; size and digest are checked when the stream reaches its end."""
        reader = L.VerifyingReader(self.open_raw(), self.digest, self.blob_what, size=self.size, fix=self.blob_fix)
        return io.BufferedReader(reader, L.CHUNK_SIZE)  # type: ignore[return-value]

    def open_tar(self) -> BinaryIO:
        """The uncompressed tar; diff_id (and the blob digest) checked at the end, size bounded
        by ``limits`` (a decompression bomb stops with ImageError long before it fills memory)."""
        what = f"layer blob {self.digest}"
        if self.compression == "none" and self.size > self.limits.max_layer_size:
            raise L.too_large(what, self.size, self.limits)
        blob = self.open_blob()
        tar = L.open_decompressed(blob, self.compression, what)
        if tar is blob:
            # Uncompressed: the blob digest is the diff_id, already checked by open_blob.
            if self.digest != self.diff_id:
                raise L.uncompressed_diff_id_mismatch(self.digest, self.diff_id)
            return blob
        tar = L.bound_decompressed(tar, self.size, self.limits, what)
        reader = L.VerifyingReader(
            tar, self.diff_id, f"layer {self.digest} (diff_id)", on_eof=lambda: L.drain(blob)
        )
        return io.BufferedReader(reader, L.CHUNK_SIZE)  # type: ignore[return-value]

    def spooled(self, directory: str | os.PathLike | None = None) -> Layer:
        """This layer read once: its blob copied into a private temp file in ``directory`` while
        its digest and diff_id are checked; a trusted Layer backed by the copy (deleted when the
        last Layer reading it is gone). For blobs that cost a download to read: a writer then
        copies (or links) the local file instead of reading the source a second time."""
        from sconify.image.layerread import BackgroundTar, BlobCopy

        if self.trusted and self.file_range is not None:
            return self
        copy = BlobCopy(self, directory)
        try:
            with BackgroundTar(self, blob_fd=copy.fd) as tar:  # blob, inflating and diff_id threads
                tar.finish()
        except BaseException:
            copy.discard()
            raise
        return copy.layer()

    @classmethod
    def from_tar_file(
        cls, path: str | os.PathLike, compression: str = "zstd", directory: str | os.PathLike | None = None
    ) -> Layer:
        """A layer from an uncompressed tar file, compressed once into a private temp blob in
        ``directory`` (default: the system temp directory); see layerwriter.LayerWriter."""
        from sconify.image.layerwriter import layer_from_tar_stream

        L.check_compression(compression)
        path = Path(path)
        if not path.is_file():
            raise ImageError(f"layer tar {path} does not exist; pass the path of a tar file")
        if compression == "none":
            # The tar file is the blob: hash it where it is, no copy.
            with path.open("rb") as source:
                diff_id, digest, size = L.compress_stream(source, _NullWriter(), "none")
            opener = slice_opener(path, 0, size)
            media_type = L.OCI_LAYER_MEDIA_TYPES[compression]
            return cls(digest, size, diff_id, "none", media_type, opener, str(path), trusted=True)
        with path.open("rb") as source:
            return layer_from_tar_stream(source, compression, directory, str(path))

    def recompressed(self, compression: str, directory: str | os.PathLike | None = None) -> Layer:
        """This layer with another compression (a new temp blob in ``directory``), or itself if
        it already has it."""
        from sconify.image.layerwriter import layer_from_tar_stream

        L.check_compression(compression)
        if compression == self.compression:
            return self
        with self.open_tar() as tar:
            layer = layer_from_tar_stream(tar, compression, directory, self.source)
        return replace(layer, limits=self.limits)


def _file_descriptor(target: BinaryIO) -> int | None:
    """The descriptor of a real file behind ``target`` (None for in-memory streams)."""
    try:
        return target.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


class _NullWriter(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return len(data)


@dataclass(frozen=True)
class Image:
    """An image: the raw config bytes (kept byte for byte) and its layers, bottom first."""

    config_bytes: bytes
    layers: tuple[Layer, ...]
    source: str = field(default="", compare=False)
    # Digest of the manifest this image was read from ("" for a changed image, or where the
    # transport stores none, e.g. docker-archive and the Docker engine).
    manifest_digest: str = field(default="", compare=False)

    @property
    def config(self) -> dict:
        """The parsed OCI image config (a fresh copy; change it with mutate.with_config)."""
        return json.loads(self.config_bytes)

    @property
    def config_digest(self) -> str:
        import hashlib

        return "sha256:" + hashlib.sha256(self.config_bytes).hexdigest()

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(layer.diff_id for layer in self.layers)


def parse_json(data: bytes, what: str) -> Any:
    """JSON from image metadata; ImageError naming ``what`` when it is not valid."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageError(f"{what} is not valid JSON ({exc}); re-create the image") from None


def parse_json_object(data: bytes, what: str) -> dict:
    value = parse_json(data, what)
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object; re-create the image")
    return value


def parse_config(config_bytes: bytes, what: str) -> dict:
    """Parse and sanity-check an image config against nothing but itself."""
    config = parse_json_object(config_bytes, what)
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageError(f"{what} has no rootfs.diff_ids list; re-create the image")
    for diff_id in diff_ids:
        L.check_digest(diff_id, f"{what} diff_id")
    return config


def make_image(config_bytes: bytes, layers: list[Layer] | tuple[Layer, ...], source: str) -> Image:
    """Build an Image, checking that the config's diff_ids match the layers."""
    config = parse_config(config_bytes, f"config of {source}")
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"config of {source} lists {len(diff_ids)} diff_ids but the manifest has "
            f"{len(layers)} layers; the image is corrupt, re-create it"
        )
    bound = []
    for diff_id, layer in zip(diff_ids, layers):
        bound.append(replace(layer, diff_id=diff_id))
    return Image(config_bytes, tuple(bound), source)


@dataclass(frozen=True)
class PushStats:
    """What a push to a registry sent: blobs uploaded (and their bytes, manifest included),
    mounted from another repository of the registry, or already there."""

    uploaded_blobs: int = 0
    uploaded_bytes: int = 0  # layer and config blobs uploaded, plus the manifest
    mounted_blobs: int = 0
    existing_blobs: int = 0
    manifest_bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "uploaded_blobs": self.uploaded_blobs,
            "uploaded_bytes": self.uploaded_bytes,
            "mounted_blobs": self.mounted_blobs,
            "existing_blobs": self.existing_blobs,
            "manifest_bytes": self.manifest_bytes,
        }


@dataclass(frozen=True)
class WriteResult:
    """What a writer produced: digests of the manifest, config and layer blobs."""

    reference: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    manifest_media_type: str
    push: PushStats | None = None  # docker:// outputs only


# Called by an image writer with its WriteResult once everything but the last, atomic step is
# written (the rename of index.json or of the archive, docker load, the manifest PUT with its
# tag): an exception there leaves the destination as it was (see sconify.conversion.pipeline).
BeforeCommit = Callable[[WriteResult], None]
