"""The layers a conversion adds on top of the input image, written as deterministic tars.

* the **code layer**: the sconified executable, and a whiteout for every embedded file; it does
  not depend on any key, so it is byte-identical across runs.
* the **data layer**: the encrypted files (replacing their plaintext) and the encrypted fspf; it
  changes with fresh keys.

Entries come in a fixed order (sorted by path, or the order the caller fixes), owners and modes
are kept as recorded, and times are clamped to SOURCE_DATE_EPOCH (0 when unset), so the same
inputs give the same bytes. ``LayerTar`` writes straight to a stream (the layer's compressor):
contents are streamed from a reader or produced by a writer callback (ciphertext), never staged.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from sconify.image.archive import TarWriter

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
    # A file's content: writes exactly ``size`` bytes to the stream it is given.
    write: Callable[[BinaryIO], object] | None = field(default=None, compare=False)


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


class LayerTar:
    """A PAX tar written entry by entry to ``out`` (``close`` writes the end-of-archive blocks)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = TarWriter(out)
        self._clamp = source_date_epoch()
        self.paths: set[str] = set()  # entries written so far
        self._whiteout_template: bytes | None = None

    def add(self, entry: TarEntry) -> None:
        if entry.path in self.paths:
            raise ValueError(f"layer entry {entry.path!r} written twice")
        self.paths.add(entry.path)
        if entry.kind == "whiteout" and (header := self._whiteout_header(entry)) is not None:
            self._out.write(header)
            return
        info = tarfile.TarInfo(entry.path)
        info.uid, info.gid = entry.uid, entry.gid
        info.uname = info.gname = ""
        info.mtime = min(entry.mtime, self._clamp) if self._clamp else entry.mtime
        info.mode = entry.mode
        if entry.kind == "dir":
            info.type = tarfile.DIRTYPE
        elif entry.kind == "whiteout":
            info.type = tarfile.REGTYPE
            info.mode = 0o644
            info.mtime = 0
        elif entry.kind == "file":
            info.type = tarfile.REGTYPE
            info.size = entry.size
        else:
            raise ValueError(f"unknown layer entry kind {entry.kind!r}")
        self._out.add_header(info)
        if entry.kind != "file":
            return
        start = self._out.offset
        assert entry.write is not None, entry.path
        entry.write(self._out)
        if self._out.offset - start != entry.size:
            raise ValueError(f"layer entry {entry.path!r}: {self._out.offset - start} bytes written, {entry.size} declared")
        self._out.pad()

    def _whiteout_header(self, entry: TarEntry) -> bytes | None:
        """The header of a whiteout with a short ASCII name, built from tarfile's header of the
        same whiteout under another name: the code layer holds one whiteout per embedded file
        (35,000 for the 1 GB benchmark image), and ``TarInfo.tobuf`` costs ~45 us each, this
        ~3 us. None for names tarfile would split or extend (it writes those itself); a test
        checks the bytes equal tobuf's."""
        name = entry.path.encode("utf-8", "surrogateescape")
        if len(name) >= tarfile.LENGTH_NAME or not name.isascii() or entry.uid or entry.gid:
            return None
        if self._whiteout_template is None:
            info = tarfile.TarInfo("x")
            info.uname = info.gname = ""
            info.type, info.mode, info.mtime = tarfile.REGTYPE, 0o644, 0
            self._whiteout_template = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        header = bytearray(self._whiteout_template)
        header[:tarfile.LENGTH_NAME] = name.ljust(tarfile.LENGTH_NAME, b"\0")
        header[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
        header[148:155] = b"%06o\0" % sum(header)  # tarfile's form: 6 octal digits, NUL, space
        return bytes(header)

    def close(self) -> None:
        """Two zero blocks end the archive; pad to a whole record, as tar does."""
        self._out.finish()


def write_layer_tar(entries: list[TarEntry], out: BinaryIO) -> int:
    """Write ``entries`` sorted by path as a PAX tar to ``out``; returns the entry count."""
    tar = LayerTar(out)
    for entry in sorted(entries, key=lambda e: e.path):
        tar.add(entry)
    tar.close()
    return len(entries)
