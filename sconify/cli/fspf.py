"""``sconify fspf``: build and inspect file-system protection files, as ``scone fspf`` does.

create | addr | addf | encrypt | show | verify. Every command that changes the fspf prints its
new AES-GCM tag in the words and positions SCONE uses, so scripts that cut the tag or key out
of SCONE's output work unchanged.
"""

from __future__ import annotations

import argparse
import json
import os

from sconify.errors import VerificationFailed
from sconify.fspf import Fspf, FspfError, Shield
from sconify.fspf import format as fmt
from sconify.fspf.build import read_fspf_bytes
from sconify.fspf.errors import shown_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fspf", help="create, fill, encrypt and inspect file-system protection files")
    commands = parser.add_subparsers(dest="fspf_command", metavar="FSPF_COMMAND", required=True)

    create = commands.add_parser("create", help="create an empty plaintext fspf")
    create.add_argument("fspf", metavar="FSPF")
    create.add_argument("--force", action="store_true", help="replace an existing file")
    create.set_defaults(func=run_create)

    addr = commands.add_parser("addr", help="add a region")
    addr.add_argument("fspf", metavar="FSPF")
    addr.add_argument("region", metavar="PATH")
    kind = addr.add_mutually_exclusive_group(required=True)
    kind.add_argument("--kernel", metavar="PATH", help="files are stored at PATH in the file system")
    kind.add_argument("--ephemeral", action="store_true", help="files live in memory and start empty")
    protection = addr.add_mutually_exclusive_group(required=True)
    for name in fmt.PROTECTIONS:
        protection.add_argument(f"--{name}", dest="protection", action="store_const", const=name)
    addr.add_argument("--key-length", type=int, default=32, choices=fmt.KEY_LENGTHS, help="per-file key bytes (default 32)")
    addr.add_argument("--chunk-size", type=int, default=None, help=f"bytes per AES-GCM chunk (default {fmt.DEFAULT_CHUNK_SIZE})")
    addr.set_defaults(func=run_addr)

    addf = commands.add_parser("addf", help="record the files of a directory in a region")
    addf.add_argument("fspf", metavar="FSPF")
    addf.add_argument("region", metavar="REGION")
    addf.add_argument("src_dir", metavar="SRC_DIR")
    addf.add_argument("out_dir", metavar="OUT_DIR", nargs="?", help="where encrypted files are written (encrypted regions)")
    addf.set_defaults(func=run_addf)

    encrypt = commands.add_parser("encrypt", help="encrypt the fspf with a fresh random key; prints tag and key")
    encrypt.add_argument("fspf", metavar="FSPF")
    encrypt.set_defaults(func=run_encrypt)

    show = commands.add_parser("show", help="print regions and files (or only the tag)")
    show.add_argument("--tag", action="store_true", help="print only the AES-GCM tag (no key needed)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument("fspf", metavar="FSPF")
    show.add_argument("key", metavar="KEY", nargs="?", help="hex key of an encrypted fspf")
    show.set_defaults(func=run_show)

    verify = commands.add_parser("verify", help="check every file of DIR against the fspf")
    verify.add_argument("fspf", metavar="FSPF")
    verify.add_argument("key", metavar="KEY", help="hex key printed by encrypt ('-' for a plaintext fspf)")
    verify.add_argument("tag", metavar="TAG", help="hex tag the fspf must carry")
    verify.add_argument("root", metavar="DIR", help="directory holding the stored files at their paths")
    verify.set_defaults(func=run_verify)


def run_create(args: argparse.Namespace) -> int:
    if os.path.exists(args.fspf) and not args.force:
        raise FspfError(f"{args.fspf} already exists; remove it or pass --force")
    tag = Fspf.create().save(args.fspf)
    print(f"Created empty file system protection file in {args.fspf}. AES-GCM tag: {tag.hex()}")
    return 0


def run_addr(args: argparse.Namespace) -> int:
    fspf = _load_plain(args.fspf)
    fspf.add_region(
        args.region,
        kind="ephemeral" if args.ephemeral else "kernel",
        protection=args.protection,
        kernel_path=args.kernel,
        key_length=args.key_length,
        chunk_size=args.chunk_size,
    )
    tag = fspf.save(args.fspf)
    print(f"Added region {args.region} to file system protection file {args.fspf} new AES-GCM tag: {tag.hex()}")
    return 0


def run_addf(args: argparse.Namespace) -> int:
    fspf = _load_plain(args.fspf)
    result = fspf.add_directory(args.region, args.src_dir, args.out_dir)
    tag = fspf.save(args.fspf)
    print(f"Added files to file system protection file {args.fspf} new AES-GCM tag: {tag.hex()}")
    print(f"({result.files} files, {result.bytes} bytes; {len(result.skipped)} skipped: other region or not a regular file)")
    return 0


def run_encrypt(args: argparse.Namespace) -> int:
    fspf = _load_plain(args.fspf)
    key, tag = fspf.encrypt_to(args.fspf)
    print(f"Encrypted file system protection file {args.fspf} AES-GCM tag: {tag.hex()} key: {key.hex()}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    data = read_fspf_bytes(args.fspf)
    tag = fmt.tag_of(data)
    if args.tag:
        print(tag.hex())
        return 0
    encrypted = fmt.envelope_of(data) == fmt.ENVELOPE_ENCRYPTED
    fspf = Fspf.load(data, _hex_key(args.key))
    if args.json:
        print(json.dumps(_describe(fspf, tag, encrypted), sort_keys=True, indent=2))
        return 0
    state = "encrypted" if encrypted else "plaintext"
    print(f"file system protection file {args.fspf}: format version {fmt.VERSION}, {state}, AES-GCM tag: {tag.hex()}")
    for region in fspf.regions:
        storage = f"kernel {shown_path(region.kernel_path)}" if region.kind == "kernel" else "ephemeral"
        print(f"region {shown_path(region.path)}: {storage}, {region.protection}, key length {region.key_length}, "
              f"chunk size {region.chunk_size}")
    for record in fspf.files:
        print(f"file {shown_path(record.path)}: {record.size} bytes, {record.protection}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    key = None if args.key == "-" else args.key
    report = Shield(args.fspf, key, args.tag, root=args.root).verify_all()
    for problem in report.problems:
        print(problem)
    if not report.ok:
        raise VerificationFailed(
            f"{len(report.problems)} integrity problem(s) among {report.files} files in {args.root}; "
            "restore the files from the image the fspf was built with"
        )
    print(f"verified {report.files} files ({report.bytes} bytes) against fspf tag {args.tag.lower()}: all intact")
    return 0


def _load_plain(path: str) -> Fspf:
    data = read_fspf_bytes(path)
    if fmt.envelope_of(data) == fmt.ENVELOPE_ENCRYPTED:
        raise FspfError(f"{path} is already encrypted; change an fspf before `fspf encrypt`, or recreate it")
    return Fspf.load(data)


def _hex_key(key: str | None) -> bytes | None:
    if key is None:
        return None
    try:
        return bytes.fromhex(key)
    except ValueError:
        raise FspfError("KEY is not hexadecimal; pass the key printed by `sconify fspf encrypt`") from None


def _describe(fspf: Fspf, tag: bytes, encrypted: bool) -> dict:
    """The fspf as JSON-ready data, without any key."""
    return {
        "version": fmt.VERSION,
        "encrypted": encrypted,
        "tag": tag.hex(),
        "regions": [
            {
                "path": r.path,
                "kind": r.kind,
                "kernel_path": r.kernel_path,
                "protection": r.protection,
                "key_length": r.key_length,
                "chunk_size": r.chunk_size,
            }
            for r in fspf.regions
        ],
        "files": [{"path": f.path, "size": f.size, "protection": f.protection} for f in fspf.files],
    }
