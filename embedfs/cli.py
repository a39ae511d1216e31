"""The ``embedfs`` command: pack, inject, ls, cat, extract, verify, measure.

Errors are one line (``embedfs: error: ...``) with exit code 2 (1 when verification finds a
mismatch, 70 for a bug); tables use rich only on a terminal; ``--json`` is for machines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Callable

from embedfs import __version__
from embedfs.archive import Archive, pack_directory
from embedfs.elf import AtomicOutput, extract_archive, inject, open_embedded
from embedfs.errors import EmbedfsError, InputError, IntegrityError
from embedfs.measure import (DEFAULT_HEAP_SIZE, DEFAULT_SSA_FRAME_SIZE, DEFAULT_STACK_SIZE,
                             DEFAULT_THREADS, measure_elf, parse_size)

EXIT_MISMATCH = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70


def open_any(path: str, keys: str | None = None) -> Archive:
    """An archive file, or the archive embedded in an ELF executable; with ``keys`` (a keys.json
    holding a "code_key") its encrypted members can be read."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}; check the path") from None
    code_key = read_code_key(keys) if keys else None
    return open_embedded(path, code_key) if magic == b"\x7fELF" else Archive.open(path, code_key=code_key)


def read_code_key(keys: str) -> bytes:
    """The "code_key" of a keys file (never echoed: the file holds keys)."""
    try:
        with open(keys, encoding="utf-8") as handle:
            return bytes.fromhex(json.load(handle)["code_key"])
    except OSError as exc:
        raise InputError(f"cannot read --keys {keys}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError):
        raise InputError(f"--keys {keys} has no usable code_key; pass the keys.json of an image converted "
                         "with --encrypted-code") from None


def print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    """A rich table on a terminal, tab-separated lines otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in rows:
            print("\t".join(row))


def cmd_pack(args: argparse.Namespace) -> int:
    with AtomicOutput(args.out, 0o644) as out:
        result = pack_directory(args.dir, out, level=args.level, keep_owner=args.keep_owner)
    if args.json:
        print_json({"root_hash": result.root_hash, "file_count": result.file_count, "size": result.size})
    else:
        print(f"packed {result.file_count} members, {result.size} bytes, root hash {result.root_hash}")
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    result = inject(args.binary, args.archive, args.output, replace=args.replace)
    if args.json:
        print_json(vars(result))
    else:
        print(f"injected {result.archive_size} bytes at offset {result.archive_offset:#x} "
              f"(vaddr {result.archive_vaddr:#x}) into {result.output}, root hash {result.root_hash}")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with open_any(args.source) as archive:
        members = archive.list()
        if args.json:
            print_json({"root_hash": archive.root_hash, "members": [
                {"path": m.path, "kind": m.kind, "mode": m.mode, "uid": m.uid, "gid": m.gid,
                 "size": m.size, "sha256": m.sha256, "linkname": m.linkname, "encrypted": m.encrypted}
                for m in members]})
            return 0
        rows = [[f"{m.mode:04o}", f"{m.uid}:{m.gid}", str(m.size), m.sha256[:16],
                 m.path + (f" -> {m.linkname}" if m.kind == "symlink" else " (encrypted)" if m.encrypted else "")]
                for m in members]
        print_table(f"root hash {archive.root_hash}", ["mode", "owner", "size", "sha256", "path"], rows)
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with open_any(args.source, args.keys) as archive:
        data = archive.read(args.path)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    if args.dir:
        with open_any(args.source, args.keys) as archive:
            count = archive.extract(args.dir)
        print(f"extracted {count} members to {args.dir}")
        return 0
    if not args.output:
        raise InputError("extract needs -o FILE (the archive) or --dir DIR (its files)")
    descriptor = extract_archive(args.source, args.output)
    with Archive.open(args.output) as archive:
        archive.verify()
    print(f"extracted {descriptor.archive_size}-byte archive to {args.output}, root hash {descriptor.root_hash}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_any(args.source, args.keys) as archive:
        result = archive.verify()
    if args.json:
        print_json({"ok": True, "root_hash": result.root_hash, "file_count": result.file_count,
                    "content_bytes": result.content_bytes})
    else:
        print(f"ok: {result.file_count} members, {result.content_bytes} bytes, root hash {result.root_hash}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    measurement = measure_elf(args.binary, heap_size=args.heap, stack_size=args.stack,
                              threads=args.threads, ssa_frame_size=args.ssa_frame_size)
    if args.sgxs:
        measurement.write_sgxs(args.sgxs)
    if args.json:
        print_json(measurement.as_dict())
    else:
        print(measurement.mrenclave)
    return 0


def size_argument(text: str) -> int:
    try:
        return parse_size(text)
    except EmbedfsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedfs", description="Pack files into an ELF executable and measure it.")
    parser.add_argument("--version", action="version", version=f"embedfs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    p = add("pack", cmd_pack, "pack a directory's files and symlinks into an archive")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--level", type=int, default=3, help="zstd level (default 3)")
    p.add_argument("--keep-owner", action="store_true", help="record uid/gid instead of 0:0")
    p.add_argument("--json", action="store_true")

    p = add("inject", cmd_inject, "append an archive to an ELF executable")
    p.add_argument("binary")
    p.add_argument("archive")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--replace", action="store_true", help="replace an archive the binary already carries")
    p.add_argument("--json", action="store_true")

    p = add("ls", cmd_ls, "list the members of an archive or injected binary")
    p.add_argument("source", metavar="BINARY_OR_ARCHIVE")
    p.add_argument("--json", action="store_true")

    p = add("cat", cmd_cat, "write one member's content to stdout (checked against its hash)")
    p.add_argument("source", metavar="BINARY_OR_ARCHIVE")
    p.add_argument("path")
    p.add_argument("--keys", metavar="KEYS_JSON", help="keys.json whose code_key decrypts encrypted members")

    p = add("extract", cmd_extract, "copy the archive out of a binary (-o) or its files into a directory (--dir)")
    p.add_argument("source", metavar="BINARY_OR_ARCHIVE")
    p.add_argument("-o", "--output", help="write the archive bytes here")
    p.add_argument("--dir", help="write the member files below this new directory")
    p.add_argument("--keys", metavar="KEYS_JSON", help="keys.json whose code_key decrypts encrypted members")

    p = add("verify", cmd_verify, "check every member hash and the root hash")
    p.add_argument("source", metavar="BINARY_OR_ARCHIVE")
    p.add_argument("--keys", metavar="KEYS_JSON", help="keys.json whose code_key decrypts encrypted members")
    p.add_argument("--json", action="store_true")

    p = add("measure", cmd_measure, "compute the MRENCLAVE of an executable with its archive")
    p.add_argument("binary")
    p.add_argument("--heap", type=size_argument, default=DEFAULT_HEAP_SIZE, help="heap size (default 64M)")
    p.add_argument("--stack", type=size_argument, default=DEFAULT_STACK_SIZE, help="stack size per thread (default 2M)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"threads (default {DEFAULT_THREADS})")
    p.add_argument("--ssa-frame-size", type=int, default=DEFAULT_SSA_FRAME_SIZE, help="SSA frame size in pages")
    p.add_argument("--sgxs", help="also write the record stream as an .sgxs file")
    p.add_argument("--json", action="store_true")
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except IntegrityError as exc:
        print(f"embedfs: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_MISMATCH
    except EmbedfsError as exc:
        print(f"embedfs: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"embedfs: error: {exc.filename or ''}: {exc.strerror or exc}; check the path and permissions",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print("embedfs: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, traceback only on request
        if os.environ.get("EMBEDFS_DEBUG") or os.environ.get("SCONIFY_DEBUG"):
            traceback.print_exc()
        print(f"embedfs: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(this is a bug; rerun with EMBEDFS_DEBUG=1 and report the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main() -> None:
    sys.exit(run(sys.argv[1:]))
