"""Auditor commands: ``sconify verify``, ``measure``, ``diff`` and ``sign``.

Each command imports what it needs when it runs (``sconify verify --json`` never loads rich,
the keys' crypto or the signature code unless asked): start-up is part of every audit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sconify.cli.registry import add_registry_arguments, bind, registry_options
from sconify.errors import EXIT_MISMATCH, UsageError

if TYPE_CHECKING:
    from sconify.verify import VerifyReport


def size(text: str) -> int:
    """A size argument such as 64M (argparse names the type ``size`` in its errors)."""
    from sconify.cli.output import parse_size

    return parse_size(text)


def register(subparsers) -> None:
    verify = subparsers.add_parser(
        "verify",
        help="recompute every figure of a manifest from the image alone",
        description="Exit 0 when every check passes, 1 when a figure differs, 2 when the image or a file cannot be read.",
    )
    verify.add_argument(
        "reference",
        metavar="REF",
        help="the sconified image (oci:, oci-archive:, docker-archive:, docker-daemon:, docker://)",
    )
    verify.add_argument(
        "--manifest", metavar="FILE",
        help="manifest.json written by sconify-image (default for docker:// images: the manifest attached "
        "to the image in the registry)"
    )
    verify.add_argument(
        "--keys", metavar="FILE", help="keys.json: also check every protected file through the fspf shield"
    )
    verify.add_argument(
        "--sgxs", metavar="FILE", help="write the SGX record stream (its SHA-256 is the MRENCLAVE)"
    )
    verify.add_argument(
        "--session", metavar="FILE",
        help="session.yaml: also check that its command and environment are what the runtime enforces"
    )
    verify.add_argument(
        "--signer", metavar="PUB.pem",
        help="require a valid signature of the manifest by this ECDSA P-256 or Ed25519 public key: the DSSE "
        "in-toto attestation attached in the registry (docker:// without --manifest), else the --signature file"
    )
    verify.add_argument("--signature", metavar="FILE",
                        help="the signature file (default: MANIFEST.intoto.jsonl, else a legacy MANIFEST.sig)")
    verify.add_argument("--platform", help="platform to pick from a multi-platform image")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    add_registry_arguments(verify)
    verify.set_defaults(func=run_verify)

    measure = subparsers.add_parser(
        "measure",
        help="print the MRENCLAVE of an image's executable (what SCONE_HASH=1 prints)",
        description="Measure the executable (with its embedfs) as an enclave; parameters default to the image's labels.",
    )
    measure.add_argument("reference", metavar="REF")
    measure.add_argument(
        "--binary",
        metavar="PATH",
        help="the executable inside the image (default: label, then ENTRYPOINT/CMD)",
    )
    measure.add_argument("--heap", dest="heap_size", type=size, metavar="SIZE")
    measure.add_argument("--stack", dest="stack_size", type=size, metavar="SIZE")
    measure.add_argument("--threads", type=int, metavar="N")
    measure.add_argument("--sgxs", metavar="FILE", help="write the SGX record stream")
    measure.add_argument("--platform")
    measure.add_argument("--json", action="store_true")
    add_registry_arguments(measure)
    measure.set_defaults(func=run_measure)

    diff = subparsers.add_parser(
        "diff",
        help="what differs between two sconified images: embedded files, measurement, protected files",
        description="Exit 0 when the images agree, 1 when they differ.",
    )
    diff.add_argument("reference_a", metavar="REF_A")
    diff.add_argument("reference_b", metavar="REF_B")
    diff.add_argument("--platform")
    diff.add_argument("--json", action="store_true")
    add_registry_arguments(diff)
    diff.set_defaults(func=run_diff)

    sign = subparsers.add_parser(
        "sign",
        help="sign a manifest: a DSSE envelope around an in-toto statement (ECDSA P-256 or Ed25519 key)",
        description="Create a key with `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "
        "key.pem` (or `-algorithm ed25519`) and give auditors `openssl pkey -in key.pem -pubout -out signer.pem`.",
    )
    sign.add_argument("manifest", metavar="MANIFEST")
    sign.add_argument(
        "--key", required=True, metavar="KEY.pem", help="ECDSA P-256 or Ed25519 private key (PEM, unencrypted)"
    )
    sign.add_argument("-o", "--output", metavar="FILE", help="signature file (default: MANIFEST.intoto.jsonl)")
    sign.set_defaults(func=run_sign)


def read_session(path: str) -> dict:
    """session.yaml as a dict, or a one-line UsageError."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read --session {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise UsageError(f"--session {path} is not YAML; pass the session.yaml written by sconify-image") from None
    if not isinstance(doc, dict):
        raise UsageError(f"--session {path} is not a session; pass the session.yaml written by sconify-image")
    return doc


def run_verify(args: argparse.Namespace) -> int:
    from sconify.outputs.manifest import Manifest
    from sconify.verify import VerifyReport, verify_image

    registry = registry_options(args)
    reference = args.reference
    signed = VerifyReport(args.reference)
    if args.manifest is not None:
        manifest = Manifest.read(args.manifest)
    else:
        reference, manifest = attached_manifest(args, registry, signed)
    keys = None
    if args.keys and manifest.generic:
        raise UsageError(f"{args.reference} is a generic image: it has no keys file (each deployment makes its own "
                         "keys, docs/deploy.md); drop --keys")
    if args.keys:
        from sconify.outputs.keys import KeysFile

        keys = KeysFile.read(args.keys)
    if args.signer and args.manifest is not None:  # cheap, and a bad signer file should fail before the image is read
        from sconify.verify import check_signature

        check_signature(signed, args.manifest, args.signature, args.signer)
    session = read_session(args.session) if args.session else None
    report = verify_image(bind(reference, registry), manifest, keys=keys, sgxs_out=args.sgxs, platform=args.platform,
                          session=session)
    report.reference = args.reference
    report.checks[:0] = signed.checks
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print_report(report)
    return 0 if report.ok else EXIT_MISMATCH


def attached_manifest(args: argparse.Namespace, registry, report: VerifyReport):
    """(the image pinned by digest, the manifest attached to it) for a docker:// image without
    --manifest; with --signer, the attached attestation's checks go into ``report``."""
    from sconify.verify.attached import read_attached

    if args.signature:
        raise UsageError("--signature names a signature file of --manifest; without --manifest the signature is "
                         "the attestation attached in the registry")
    attached = read_attached(args.reference, registry, report, platform=args.platform, signer_path=args.signer)
    return attached.pinned, attached.manifest


def print_report(report: VerifyReport) -> None:
    from rich.table import Table

    from sconify.cli.output import console

    table = Table(title=f"sconify verify {report.reference}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for check in report.checks:
        table.add_row(
            check.name, "[green]ok[/green]" if check.ok else "[bold red]FAIL[/bold red]", check.detail
        )
    console().print(table)
    failed = sum(not c.ok for c in report.checks)
    console().print(f"{len(report.checks) - failed} checks passed, {failed} failed")


def run_measure(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from embedfs import measure as M
    from sconify.image.rootfs import RootFS
    from sconify.image.transports import read_image
    from sconify.conversion.codepaths import find_service
    from sconify.conversion.select import find_binary
    from sconify.verify import LABEL_PREFIX, copy_out, image_labels

    image = read_image(args.reference, platform=args.platform, registry=registry_options(args))
    labels = image_labels(image)
    fs = RootFS.from_image(image)
    if args.binary:
        path = "/" + find_binary(fs, image.config, args.binary)
    elif labels.get(LABEL_PREFIX + "executable"):
        path = labels[LABEL_PREFIX + "executable"]
    else:
        path = find_service(fs, image.config).executable  # ENTRYPOINT/CMD followed as a conversion does

    def parameter(value, label: str, default: int) -> int:
        if value is not None:
            return value
        text = labels.get(LABEL_PREFIX + label, str(default))
        if not text.isdigit():
            raise UsageError(
                f"the image's {LABEL_PREFIX}{label} label {text[:40]!r} is not a number; "
                f"pass --{label.split('-')[0]} explicitly"
            )
        return int(text)

    params = {
        "heap_size": parameter(args.heap_size, "heap-size", M.DEFAULT_HEAP_SIZE),
        "stack_size": parameter(args.stack_size, "stack-size", M.DEFAULT_STACK_SIZE),
        "threads": parameter(args.threads, "threads", M.DEFAULT_THREADS),
    }
    with tempfile.TemporaryDirectory(prefix="sconify-measure-") as work:
        exe = Path(work, "executable")
        copy_out(fs, fs.resolve(path), exe)
        measurement = M.measure_elf(exe, **params)
        if args.sgxs:
            measurement.write_sgxs(args.sgxs)
    if args.json:
        json.dump(
            {
                "executable": path,
                "mrenclave": measurement.mrenclave,
                "enclave_size": measurement.enclave_size,
                **params,
            },
            sys.stdout,
            indent=2,
            sort_keys=True,
        )
        sys.stdout.write("\n")
    else:
        print(
            f"MRENCLAVE {measurement.mrenclave} {path} heap={params['heap_size']} stack={params['stack_size']} threads={params['threads']}"
        )
    return 0


def run_diff(args: argparse.Namespace) -> int:
    from sconify.verify import diff_images

    registry = registry_options(args)
    lines = diff_images(bind(args.reference_a, registry), bind(args.reference_b, registry), platform=args.platform)
    if args.json:
        json.dump(
            {"same": not lines, "differences": [{"what": w, "detail": d} for w, d in lines]},
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    elif not lines:
        print("the images agree: same executable, measurement, embedded files and protected paths")
    else:
        from rich.table import Table

        from sconify.cli.output import console

        table = Table(title=f"{args.reference_a} -> {args.reference_b}")
        table.add_column("what")
        table.add_column("detail", overflow="fold")
        for what, detail in lines:
            table.add_row(what, detail)
        console().print(table)
    return 0 if not lines else EXIT_MISMATCH


def run_sign(args: argparse.Namespace) -> int:
    from sconify.verify import sign_manifest

    output = args.output or f"{args.manifest}.intoto.jsonl"
    algorithm, keyid = sign_manifest(args.manifest, args.key, output)
    print(f"signed {args.manifest} -> {output} (DSSE in-toto statement, {algorithm} key {keyid[:16]}...)")
    return 0
