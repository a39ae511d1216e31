"""``sconify copy SRC DST``: copy an image between transports (skopeo reference syntax)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from sconify.cli.output import PhaseProgress, parse_size
from sconify.cli.registry import add_registry_arguments, registry_options
from sconify.image import layers as L
from sconify.image.reference import DEFAULT_PLATFORM
from sconify.image.transports import read_image, write_image


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "copy",
        help="copy an image between oci:, oci-archive:, docker-archive:, docker-daemon: and docker://",
        description="Copy an image; prints the output manifest digest. Layers are copied byte for "
        "byte unless the output needs another compression.",
    )
    parser.add_argument("src", metavar="SRC", help="e.g. oci:DIR:TAG, docker-daemon:NAME:TAG, docker://HOST/REPO:TAG")
    parser.add_argument("dst", metavar="DST", help="e.g. oci-archive:FILE:TAG, docker-archive:FILE:NAME:TAG, "
                        "docker://HOST/REPO:TAG (only the blobs the registry lacks are uploaded)")
    parser.add_argument("--compression", choices=L.COMPRESSIONS, default=None,
                        help="layer compression of the output (default: keep what the output accepts; "
                        "new compression zstd for OCI, gzip for docker-archive)")
    parser.add_argument("--platform", default=None,
                        help=f"OS/ARCH[/VARIANT] to pick from a multi-platform index (default {DEFAULT_PLATFORM})")
    parser.add_argument("--max-layer-size", type=parse_size, metavar="SIZE",
                        help="largest uncompressed layer (default 64G; docs/security.md)")
    parser.add_argument("--max-expansion", type=int, metavar="N",
                        help="largest uncompressed/stored ratio of a layer past 256M (default 100)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (with what a push uploaded)")
    add_registry_arguments(parser, two_sided=True)
    parser.set_defaults(func=run_copy)


def run_copy(args: argparse.Namespace) -> int:
    display = PhaseProgress(enabled=not args.json)  # a line for the copy, one per blob transferred
    registry = registry_options(args, on_blob=display.blob_bars())
    with display:
        what, began = f"copying {args.src} to {args.dst}", time.perf_counter()
        display.start(what)
        image = read_image(args.src, platform=args.platform,
                           limits=L.LayerLimits.from_options(args.max_layer_size, args.max_expansion),
                           registry=registry)
        result = write_image(image, args.dst, compression=args.compression, registry=registry)
        display.finish(what, time.perf_counter() - began)
    if args.json:
        doc = {
            "reference": result.reference,
            "manifest_digest": result.manifest_digest,
            "manifest_media_type": result.manifest_media_type,
            "config_digest": result.config_digest,
            "layer_digests": list(result.layer_digests),
        }
        if result.push is not None:
            doc["push"] = result.push.to_dict()
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(result.manifest_digest)
    return 0
