"""``sconify image`` (also installed as ``sconify-image``): convert an image."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from sconify.cli.output import PhaseProgress, console, human_size, parse_size
from sconify.cli.registry import add_registry_arguments, bind, push_summary, registry_options
from sconify.errors import UsageError

if TYPE_CHECKING:
    from sconify.conversion.pipeline import ConvertResult


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "image",
        help="convert an image into a confidential image (same as sconify-image)",
        description=(
            "Embed the service's code into its executable, measure it (MRENCLAVE), protect data "
            "directories (each with an encrypted fspf of its own, a volume) and write a new image, a "
            "manifest, a CAS session and a keys file (mode 0600, never inside the image)."
        ),
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io_group = parser.add_argument_group("images")
    io_group.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="REF",
        help="input image: oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:TAG], docker-daemon:NAME:TAG, "
        "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]",
    )
    io_group.add_argument(
        "--to", dest="destination", required=True, metavar="REF",
        help="output image reference (same syntax; a docker:// push uploads only the blobs the registry lacks)"
    )
    io_group.add_argument(
        "--platform", help="platform to pick from a multi-platform input (default linux/amd64)"
    )
    io_group.add_argument(
        "--compression",
        choices=["gzip", "zstd", "none"],
        help="compression of the output layers (default: zstd for OCI, gzip for docker-archive)",
    )
    add_registry_arguments(parser, two_sided=True)
    attach = parser.add_argument_group("attachments (docker:// outputs, docs/image-transports.md)")
    attach.add_argument(
        "--attach", action=argparse.BooleanOptionalAction, default=None,
        help="after the push, attach manifest.json to the image as an OCI artifact (its subject: the "
        "image), through the referrers API or the sha256-<hex> tag fallback (default: on for docker:// "
        "outputs; --no-attach skips it)",
    )
    attach.add_argument(
        "--sign", metavar="KEY.pem",
        help="also attach a DSSE envelope around an in-toto statement of the measurement, signed with this "
        "ECDSA P-256 or Ed25519 private key (PEM, unencrypted)",
    )
    bounds = parser.add_argument_group("bounds for untrusted input (docs/security.md)")
    bounds.add_argument(
        "--max-layer-size", type=parse_size, metavar="SIZE", help="largest uncompressed layer (default 64G)"
    )
    bounds.add_argument(
        "--max-expansion",
        type=int,
        metavar="N",
        help="largest uncompressed/stored ratio of a layer past 256M (default 100)",
    )
    bounds.add_argument(
        "--max-entries", type=int, metavar="N", help="most tar entries over all layers (default 300000)"
    )
    code = parser.add_argument_group("code (embedded into the executable and measured)")
    code.add_argument(
        "--recipe", help="python, node or a recipe FILE.toml (default: chosen from the executable)"
    )
    code.add_argument(
        "--binary",
        metavar="PATH",
        help="the service's executable inside the image (default: from ENTRYPOINT/CMD)",
    )
    code.add_argument(
        "--fs-dir",
        dest="fs_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="also embed every file under DIR (repeatable)",
    )
    code.add_argument(
        "--fs-file",
        dest="fs_files",
        action="append",
        default=[],
        metavar="FILE",
        help="also embed FILE (repeatable)",
    )
    code.add_argument(
        "--encrypted-code",
        dest="encrypted_code",
        action="append",
        default=[],
        metavar="DIR",
        help="embed every file under DIR encrypted (code that must stay secret: measured, and absent in "
        "plaintext from the image; the key is in the keys file) (repeatable)",
    )
    code.add_argument(
        "--keep-embedded", action="store_true",
        help="keep embedded files in the image's filesystem too (never --encrypted-code files)"
    )
    code.add_argument(
        "--strict",
        action="store_true",
        help="fail instead of warning when code may escape the measurement (a code-looking directory on no "
        "search path, a module the interpreter will look for that the image lacks)",
    )
    code.add_argument(
        "--runtime",
        choices=("sim", "none"),
        default="sim",
        help="sim (default): add the simulation-mode runtime as the ENTRYPOINT, so the image runs with "
        "docker run (docs/runtime.md); none: no runtime layer, the ENTRYPOINT stays (a hardware runtime)",
    )
    code.add_argument(
        "--allow-args",
        action="store_true",
        help="let the host append arguments to the recorded command (docker run IMAGE CMD... ARGS; SCONE's @@1); "
        "by default any other command runs without keys",
    )
    code.add_argument(
        "--allow-env",
        action="append",
        default=[],
        metavar="NAME",
        help="let the host set or override NAME although it chooses code (PYTHONPATH, NODE_OPTIONS...; "
        "repeatable; docs/runtime.md lists them)",
    )
    data = parser.add_argument_group("data (fspf regions)")
    data.add_argument(
        "--dir",
        dest="encrypted_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="encrypt the files under DIR (repeatable)",
    )
    data.add_argument(
        "--authenticated",
        dest="authenticated_dirs",
        action="append",
        default=[],
        metavar="DIR",
        help="authenticate the files under DIR (repeatable)",
    )
    data.add_argument(
        "--authenticate-root",
        action="store_true",
        help="authenticate every other file of the image ('/' region)",
    )
    data.add_argument(
        "--generic",
        action="store_true",
        help="a generic image: no keys, no keys.json; the volumes are declared and each deployment brings its "
        "own keys and secrets (sconify deploy, docs/deploy.md)",
    )
    data.add_argument(
        "--public-initial-content",
        action="store_true",
        help="--generic: the input's files under a volume are its public initial content (not supported yet)",
    )
    measure = parser.add_argument_group("measurement")
    measure.add_argument(
        "--heap",
        dest="heap_size",
        type=parse_size,
        metavar="SIZE",
        help="enclave heap size, e.g. 64M (changes MRENCLAVE)",
    )
    measure.add_argument(
        "--stack", dest="stack_size", type=parse_size, metavar="SIZE", help="stack size per thread, e.g. 256K"
    )
    measure.add_argument("--threads", type=int, metavar="N", help="number of enclave threads (TCS)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--name", dest="session_name", help="CAS session name (default: sconify-<output name>)")
    out.add_argument(
        "--out-dir", metavar="DIR", help="write manifest.json, session.yaml and keys.json into DIR (created)"
    )
    out.add_argument(
        "--manifest-out", metavar="FILE", help="measurement manifest (default OUT_DIR/manifest.json)"
    )
    out.add_argument("--session-out", metavar="FILE", help="CAS session (default OUT_DIR/session.yaml)")
    out.add_argument(
        "--keys-out",
        metavar="FILE",
        help="each volume's fspf key and tag, mode 0600 (default OUT_DIR/keys.json)",
    )
    out.add_argument(
        "--inline-keys",
        action="store_true",
        help="write the volumes' fspf keys into the session instead of secret references",
    )
    out.add_argument(
        "--deterministic-keys-from",
        metavar="FILE",
        help="derive every key from this secret seed file (reproducible CI builds)",
    )
    out.add_argument("--force", action="store_true", help="overwrite an existing keys file")
    out.add_argument(
        "--dry-run", action="store_true", help="show what would be embedded and protected; write nothing"
    )
    out.add_argument(
        "--json", action="store_true", help="print a JSON summary on stdout instead of the table"
    )


def output_paths(args: argparse.Namespace) -> None:
    """Fill --manifest-out/--session-out/--keys-out from --out-dir (default: the current dir)."""
    directory = Path(args.out_dir or ".")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--out-dir {args.out_dir} exists and is not a directory; choose another path")
    for name, default in (
        ("manifest_out", "manifest.json"),
        ("session_out", "session.yaml"),
        ("keys_out", "keys.json"),
    ):
        if getattr(args, name) is None:
            setattr(args, name, str(directory / default))


def run(args: argparse.Namespace) -> int:
    from sconify.conversion.elfworker import take_prestarted

    # lief's helper process was started at the entry point (main.run), so its import overlaps
    # ours (sconify.conversion.elfworker); without one, sconify_image starts its own when it needs it.
    with contextlib.ExitStack() as cleanup:
        elf = take_prestarted()
        if elf is not None:
            cleanup.enter_context(elf)
        from sconify.conversion.pipeline import ConvertOptions, sconify_image  # heavy: imported when it runs

        output_paths(args)
        attaching = check_attach_options(args)
        pushes: list = []  # the WriteResult of a docker:// output, with what it uploaded
        progress = PhaseProgress(enabled=not args.json)  # phases, and under them the blobs transferred
        registry = registry_options(args, on_push=pushes.append, on_blob=progress.blob_bars())
        args.source, args.destination = bind(args.source, registry), bind(args.destination, registry)
        # Every ConvertOptions field is an option of this parser: one renamed on either side fails
        # here, loudly, instead of being dropped.
        options = ConvertOptions(**{name: getattr(args, name) for name in ConvertOptions.__dataclass_fields__})
        with progress:
            result = sconify_image(options, progress, elf=elf)
    for warning in result.plan.warnings:
        print(f"sconify: warning: {warning}", file=sys.stderr)
    push = pushes[-1].push if pushes else None
    attached: dict = {}
    if attaching and pushes and result.manifest is not None and not options.dry_run:
        attached = attach_measurement(args, registry, pushes[-1])
    if args.json:
        doc = summary(result)
        if push is not None:
            doc["push"] = push.to_dict()
        if attached:
            doc["attached"] = attached
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(result, dry_run=options.dry_run, push=push, attached=attached)
    return 0


def check_attach_options(args: argparse.Namespace) -> bool:
    """Whether to attach the measurement to the pushed image (its key loaded now: a bad key
    fails before the conversion)."""
    from sconify.image.reference import parse_reference

    to_registry = parse_reference(args.destination).transport == "docker"
    if args.attach is None:
        args.attach = to_registry
    if args.attach and not to_registry:
        raise UsageError(f"--attach needs a docker:// output, not {args.destination}; drop --attach")
    if args.sign and not args.attach:
        raise UsageError("--sign attaches a signed attestation to the pushed image: it needs a docker:// "
                         "output and no --no-attach (sign a manifest file with `sconify sign`)")
    if args.sign:
        from sconify.outputs.attest import load_signing_key

        args.signing_key = load_signing_key(args.sign)
    return bool(args.attach)


def attach_measurement(args: argparse.Namespace, registry, written) -> dict:
    """Attach manifest.json (and, with --sign, its DSSE/in-toto attestation) to the pushed image."""
    from sconify.outputs import attest
    from sconify.image.reference import parse_reference
    from sconify.image.registry import referrers

    reference = parse_reference(args.destination)
    data = Path(args.manifest_out).read_bytes()
    subject = (reference.registry, reference.repository, written.manifest_digest, written.push.manifest_bytes)
    done = {"manifest": referrers.attach(*subject, referrers.SCONIFY_MANIFEST_TYPE, data, registry,
                                         written.manifest_media_type)}
    if args.sign:
        name = f"{reference.registry}/{reference.repository}"
        payload = attest.statement(name, written.manifest_digest, json.loads(data))
        envelope = attest.envelope_bytes(attest.sign_envelope(payload, args.signing_key))
        done["attestation"] = referrers.attach(*subject, referrers.DSSE_TYPE, envelope, registry,
                                               written.manifest_media_type)
    return {what: {"digest": item.artifact_digest, "via": item.via} for what, item in done.items()}


def summary(result: ConvertResult) -> dict:
    plan = result.plan
    doc = {
        "executable": "/" + plan.executable.path,
        "recipe": plan.executable.recipe.name,
        "app_dir": plan.app_dir,
        "code_files": len(plan.code_files),
        "encrypted_code_files": len(plan.encrypted_code),
        "protected": [{"path": prefix.path, "reason": prefix.reason} for prefix in plan.protected],
        "why": plan.service.reasons if plan.service else [],
        "code_roots": [{"path": r.path, "kind": r.kind, "reason": r.reason} for r in plan.roots.roots] if plan.roots else [],
        "warnings": plan.warnings,
        "regions": plan.regions,
        "data_files": {region: len(files) for region, files in plan.data_files.items()},
        "rewritten_layers": [rewrite.summary() for rewrite in plan.rewrites],
        "input_bytes": result.input_bytes,
        "phases": {name: round(seconds, 3) for name, seconds in result.phases.items()},
    }
    if result.manifest is not None:
        m = result.manifest
        doc.update(
            {
                "mrenclave": m.measurement.mrenclave,
                "measurement": {
                    "heap_size": m.measurement.heap_size,
                    "stack_size": m.measurement.stack_size,
                    "threads": m.measurement.threads,
                },
                "output": {
                    "reference": m.output.reference,
                    "manifest_digest": m.output.manifest_digest,
                    "config_digest": m.output.config_digest,
                },
                "embedfs": {
                    "root_hash": m.embedfs.root_hash,
                    "file_count": m.embedfs.file_count,
                    "archive_size": m.embedfs.archive_size,
                },
                "volumes": [
                    {"path": v.path, "fspf_path": v.fspf_path, "protection": v.protection, "tag": v.tag}
                    for v in m.volumes
                ],
                "encrypted_files": result.encrypted_files,
                "authenticated_files": result.authenticated_files,
                "removed_files": result.removed_files,
                "missing_libraries": result.missing_libraries,
                "written": result.written,
            }
        )
    return doc


def code_protection(plan) -> str:
    """Integrity-only code (stdlib, site-packages) may stay in shared base layers; encrypted
    code (--encrypted-code) may not."""
    integrity = len(plan.code_files) - len(plan.encrypted_code)
    line = f"{integrity} files integrity-protected (measured; their originals may stay in shared base layers)"
    if plan.encrypted_code:
        line += (f"\n{len(plan.encrypted_code)} files encrypted (measured; no plaintext in any layer): "
                 + ", ".join(plan.encrypted_code_roots))
    return line


def print_table(result: ConvertResult, *, dry_run: bool, push=None, attached: dict | None = None) -> None:
    from rich.table import Table

    plan = result.plan
    table = Table(
        title="sconify-image (dry run: nothing written)" if dry_run else "sconify-image", show_header=False
    )
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row(
        "executable",
        f"/{plan.executable.path} (recipe {plan.executable.recipe.name}, from {plan.executable.requested})",
    )
    if plan.service is not None:
        table.add_row("why", "\n".join(plan.service.reasons))
    if plan.roots is not None:
        table.add_row("code roots", "\n".join(f"{r.path} ({r.kind})" for r in plan.roots.roots) or "-")
    table.add_row("application dir", plan.app_dir or "-")
    table.add_row("code protection", code_protection(plan))
    table.add_row("input rootfs", human_size(result.input_bytes))
    for region in plan.regions:
        count = len(plan.data_files.get(region["path"], []))
        table.add_row(
            f"region {region['path']}",
            f"{region['kind']}, {region['protection']}" + (f", {count} files" if count else ""),
        )
    table.add_row("input layers rewritten", "\n".join(r.describe() for r in plan.rewrites) or "none")
    if dry_run or result.manifest is None:
        table.add_row("code files", str(len(plan.code_files)))
    else:
        m = result.manifest
        table.add_row(
            "embedded",
            f"{m.embedfs.file_count} files, {human_size(result.embedded_bytes)} -> "
            f"{human_size(m.embedfs.archive_size)} embedfs (root {m.embedfs.root_hash[:16]}...)",
        )
        table.add_row("removed from rootfs", str(result.removed_files))
        if result.missing_libraries:
            table.add_row("not in the image", "needed but missing: " + ", ".join(result.missing_libraries))
        table.add_row(
            "encrypted / authenticated", f"{result.encrypted_files} / {result.authenticated_files} files"
        )
        table.add_row(
            "executable size",
            f"{human_size(m.executable.original_size)} -> {human_size(m.executable.sconified_size)}",
        )
        table.add_row(
            "measurement",
            f"heap {human_size(m.measurement.heap_size)}, stack {human_size(m.measurement.stack_size)}, "
            f"{m.measurement.threads} threads, enclave {human_size(m.measurement.enclave_size)}",
        )
        table.add_row("MRENCLAVE", m.measurement.mrenclave)
        for volume in m.volumes:
            table.add_row(f"volume {volume.path}", f"fspf {volume.fspf_path} tag {volume.tag}" if not m.generic
                          else "declared: each deployment's launcher makes its fspf with its own key")
        table.add_row(
            "output image", f"{m.output.reference} {m.output.manifest_digest or m.output.config_digest}"
        )
        if push is not None:
            table.add_row("pushed", push_summary(push))
        for what, item in (attached or {}).items():
            table.add_row(f"attached {what}", f"{item['digest']} ({item['via']})")
        for what, path in result.written.items():
            if what != "image":
                table.add_row(f"{what} file", path)
    for name, seconds in result.phases.items():
        table.add_row(f"time: {name}", f"{seconds:.2f} s")
    table.add_row("time: total", f"{sum(result.phases.values()):.2f} s")
    console().print(table)
