"""What every subcommand shares for talking to people: sizes, progress, the console."""

from __future__ import annotations

import argparse
import re

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Column
from rich.text import Text

DESCRIPTION_WIDTH = 48  # a longer line description (a `copy` with long references) ends in "…"
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


class AmountColumn(ProgressColumn):
    """How far a line is: done/total for a phase (nothing while neither is known), bytes and
    speed for a blob (a task with the field ``blob``)."""

    def __init__(self, table_column: Column | None = None) -> None:
        super().__init__(table_column)
        self._count = MofNCompleteColumn()
        self._bytes = DownloadColumn(binary_units=True)
        self._speed = TransferSpeedColumn()

    def render(self, task: Task) -> Text:
        if task.fields.get("blob"):
            return Text.assemble(self._bytes.render(task), " ", self._speed.render(task))
        if task.total is None and not task.completed:
            return Text("")
        return self._count.render(task)


def progress_display(console: Console, enabled: bool = True) -> Progress:
    """The one rich Progress of a command (rich draws one live display at a time): its phases
    and the blobs it transfers are tasks of it."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description:<14}", table_column=Column(no_wrap=True, max_width=DESCRIPTION_WIDTH)),
        BarColumn(),  # narrows first on a narrow terminal
        AmountColumn(table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        console=console,
        disable=not enabled,
    )


def blob_label(direction: str, digest: str, size: int) -> str:
    """'push sha256:0123456789ab… 13.4 MiB': the digest shortened as docker shows it."""
    algorithm, _, hexdigest = digest.partition(":")
    return f"{direction} {algorithm}:{hexdigest[:12]}… {human_size(size)}"


class BlobBars:
    """``RegistryOptions.on_blob`` for the CLI: a line per blob being pushed or pulled, a task
    of ``progress`` removed when the transfer ends (rich's Progress locks every change, so the
    parallel uploads may share it)."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def __call__(self, direction: str, digest: str, size: int) -> BlobBar:
        task = self._progress.add_task(blob_label(direction, digest, size), total=size, blob=True)
        return BlobBar(self._progress, task)


class BlobBar:
    """One blob's line (a ``BlobTransfer``)."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: int) -> None:
        self._progress.advance(self._task, amount)

    def end(self) -> None:
        self._progress.remove_task(self._task)


class PhaseProgress:
    """A rich progress display on stderr, one line per phase, and under it one per blob
    transfer (``blob_bars``); silent when not a terminal or not ``enabled`` (``--json``)."""

    def __init__(self, enabled: bool = True):
        err = error_console()
        self._enabled = enabled and err.is_terminal
        self._progress = progress_display(err, self._enabled)
        self._task = None

    def blob_bars(self) -> BlobBars | None:
        """The ``on_blob`` of the command's RegistryOptions: bars when this display is drawn."""
        return BlobBars(self._progress) if self._enabled else None

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
            task = next(task for task in self._progress.tasks if task.id == self._task)  # blobs come later
            self._progress.update(self._task, total=task.completed or 1, completed=task.completed or 1)
            self._task = None
