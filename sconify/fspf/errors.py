"""Errors raised by the fspf: each a one-line message naming the problem and the fix.

Messages never contain keys.
"""

from __future__ import annotations

from sconify.errors import SconifyError, VerificationFailed


def shown_path(path: str) -> str:
    """A path for a message or a listing: its bytes that are not UTF-8 (os.fsdecode's lone
    surrogates) written as \\xHH, so the line can be printed as UTF-8."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class FspfError(SconifyError):
    """The fspf or an argument is wrong: corrupt file, wrong key, wrong tag, bad region."""


class IntegrityError(FspfError, VerificationFailed):
    """A protected file does not match its fspf record (tampered, missing, added, moved)."""

    def __init__(self, path: str, reason: str, chunk: int | None = None) -> None:
        self.path = path
        self.reason = reason
        self.chunk = chunk
        where = shown_path(path) if chunk is None else f"{shown_path(path)} chunk {chunk}"
        super().__init__(
            f"integrity check failed for {where}: {reason} "
            "(the file was changed outside the shield; restore it from the image the fspf was built with)"
        )
