"""Run one command as a child process and measure it: wall time, CPU time, peak RSS.

CPU (user + sys) and peak RSS come from ``os.wait4`` on the child, so they cover the child and
the grandchildren it waited for (``sh -c 'a && b'`` reports both), and nothing of the runner.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One run of a command."""

    wall: float  # seconds
    cpu: float  # user + sys seconds
    peak_rss_mb: float  # ru_maxrss of the child, MiB
    returncode: int
    error: str = ""  # last stderr line when the command failed


@dataclass(frozen=True)
class Summary:
    """Medians over the runs of one command."""

    wall: float
    cpu: float
    peak_rss_mb: float
    runs: int

    def as_dict(self) -> dict:
        return asdict(self)


class CommandFailed(RuntimeError):
    """A measured command exited non-zero."""


def run_measured(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 3600) -> Sample:
    """Run ``argv`` to completion and return its figures; stdout is discarded, stderr kept."""
    stderr_path = Path(cwd or ".") / f".bench-stderr-{os.getpid()}"
    with open(stderr_path, "w+b") as stderr:
        began = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        lines = stderr.read().decode(errors="replace").strip().splitlines()
    stderr_path.unlink()
    return Sample(
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        returncode=process.returncode,
        error=lines[-1] if process.returncode and lines else "",
    )


def repeat(argv: list[str], times: int, cwd: Path | None = None, env: dict | None = None,
           before_each=None) -> Summary:
    """Run ``argv`` ``times`` times (calling ``before_each()`` first, untimed); medians."""
    samples = []
    for _ in range(times):
        if before_each is not None:
            before_each()
        sample = run_measured(argv, cwd=cwd, env=env)
        if sample.returncode != 0:
            raise CommandFailed(f"{' '.join(map(str, argv))} exited {sample.returncode}: {sample.error}")
        samples.append(sample)
    return Summary(
        wall=statistics.median(s.wall for s in samples),
        cpu=statistics.median(s.cpu for s in samples),
        peak_rss_mb=statistics.median(s.peak_rss_mb for s in samples),
        runs=len(samples),
    )
