"""Write outputs so that a failure never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from sconify.conversion.direct import DirectWriter
from sconify.errors import EnvironmentProblem

# What a place to write can lack, and what the user does about it (exit 3, never a traceback).
FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
UNWRITABLE = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
              errno.EROFS: "read-only file system"}


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o644,
                       staged: "StagedFiles | None" = None) -> None:
    """Write ``path`` whole or not at all; with ``staged``, only stage it there (see StagedFiles)."""
    if staged is not None:
        staged.add(path, data, mode)
        return
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


@contextlib.contextmanager
def writing(place: str, unwritable: bool = True) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT) or an unwritable place (EACCES, EPERM, EROFS; not with
    ``unwritable`` False) met while writing ``place`` (e.g. "--to oci:out") into one
    EnvironmentProblem line naming it and the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            raise EnvironmentProblem(
                f"cannot write {place}: {FULL[exc.errno]}; free space there or choose another place "
                "(nothing of the output was left behind)"
            ) from None
        if unwritable and exc.errno in UNWRITABLE:
            raise EnvironmentProblem(
                f"cannot write {place}: {UNWRITABLE[exc.errno]}; make it writable or choose another place "
                "(nothing of the output was left behind)"
            ) from None
        raise


class StagedFiles:
    """Files written whole under temporary names beside their targets (each fsynced), renamed
    into place together by ``commit``; as a context, whatever was not committed is removed.

    Used to write an output set (manifest, session, keys) only once its image is written too:
    stage the files, write the image, then commit (see sconify.conversion.pipeline)."""

    def __init__(self) -> None:
        self._staged: list[tuple[str, Path]] = []  # (temporary, target)

    def add(self, path: str | os.PathLike, data: bytes, mode: int = 0o644) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        self._staged.append((tmp, target))
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
        for directory in {target.parent for _, target in self._staged}:
            with contextlib.suppress(OSError):  # the renames are done; a directory fsync is best effort
                fsync_path(directory)
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._staged = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
