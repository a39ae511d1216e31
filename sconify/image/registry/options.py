"""How to reach registries (kept apart from the client: importing it loads no HTTP stack)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class BlobTransfer(Protocol):
    """One blob on its way to or from a registry, as the transport reports it."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes of the blob went."""

    def end(self) -> None:
        """The transfer is over: done, failed, or given up for a retry (which starts a new one)."""


# ("push" or "pull", digest, size in bytes) -> the transfer that starts
BlobWatcher = Callable[[str, str, int], BlobTransfer]


class _Unwatched:
    def advance(self, amount: int) -> None:
        pass

    def end(self) -> None:
        pass


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: credentials and TLS. Passed explicitly down to the transport
    (never global). ``on_push`` receives each WriteResult of a push (the CLI shows the bytes
    uploaded); ``on_blob`` is told of each blob upload and layer blob download as it starts,
    and of its bytes as they go (the CLI draws a bar per blob). Blobs the registry already has
    or mounts are not transferred, so not reported."""

    creds: str | None = field(default=None, repr=False)  # USER:PASS for every docker:// reference
    src_creds: str | None = field(default=None, repr=False)  # for the reference read (copy/image)
    dest_creds: str | None = field(default=None, repr=False)  # for the reference written
    authfile: str | None = None
    cert_dir: str | None = None
    tls_verify: bool = True
    on_push: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)
    on_blob: BlobWatcher | None = field(default=None, repr=False, compare=False)

    def creds_for(self, writing: bool) -> str | None:
        return (self.dest_creds if writing else self.src_creds) or self.creds

    def blob_transfer(self, direction: str, digest: str, size: int) -> BlobTransfer:
        """The transfer of ``size`` bytes of ``digest`` (``direction``: "push" or "pull") that
        starts now, reported to ``on_blob`` (nowhere without one)."""
        return self.on_blob(direction, digest, size) if self.on_blob is not None else _Unwatched()
