"""The ``sconify`` command: one entry point, a subcommand per capability.

Each subcommand lives in its own module under ``sconify.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a function taking the
parsed arguments and returning an exit code. Errors derived from ``SconifyError`` or
``EmbedfsError`` become one line on stderr and their exit code; anything else is a bug and
prints one line too (a traceback only with ``SCONIFY_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from embedfs.errors import EmbedfsError
from sconify import __version__
from sconify.errors import EXIT_BAD_INPUT, EXIT_INTERNAL, SconifyError

# The module that registers each subcommand, in the order they appear in --help: a run of one
# subcommand imports only its module (importing all of them costs ~0.1 s of every run; --help
# and typos still see them all).
COMMAND_MODULES = {
    "image": "sconify.cli.image",
    "verify": "sconify.cli.verify",
    "measure": "sconify.cli.verify",
    "diff": "sconify.cli.verify",
    "sign": "sconify.cli.verify",
    "fspf": "sconify.cli.fspf",
    "copy": "sconify.cli.copy",
    "demo": "sconify.cli.demo",
    "deploy": "sconify.cli.deploy",
}
# Every subcommand module once, in that order. A module that is not present yet (work in
# progress) is skipped rather than breaking the whole CLI.
SUBCOMMAND_MODULES = tuple(dict.fromkeys(COMMAND_MODULES.values()))


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the problem and where to look), exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or only of ``command`` when its module is known."""
    parser = OneLineArgumentParser(
        prog="sconify",
        description="Turn container images into confidential images and audit the result.",
    )
    parser.add_argument("--version", action="version", version=f"sconify {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = (COMMAND_MODULES[command],) if command in COMMAND_MODULES else SUBCOMMAND_MODULES
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(subparsers)
    return parser


def run(argv: list[str], prog: str = "sconify") -> int:
    if argv[:1] == ["image"] and not {"-h", "--help", "--dry-run"} & set(argv):
        from sconify.conversion.elfworker import prestart

        prestart()  # lief's helper loads while this process imports (sconify.conversion.elfworker)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or 0)
    except (SconifyError, EmbedfsError) as exc:
        code = getattr(exc, "exit_code", EXIT_BAD_INPUT)
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: say so in one line, keep the traceback for debugging
        if os.environ.get("SCONIFY_DEBUG"):
            traceback.print_exc()
        print(
            f"{prog}: internal error: {type(exc).__name__}: {one_line(exc)} "
            "(this is a bug; rerun with SCONIFY_DEBUG=1 and report the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main() -> None:
    sys.exit(run(sys.argv[1:]))


def image_main() -> None:
    """``sconify-image ...`` is ``sconify image ...``."""
    sys.exit(run(["image", *sys.argv[1:]], prog="sconify-image"))
