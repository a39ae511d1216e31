"""Run one command as a child process and measure it: wall time, CPU time, peak RSS, host steal.

CPU (user + sys) and peak RSS come from ``os.wait4`` on the child, so they cover the child and
the grandchildren it waited for (``sh -c 'a && b'`` reports both), and nothing of the runner.

Steal is the share of the machine's CPU time the hypervisor gave to other guests while the
child ran (the ``steal`` column of ``/proc/stat``, over all CPUs). These machines are shared VMs:
the same conversion has taken 9 s and 34 s on the same commit, with 2 % and 30-50 % steal, and
the baselines moved with it. A figure is only comparable with figures of the same steal.
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
    steal: float | None = None  # share of all CPUs' time stolen by the host during the run (0-1)


@dataclass(frozen=True)
class Summary:
    """Medians over the runs of one command."""

    wall: float
    cpu: float
    peak_rss_mb: float
    runs: int
    steal: float | None = None  # median of the runs' steal (None where /proc/stat has no steal)

    def as_dict(self) -> dict:
        return asdict(self)


class CommandFailed(RuntimeError):
    """A measured command exited non-zero."""


def stolen_seconds() -> float | None:
    """CPU seconds the host has stolen from this machine since boot, all CPUs together (the
    eighth number of /proc/stat's ``cpu`` line); None where the kernel does not report it."""
    try:
        with open("/proc/stat", "rb") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def steal_share(stolen_before: float | None, stolen_after: float | None, wall: float) -> float | None:
    """The share of all CPUs' time over ``wall`` seconds that the host stole."""
    if stolen_before is None or stolen_after is None or wall <= 0:
        return None
    return min(1.0, max(0.0, (stolen_after - stolen_before) / (wall * (os.cpu_count() or 1))))


def run_measured(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: float = 3600) -> Sample:
    """Run ``argv`` to completion and return its figures; stdout is discarded, stderr kept."""
    stderr_path = Path(cwd or ".") / f".bench-stderr-{os.getpid()}"
    with open(stderr_path, "w+b") as stderr:
        stolen = stolen_seconds()
        began = time.perf_counter()
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
        steal = steal_share(stolen, stolen_seconds(), wall)
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
        steal=steal,
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
        steal=None if any(s.steal is None for s in samples) else statistics.median(s.steal for s in samples),
    )
