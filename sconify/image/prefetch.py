"""Copies of the input blobs an output layout will hold, made on a thread while the conversion
runs.

sconify-image puts its two new layers on top of the input layers, unchanged. Writing an OCI
layout then copies every input blob (about 0.4 s of kernel copying and 0.4 s of waiting for
fsync per GB here), a cost that waited until the new layers were done. ``BlobPrefetch`` copies
them into private temp files beside the conversion's other temp files while the data layer and
the code layer are written (the pipeline starts it once the code is embedded); the layout writer
then hard-links these copies like the new layers' own temp blobs (``oci.link_private_blob``).
A copy is a reflink where the file system has them, else it is written past the page cache
(``sconify.conversion.direct.DirectWriter``): nothing reads it before the output holds it, and fresh page cache is
what costs most here (781 MB of copies: 1.5-1.7 s of system time through the page cache when
memory is cold, 0.2 s direct). ``sync`` writes a new
layer's finished temp blob to disk on a thread in the same way, so the fsync of its link later
has nothing left to wait for (1 GB image: write image 0.22 -> 0.05 s).

The copies are made only where a link can take them (the temp directory and the destination on
one filesystem) and for blobs the destination does not hold yet. Any error leaves the writer to
copy as it always did, and to report what is wrong in its own words.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterable
from dataclasses import replace

from sconify.atomic import existing_ancestor, fsync_path
from sconify.conversion.direct import DirectWriter
from sconify.errors import ImageError
from sconify.image.model import Layer, slice_opener

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


class BlobPrefetch:
    """Copies ``layers``' file-backed blobs into ``directory`` on a thread (``with``: stopped and
    waited for on leaving); ``layers()`` waits and hands out the layers backed by the copies."""

    def __init__(self, layers: Iterable[Layer], directory: str, skip: Iterable[str] = ()) -> None:
        skipped = set(skip)
        self._layers = [layer for layer in layers if layer.file_range is not None and layer.digest not in skipped]
        self._directory = directory
        self._copies: dict[str, str] = {}  # digest -> path of a complete, synced copy
        self._cancel = threading.Event()
        self._failed = False
        self._syncs: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, name="sconify-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for layer in self._layers:
                if self._cancel.is_set():
                    return
                if layer.digest not in self._copies:
                    self._copies[layer.digest] = self._copy(layer)
        except Exception:  # noqa: BLE001 - the writer copies instead, and reports the problem itself
            self._failed = True

    def _copy(self, layer: Layer) -> str:
        where = layer.file_range
        assert where is not None
        path = os.path.join(self._directory, "input-" + layer.digest.partition(":")[2])
        with open(where.path, "rb", buffering=0) as source:
            whole_file = where.offset == 0 and where.size == os.fstat(source.fileno()).st_size
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            if whole_file and clone_file(source.fileno(), target):
                os.close(target)
            else:
                # Past the page cache: nothing reads the copy before it is linked into the output.
                with DirectWriter(target) as copy:
                    if copy.copy_from(source.fileno(), where.offset, where.size) != where.size:
                        raise ImageError(f"{where.path} is shorter than the blob of {layer.digest}")
        fsync_path(path)  # the writer's fsync of the link then finds nothing to write
        return path

    def layers(self, layers: Iterable[Layer]) -> tuple[Layer, ...]:
        """``layers``, each input blob copied ahead now backed by its copy (a private blob)."""
        self._thread.join()
        copies = {} if self._failed else self._copies
        return tuple(
            replace(layer, opener=slice_opener(copies[layer.digest], 0, layer.size, private=True))
            if layer.digest in copies else layer
            for layer in layers
        )

    def sync(self, layer: Layer) -> None:
        """Start writing a new layer's finished temp blob to disk on a thread of its own, so
        that the layout writer's fsync of its link finds (almost) nothing left to write."""
        where = layer.file_range
        if where is None or not where.private:
            return
        thread = threading.Thread(target=_fsync_quietly, args=(where.path,), name="sconify-sync", daemon=True)
        thread.start()
        self._syncs.append(thread)

    def close(self) -> None:
        """Stop copying (the copy under way ends first); the copies go with the temp directory."""
        self._cancel.set()
        self._thread.join()
        for thread in self._syncs:
            thread.join()

    def __enter__(self) -> "BlobPrefetch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clone_file(source: int, target: int) -> bool:
    """Make the empty file ``target`` share ``source``'s blocks (a reflink: btrfs, XFS, and the
    like), which copies nothing; False where the file system cannot."""
    try:
        fcntl.ioctl(target, _FICLONE, source)
    except OSError:
        return False
    return True


def _fsync_quietly(path: str) -> None:
    with contextlib.suppress(OSError):  # the writer's own fsync reports any problem
        fsync_path(path)


def same_filesystem(directory: str, destination: str) -> bool:
    """Whether ``directory`` and where ``destination`` will be created share a filesystem."""
    ancestor = existing_ancestor(os.path.abspath(destination))
    with contextlib.suppress(OSError):
        return os.stat(ancestor).st_dev == os.stat(directory).st_dev
    return False
