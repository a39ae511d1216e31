"""The registry options of every command that takes an image (``docker://`` references)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sconify.image.registry.options import BlobWatcher, RegistryOptions


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


parse_bool.__name__ = "true/false"  # argparse names the type in its errors


def add_registry_arguments(parser: argparse.ArgumentParser, two_sided: bool = False) -> None:
    group = parser.add_argument_group("registries (docker://HOST[:PORT]/REPO[:TAG|@DIGEST] references)")
    group.add_argument("--creds", metavar="USER:PASS",
                       help="log in with these credentials (default: --authfile, REGISTRY_AUTH_FILE, "
                       "containers auth.json, ~/.docker/config.json and its credential helpers)")
    if two_sided:
        group.add_argument("--src-creds", metavar="USER:PASS", help="credentials for the input registry only")
        group.add_argument("--dest-creds", metavar="USER:PASS", help="credentials for the output registry only")
    group.add_argument("--authfile", metavar="FILE",
                       help="read credentials from this containers-auth.json / docker config.json only")
    group.add_argument("--cert-dir", metavar="DIR",
                       help="trust the CA certificates DIR/*.crt (and use DIR/*.cert + *.key as client "
                       "certificate) besides the system CAs")
    group.add_argument("--tls-verify", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                       help="--tls-verify=false: do not check the registry's TLS certificate, and allow plain "
                       "HTTP (plain HTTP is otherwise used only for localhost / 127.0.0.1)")


def registry_options(args: argparse.Namespace, on_push: Callable[[Any], None] | None = None,
                     on_blob: BlobWatcher | None = None) -> RegistryOptions:
    return RegistryOptions(
        creds=args.creds,
        src_creds=getattr(args, "src_creds", None),
        dest_creds=getattr(args, "dest_creds", None),
        authfile=args.authfile,
        cert_dir=args.cert_dir,
        tls_verify=args.tls_verify,
        on_push=on_push,
        on_blob=on_blob,
    )


def bind(reference: str, options: RegistryOptions) -> str:
    """``reference`` carrying ``options`` (an ImageRef) for code that passes references as text."""
    from sconify.image.transports import ImageRef

    return ImageRef(reference, options)


def push_summary(push) -> str:
    from sconify.cli.output import human_size

    return (f"{push.uploaded_blobs} blobs uploaded ({human_size(push.uploaded_bytes)} with the manifest), "
            f"{push.mounted_blobs} mounted, {push.existing_blobs} already there")
