"""What every subcommand shares for talking to people: sizes, progress, the console."""

from __future__ import annotations

import argparse
import re

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'64M' -> 67108864. Binary units K, M, G, T (an optional trailing 'B' or 'iB' is allowed)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 4096, 256K, 64M or 1G")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def console() -> Console:
    """Tables and results go to stdout; colour only on a terminal (rich decides)."""
    return Console()


def error_console() -> Console:
    return Console(stderr=True)


class PhaseProgress:
    """A rich progress display on stderr, one line per phase; silent when not a terminal."""

    def __init__(self, enabled: bool = True):
        err = error_console()
        self._enabled = enabled and err.is_terminal
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            disable=not self._enabled,
        )
        self._task = None

    def __enter__(self) -> "PhaseProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, phase: str, total: int | None = None) -> None:
        self._task = self._progress.add_task(phase, total=total)

    def advance(self, amount: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def finish(self, phase: str, seconds: float) -> None:
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.completed or 1, completed=task.completed or 1)
            self._task = None
