"""One temporary file that holds many files' contents, read back by offset.

Image layers are streams in layer order, while the embedfs and the new layers are written in
path order; the spool bridges the two without creating a file per entry (file creation costs
0.3-0.8 ms each on these machines) and without holding contents in memory.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

from sconify.image.layers import copy_exactly
from sconify.image.model import BoundedReader, copy_range


@dataclass(frozen=True)
class Extent:
    """``size`` bytes at ``offset`` of the spool, or of the open file ``fd`` when given (e.g. a
    layer tar RootFS cached: no copy is needed)."""

    offset: int
    size: int
    fd: int | None = None


class Spool:
    """Append-only store of byte strings in one unlinked temporary file."""

    def __init__(self, directory: str | None = None):
        self._file = tempfile.TemporaryFile(prefix="sconify-spool-", dir=directory)
        self._end = 0

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    @property
    def size(self) -> int:
        return self._end

    def append_stream(self, stream: BinaryIO, size: int | None = None) -> Extent:
        """Copy ``stream`` (all of it, or exactly ``size`` bytes) to the end of the spool."""
        self._file.seek(self._end)
        start = self._end
        if size is None:
            shutil.copyfileobj(stream, self._file, 1 << 20)
        else:
            if missing := copy_exactly(stream, self._file, size):
                raise EOFError(f"stream ended {missing} bytes early")
        self._file.flush()
        self._end = self._file.tell()
        return Extent(start, self._end - start)

    def append_bytes(self, data: bytes) -> Extent:
        return self.append_stream(io.BytesIO(data), len(data))

    def fileno(self, extent: Extent) -> int:
        """The open file that holds ``extent`` (the spool's, or the one the extent names)."""
        return self._file.fileno() if extent.fd is None else extent.fd

    def open(self, extent: Extent) -> BinaryIO:
        """A reader of its own (pread-based: readers may be used from several threads)."""
        return io.BufferedReader(BoundedReader(self.fileno(extent), extent.offset, extent.size))

    def read(self, extent: Extent) -> bytes:
        return os.pread(self.fileno(extent), extent.size, extent.offset)

    def copy_to_file(self, extent: Extent, path: str, mode: int = 0o600) -> None:
        with open(path, "wb") as out:
            os.fchmod(out.fileno(), mode)
            done = copy_range(self.fileno(extent), out.fileno(), extent.offset, extent.size)
            if done != extent.size:
                raise EOFError(f"spool extent ended {extent.size - done} bytes early")
