"""The layers a conversion adds on top of the input image, written as deterministic tars.

* the **code layer**: the sconified executable, and a whiteout for every embedded file; it does
  not depend on any key, so it is byte-identical across runs.
* the **data layer**: the encrypted files (replacing their plaintext) and the encrypted fspf; it
  changes with fresh keys.

Entries are sorted by path, owners and modes are kept as recorded, and times are clamped to
SOURCE_DATE_EPOCH (0 when unset), so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

WHITEOUT_PREFIX = ".wh."


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class TarEntry:
    path: str  # relative to the root, no leading '/'
    kind: str  # "file" | "dir" | "whiteout"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    open: Callable[[], BinaryIO] | None = field(default=None, compare=False)


def whiteout_for(path: str) -> TarEntry:
    """The entry that deletes ``path`` from the layers below (OCI image-spec whiteout)."""
    directory, name = posixpath.split(path)
    return TarEntry(path=posixpath.join(directory, WHITEOUT_PREFIX + name), kind="whiteout")


def missing_parents(paths: list[str], exists: Callable[[str], bool], mtime: int) -> list[TarEntry]:
    """Directory entries for parents of ``paths`` that the image does not have yet."""
    parents: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(path)
        while parent and parent not in parents and not exists(parent):
            parents.add(parent)
            parent = posixpath.dirname(parent)
    return [TarEntry(path=p, kind="dir", mode=0o755, mtime=mtime) for p in sorted(parents)]


def write_layer_tar(entries: list[TarEntry], out: BinaryIO) -> int:
    """Write ``entries`` sorted by path as a PAX tar to ``out``; returns the entry count."""
    clamp = source_date_epoch()
    paths = [entry.path for entry in entries]
    if len(set(paths)) != len(paths):
        duplicate = next(p for p in paths if paths.count(p) > 1)
        raise ValueError(f"layer entry {duplicate!r} written twice")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.uid, info.gid = entry.uid, entry.gid
            info.uname = info.gname = ""
            info.mtime = min(entry.mtime, clamp) if clamp else entry.mtime
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = entry.mode
                tar.addfile(info)
            elif entry.kind == "whiteout":
                info.type = tarfile.REGTYPE
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info)
            elif entry.kind == "file":
                info.type = tarfile.REGTYPE
                info.mode = entry.mode
                info.size = entry.size
                assert entry.open is not None, entry.path
                with entry.open() as stream:
                    tar.addfile(info, stream)
            else:
                raise ValueError(f"unknown layer entry kind {entry.kind!r}")
    return len(entries)
