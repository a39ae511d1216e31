"""Write outputs so that a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from sconify.direct import DirectWriter


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: int = 0o644, direct: bool = False) -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path``; on success fsync and rename it into place.

    On any exception the temporary file is removed and ``path`` is left as it was. ``direct``:
    the file is written once and not read back soon (an image's blobs, an image archive), so
    it goes past the page cache (a ``DirectWriter``: ``write`` only, same bytes).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        if direct:
            with DirectWriter(fd) as writer:
                yield writer  # type: ignore[misc]
            fsync_path(tmp)
        else:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
    with atomic_file(path, mode) as handle:
        handle.write(data)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file that is already written (e.g. one about to be linked) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing_ancestor(path: str) -> str:
    """``path`` if it exists, else its nearest existing parent (where it would be created)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
