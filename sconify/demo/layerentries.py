"""The entries of the layers the demo and test images are made of, and the tar they are written as.

A ``LayerEntry`` is one tar member (directory, file or symlink; hardlinked files share a
``link_group``). Constructors name what an entry is for: ``directory``, ``regular_file``,
``symlink``, ``hardlinks``, and the OCI markers ``whiteout`` (delete a path of a lower layer) and
``opaque`` (hide a lower layer's directory contents). ``write_layer_tar`` writes entries as a
deterministic tar: sorted by path, parent directories added, mtimes clamped, owner 0:0.

``sconify.demo.debimage`` reads Debian and npm packages into entries, ``sconify.demo.apps`` describes
the demo apps with them, and tests build their own images from them.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import dataclass, replace
from typing import IO, Iterable

from sconify.errors import UsageError


@dataclass(frozen=True)
class LayerEntry:
    """One tar member of a layer we write. ``link_group`` ties hardlinked files together."""

    path: str  # normalised, relative to the root, no leading or trailing '/'
    kind: str  # "dir" | "file" | "symlink"
    mode: int
    data: bytes = b""
    linkname: str = ""  # symlink target, as stored
    mtime: int = 0
    link_group: str = ""  # files with the same non-empty link_group are one inode


def directory(path: str, mode: int = 0o755) -> LayerEntry:
    return LayerEntry(path, "dir", mode)


def regular_file(path: str, data: bytes | str, mode: int = 0o644) -> LayerEntry:
    return LayerEntry(path, "file", mode, data.encode() if isinstance(data, str) else data)


def symlink(path: str, target: str) -> LayerEntry:
    return LayerEntry(path, "symlink", 0o777, linkname=target)


def hardlinks(paths: Iterable[str], data: bytes | str, mode: int = 0o644) -> list[LayerEntry]:
    """Several names for one file; the tar writer stores the data once."""
    paths = list(paths)
    return [replace(regular_file(p, data, mode), link_group=paths[0]) for p in paths]


def whiteout(path: str) -> LayerEntry:
    """The OCI marker that deletes ``path`` of a lower layer."""
    parent, name = posixpath.split(path)
    return regular_file(posixpath.join(parent, f".wh.{name}"), b"", 0o644)


def opaque(directory_path: str) -> LayerEntry:
    """The OCI marker that hides everything lower layers hold in ``directory_path``."""
    return regular_file(posixpath.join(directory_path, ".wh..wh..opq"), b"", 0o644)


def normalise_member_name(name: str) -> str:
    """``./usr/bin/`` -> ``usr/bin``; raises for names that leave the root."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"package member {name!r} leaves the image root; the package is corrupt, delete it from the cache")
    return "/".join(parts)


def with_parent_dirs(entries: Iterable[LayerEntry]) -> list[LayerEntry]:
    """Add a directory entry for every parent that has none (mode 0755)."""
    by_path = {e.path: e for e in entries}
    for path in list(by_path):
        parent = posixpath.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = directory(parent)
            parent = posixpath.dirname(parent)
    return list(by_path.values())


def write_layer_tar(entries: Iterable[LayerEntry], out: IO[bytes], epoch: int) -> int:
    """Write ``entries`` as a deterministic tar; returns the number of members.

    Members are sorted by path; mtimes are clamped to ``epoch``; owner is 0:0 with empty names.
    In each hardlink group the first path in sort order holds the data, the others link to it.
    """
    ordered = sorted(with_parent_dirs(entries), key=lambda e: e.path)
    group_leader: dict[str, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in ordered:
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode & 0o7777
            info.mtime = min(entry.mtime or epoch, epoch)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            payload = None
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.linkname
            elif entry.link_group and entry.link_group in group_leader:
                info.type = tarfile.LNKTYPE
                info.linkname = group_leader[entry.link_group]
            else:
                if entry.link_group:
                    group_leader[entry.link_group] = entry.path
                info.size = len(entry.data)
                payload = io.BytesIO(entry.data)
            tar.addfile(info, payload)
    return len(ordered)
