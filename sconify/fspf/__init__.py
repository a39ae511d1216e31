"""File-system protection file (fspf): regions, per-file keys, chunked AES-GCM, a shield reader."""

from sconify.fspf.build import AddResult, Fspf
from sconify.fspf.errors import FspfError, IntegrityError
from sconify.fspf.format import DEFAULT_CHUNK_SIZE, FileRecord, Region
from sconify.fspf.shield import Shield, VerifyReport

__all__ = [
    "AddResult",
    "DEFAULT_CHUNK_SIZE",
    "FileRecord",
    "Fspf",
    "FspfError",
    "IntegrityError",
    "Region",
    "Shield",
    "VerifyReport",
]
