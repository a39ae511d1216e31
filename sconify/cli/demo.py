"""``sconify demo``: write a bundled demo image (Python or Node.js, built from Debian packages).

The first run downloads the pinned packages and builds the image into the cache
(``$SCONIFY_CACHE`` or ``~/.cache/sconify``); later runs copy it from there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from sconify.demo import debimage
from sconify.cli.registry import add_registry_arguments, registry_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="write a demo image built from pinned Debian packages (python, node, tool-base)",
        description="Write a demo image built from pinned Debian (bookworm) and npm packages.",
    )
    parser.add_argument("name", choices=debimage.image_names(), help="which demo image")
    parser.add_argument("--to", required=True, metavar="REF",
                        help="where to write it, e.g. oci:./demo:python, oci-archive:demo.tar, docker-daemon:demo/python:latest")
    parser.add_argument("--compression", choices=("gzip", "zstd", "none"), default=None,
                        help="layer compression of the output (default: gzip, or what the transport needs)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    add_registry_arguments(parser)
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from sconify.image.transports import read_image, write_image

    started = time.monotonic()
    if not debimage.is_built(args.name):
        print(f"building the {args.name} demo image from Debian packages into {debimage.cache_dir()} "
              "(first run only, about 10-20 s)...", file=sys.stderr)
    layout = debimage.build_image(args.name)
    image = read_image(f"oci:{layout}:{debimage.IMAGE_TAG}")
    result = write_image(image, args.to, compression=args.compression, registry=registry_options(args))
    summary = {
        "image": args.name,
        "reference": result.reference,
        "manifest_digest": result.manifest_digest,
        "config_digest": result.config_digest,
        "layers": list(result.layer_digests),
        "debian_packages": len(debimage.get_spec(args.name).packages),
        "cache": str(layout),
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        print(f"wrote demo {args.name} image to {result.reference}")
        print(f"  manifest {result.manifest_digest}")
        layers = len(result.layer_digests)
        print(f"  {layers} layer{'s' if layers != 1 else ''}, {summary['debian_packages']} Debian packages, {summary['seconds']} s")
    return 0
