"""Bounded tar header parsing: tarfile's reader, refusing what would cost unbounded memory.

tarfile reads a PAX extended header or a GNU long name of any size whole into memory, and
expands sparse maps of any length, before the caller sees the member. ``BoundedTarInfo``
(passed as ``tarfile.open(..., tarinfo=BoundedTarInfo)``) refuses those headers first. tarfile
offers no public hook for this, so it overrides the per-type processing methods.
"""

from __future__ import annotations

import tarfile

MAX_EXTENDED_HEADER = 1 << 20  # bytes of one PAX header or GNU long name/link
EXTENDED_HEADER_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE,
                         tarfile.SOLARIS_XHDTYPE)


class HostileHeader(Exception):
    """A tar header refused while tarfile parses it; callers re-raise it as ImageError naming
    the layer or archive."""


class BoundedTarInfo(tarfile.TarInfo):
    """tarfile's TarInfo, refusing negative sizes, sparse members and extended headers over
    ``MAX_EXTENDED_HEADER`` before their data is read."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # type: ignore[override]
        if self.size < 0:
            raise HostileHeader(f"member {self.name[:200]!r} has a negative size; the tar is hostile or corrupt, refusing it")
        if self.type in EXTENDED_HEADER_TYPES and self.size > MAX_EXTENDED_HEADER:
            raise HostileHeader(
                f"a tar extended header is {self.size} bytes, more than {MAX_EXTENDED_HEADER}; "
                "the tar is hostile or corrupt, refusing it"
            )
        return super()._proc_member(tarfile_)

    def _proc_sparse(self, tarfile_: tarfile.TarFile):  # type: ignore[override]
        raise HostileHeader(f"sparse file {self.name[:200]!r} is not supported; re-create it without sparse files")

    def _refuse_pax_sparse(self, next_: tarfile.TarInfo, *args) -> None:
        raise HostileHeader(f"sparse file {next_.name[:200]!r} is not supported; re-create it without sparse files")

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_pax_sparse
