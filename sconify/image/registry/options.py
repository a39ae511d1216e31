"""How to reach registries (kept apart from the client: importing it loads no HTTP stack)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: credentials and TLS. Passed explicitly down to the transport
    (never global). ``on_push`` receives each WriteResult of a push (the CLI shows the bytes
    uploaded)."""

    creds: str | None = field(default=None, repr=False)  # USER:PASS for every docker:// reference
    src_creds: str | None = field(default=None, repr=False)  # for the reference read (copy/image)
    dest_creds: str | None = field(default=None, repr=False)  # for the reference written
    authfile: str | None = None
    cert_dir: str | None = None
    tls_verify: bool = True
    on_push: Callable[[Any], None] | None = field(default=None, repr=False, compare=False)

    def creds_for(self, writing: bool) -> str | None:
        return (self.dest_creds if writing else self.src_creds) or self.creds
