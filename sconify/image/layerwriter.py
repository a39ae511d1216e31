"""Write a new layer in one pass: tar bytes in; a compressed blob, its digests and a Layer out.

The producer (usually ``tarfile`` in the caller's thread) writes the uncompressed tar into
``LayerWriter.stream``, which hashes it (the diff_id) and hands it through a bounded queue to a
background thread. That thread compresses it with the pinned settings of
``layers.compress_stream``, hashes the compressed bytes (the digest) and appends them to a
private temp blob. The two SHA-256s, the producer's reads and the compressor (zstd on worker
threads of its own) overlap on both cores, and at most ``QUEUE_CHUNKS`` MiB wait in the queue:
a layer is never held whole in memory, nor written to disk uncompressed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import queue
import tempfile
import threading
import weakref
from types import TracebackType
from typing import BinaryIO, Protocol, Self

import zstandard

from sconify.conversion.direct import DirectWriter
from sconify.image import layers as L
from sconify.image.model import Layer, slice_opener

QUEUE_CHUNKS = 8  # chunks of up to L.CHUNK_SIZE waiting for the background thread
_END = None  # queued after the last chunk
_FAST, _NORMAL = object(), object()  # queued where an incompressible run begins and ends


class LayerWriter:
    """Stream a layer tar into a compressed temp blob; on success ``layer`` is a trusted Layer.

    Example (the tar is written straight into the compressor, never to disk uncompressed)::

        with LayerWriter("zstd", directory=work, source="code layer") as writer:
            with tarfile.open(fileobj=writer.stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(info, fileobj)
        layer = writer.layer  # digest, size, diff_id computed here; the blob is a file under work

    ``compression`` is "zstd", "gzip" or "none"; the output is byte for byte what
    ``layers.compress_stream`` gives for the same tar, so layer digests do not depend on the
    writer used, unless the producer marks a run that does not compress (``incompressible``).
    ``directory`` holds the temp blob (default: the system temp directory); the blob is deleted
    when the last Layer that refers to it is garbage-collected, or at once if the ``with`` block
    fails. The blob is file-backed, so image writers copy it kernel-side. ``direct``: the blob is
    bound for disk, not for reading (it will be linked into an OCI layout), so it is written past
    the page cache (``sconify.conversion.direct.DirectWriter``), to the same bytes.
    """

    def __init__(
        self,
        compression: str = "zstd",
        directory: str | os.PathLike | None = None,
        source: str = "new layer",
        direct: bool = False,
        follow: BlobFollower | None = None,
    ) -> None:
        self.compression = L.check_compression(compression)
        self.source = source
        self._directory = directory
        self._direct = direct
        # Told of the blob as it grows (e.g. to upload it while it is written); not with direct,
        # whose bytes reach the file in aligned blocks.
        self._follow = follow if not direct else None
        self._layer: Layer | None = None
        self.stream: BinaryIO = None  # type: ignore[assignment]  # set by __enter__

    @property
    def layer(self) -> Layer:
        """The finished layer (after the ``with`` block ended without an exception)."""
        if self._layer is None:
            raise RuntimeError("LayerWriter.layer is only there once its with block has ended without error")
        return self._layer

    def __enter__(self) -> Self:
        fd, path = tempfile.mkstemp(prefix="sconify-layer-", suffix=".blob", dir=self._directory)
        self._blob = _TempBlob(path)
        # Buffered: it completes partial writes. DirectWriter: bound for disk, past the page cache.
        self._file = DirectWriter(fd) if self._direct else os.fdopen(fd, "wb")
        self._pipe = _CompressingPipe(self._file, self.compression)
        self._diff_hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | object | None] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._failure: Exception | None = None
        self._aborted = False
        self._thread = threading.Thread(target=self._pump, name="sconify-layer-writer", daemon=True)
        if self._follow is not None:
            self._follow.start(path)
        self._thread.start()
        self.stream = io.BufferedWriter(_QueueWriter(self), L.CHUNK_SIZE)  # type: ignore[assignment]
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if kind is None:
                self._finish()
            else:
                self._aborted = True
                self._stop()
        finally:
            if self._follow is not None and self._layer is None:
                self._follow.abort()
            self._file.close()
            # Free the compressor now: zstd holds ~70-100 MB of buffers with two workers.
            self._pipe = None  # type: ignore[assignment]
            if self._layer is None:
                self._blob.remove()

    # --- the producer's side (caller's thread) -------------------------------------------

    @contextlib.contextmanager
    def incompressible(self):
        """Bytes written to ``stream`` inside this block do not compress (e.g. an embedfs archive,
        zstd frames already): with zstd they form a frame of their own at ZSTD_FAST_LEVEL, the
        same size as the pinned level there for a third of the CPU; with gzip a member of its own
        in stored blocks (GZIP_FAST_LEVEL). The frames break at the same tar offsets for the same
        writes, so the blob stays deterministic. none ignores it."""
        self.stream.flush()
        self._queue.put(_FAST)
        yield
        self.stream.flush()
        self._queue.put(_NORMAL)

    def _put(self, chunk: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        # A compressed layer's diff_id is hashed here, in the producer's thread, so that the two
        # SHA-256s (this one and the compressed bytes' one, in the background thread) run on
        # both cores; an uncompressed layer's only hash is taken in the background thread.
        if self.compression != "none":
            self._diff_hash.update(chunk)
        self._queue.put(chunk)

    def _stop(self) -> None:
        """Close the stream (what it buffered goes to the queue), end the queue, wait for the
        thread. After an abort the thread drops what it gets, and errors are not raised again."""
        try:
            self.stream.close()
        except Exception:
            if not self._aborted:
                raise
        finally:
            self._queue.put(_END)
            self._thread.join()

    def _finish(self) -> None:
        self._stop()
        if self._failure is not None:
            raise self._failure
        digest, size = self._pipe.close()
        self._file.close()  # flushes: a full disk fails here, before there is a Layer
        diff_id = "sha256:" + self._diff_hash.hexdigest()
        digest = digest or diff_id
        if self._follow is not None:
            self._follow.done(digest, size)
        media_type = L.OCI_LAYER_MEDIA_TYPES[self.compression]
        opener = slice_opener(self._blob.path, 0, size, keep=self._blob, private=True)
        self._layer = Layer(digest, size, diff_id, self.compression, media_type, opener, self.source,
                            trusted=True)

    # --- the background thread -----------------------------------------------------------

    def _pump(self) -> None:
        while (chunk := self._queue.get()) is not _END:
            # After a failure or an abort keep taking chunks, so the producer never blocks.
            if self._failure is not None or self._aborted:
                continue
            try:
                if chunk is _FAST or chunk is _NORMAL:
                    self._pipe.new_frame(fast=chunk is _FAST)
                    continue
                if self.compression == "none":
                    self._diff_hash.update(chunk)
                self._pipe.write(chunk)
                if self._follow is not None:
                    self._file.flush()  # readable by the follower from here
                    self._follow.grew(self._pipe.size)
            except Exception as exc:  # noqa: BLE001 - reported to the producer on its next write
                self._failure = exc


class BlobFollower(Protocol):
    """Told of a layer's temp blob as it is written: ``start(path)`` when the file exists,
    ``grew(size)`` as its first ``size`` bytes become readable, then ``done(digest, size)`` once it
    is complete, or ``abort()`` if the layer fails."""

    def start(self, path: str) -> None: ...

    def grew(self, size: int) -> None: ...

    def done(self, digest: str, size: int) -> None: ...

    def abort(self) -> None: ...


class _QueueWriter(io.RawIOBase):
    """The raw end of ``LayerWriter.stream``: hands each chunk to the background thread."""

    def __init__(self, owner: LayerWriter) -> None:
        super().__init__()
        self._owner = owner

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        # A copy: BufferedWriter passes a view of its buffer, which it reuses at once.
        chunk = bytes(data)
        if chunk:
            self._owner._put(chunk)
        return len(chunk)


class _CompressingPipe:
    """Pinned compressor -> SHA-256 of its output -> file; ``close`` gives (digest, size)."""

    def __init__(self, target: BinaryIO, compression: str) -> None:
        self._out = L.HashingWriter(target)
        self._sink: BinaryIO
        if compression == "none":
            # The blob is the tar: its digest is the diff_id (hashed by LayerWriter._pump).
            self._out = _CountingWriter(target)  # type: ignore[assignment]
            self._sink = self._out  # type: ignore[assignment]
        elif compression == "gzip":
            self._sink = self._gzip_writer(L.GZIP_LEVEL)  # type: ignore[assignment]
        else:
            # Multi-threaded zstd: with threads >= 1 the frame depends neither on the thread
            # count nor on how the input is cut into writes (checked with 1, 2, 3 and 8 threads
            # and 16 KiB to 7 MiB writes, zstandard 0.25); threads=0 gives other bytes. Level,
            # thread count, checksum and no content size are the pins of layers.py.
            self._sink = self._zstd_writer(L.ZSTD_LEVEL)  # type: ignore[assignment]
        self._compression = compression

    def _zstd_writer(self, level: int):
        compressor = zstandard.ZstdCompressor(
            level=level, threads=L.ZSTD_THREADS, write_checksum=True, write_content_size=False
        )
        return compressor.stream_writer(self._out, closefd=False)

    def _gzip_writer(self, level: int):
        # Single-threaded deflate, exactly as compress_stream: header mtime 0, no file name.
        return gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=self._out, mtime=0)

    def write(self, chunk: bytes) -> None:
        self._sink.write(chunk)

    def new_frame(self, fast: bool) -> None:
        """End the zstd frame or gzip member and go on in a new one, at the fast level or the
        pinned one (none: nothing to do)."""
        if self._compression == "zstd":
            self._sink.flush(zstandard.FLUSH_FRAME)
            self._sink = self._zstd_writer(L.ZSTD_FAST_LEVEL if fast else L.ZSTD_LEVEL)
        elif self._compression == "gzip":
            self._sink.close()  # the member's trailer; the target stays open
            self._sink = self._gzip_writer(L.GZIP_FAST_LEVEL if fast else L.GZIP_LEVEL)

    @property
    def size(self) -> int:
        """Bytes written to the target so far."""
        return self._out.size

    def close(self) -> tuple[str | None, int]:
        """End the compressed stream; (digest, size) of what was written (digest None when
        uncompressed: the diff_id is the digest)."""
        if self._sink is not self._out:
            self._sink.close()
        return getattr(self._out, "digest", None), self._out.size


class _CountingWriter:
    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.size = 0

    def write(self, data: bytes) -> int:
        self._target.write(data)
        self.size += len(data)
        return len(data)


class _TempBlob:
    """A private temp file, deleted when the last Layer that reads it is gone."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._finalizer = weakref.finalize(self, _unlink_quietly, path)

    def remove(self) -> None:
        self._finalizer()


def _unlink_quietly(path: str) -> None:
    # The directory may be gone already (a work dir removed before the Layer was dropped).
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def layer_from_blob(pieces: list[bytes], diff_id: str, compression: str, directory: str | os.PathLike | None,
                    source: str, direct: bool = False) -> Layer:
    """A trusted layer whose blob is ``pieces`` one after the other (each a whole gzip member or
    zstd frame, or plain tar for none) and whose tar hashes to ``diff_id``, which the caller took."""
    fd, path = tempfile.mkstemp(prefix="sconify-layer-", suffix=".blob", dir=directory)
    blob = _TempBlob(path)
    digest = hashlib.sha256()
    try:
        with (DirectWriter(fd) if direct else os.fdopen(fd, "wb")) as out:
            for piece in pieces:
                digest.update(piece)
                out.write(piece)
    except BaseException:
        blob.remove()
        raise
    size = sum(len(piece) for piece in pieces)
    opener = slice_opener(path, 0, size, keep=blob, private=True)
    return Layer("sha256:" + digest.hexdigest(), size, diff_id, compression, L.OCI_LAYER_MEDIA_TYPES[compression],
                 opener, source, trusted=True)


def layer_from_tar_stream(source: BinaryIO, compression: str, directory: str | os.PathLike | None,
                          what: str) -> Layer:
    """A layer from an uncompressed tar stream (read to its end), through a LayerWriter."""
    with LayerWriter(compression, directory=directory, source=what) as writer:
        L.copy_stream(source, writer.stream)
    return writer.layer

