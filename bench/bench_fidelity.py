"""The converted Python demo against the original, on the same disk (issue 23's fidelity targets).

    python bench/bench_fidelity.py --quick          # a few minutes: small counts, a 64 MB volume file
    python bench/bench_fidelity.py                  # the issue's sizes: 1 GB volume file
    python bench/bench_fidelity.py --size 256M --repeat 3 --json out.json

Builds the Python demo image (`sconify demo python`), adds one measured script to it
(`/app/fidelity_worker.py`, the WORKER below) as its command, converts that with `--dir /app/data
--allow-args`, and runs each case as one `docker run` of the worker, in the original and in the
converted image, each on a fresh Docker volume mounted at /app/data (the same disk for both: the
engine's volume directory). The worker times its own work (the container's start is not in it) and
reports its peak RSS (VmHWM). The start-up case converts the demo as it is and times `docker run`
of it against `docker run` of the original (the container set-up is in both).

Each line prints the original's speed, the converted one's, their ratio (converted / original)
and the target, PASS or MISS. Misses are expected while a volume file is decrypted whole at open
and encrypted whole at every close and fsync (docs/performance.md, "Runtime fidelity"); the bench
still completes: a case the converted image cannot run says why, and for the large file, the
size at which it does run.

Needs a Docker engine at DOCKER_HOST and sconify's CLI (`python -m sconify`); nothing else of
sconify is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER_PATH = "/app/fidelity_worker.py"
SECRETS = "/run/secrets/sconify"
MIB = 1 << 20

# Runs inside both images (CPython 3.11, stdlib only): `python3 WORKER_PATH CASE DIR ARGS...`.
# Prints one JSON line: what it did (count), how long it took from the first open (seconds),
# and its peak RSS. A case stops at its count or after its time limit, whichever comes first.
WORKER = r'''
import json, os, random, sqlite3, sys, time

def hwm_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0

def sqlite_rows(d, count, batch, limit):
    db = sqlite3.connect(os.path.join(d, "bench.db"))
    db.execute("create table t(id integer primary key, body text)")
    db.commit()
    done, began = 0, time.perf_counter()
    while done < count and time.perf_counter() - began < limit:
        with db:
            db.executemany("insert into t(body) values (?)", [(f"row-{done + i:08d}-" + "x" * 80,) for i in range(batch)])
        done += batch
    seconds = time.perf_counter() - began
    assert db.execute("select count(*) from t").fetchone()[0] == done
    db.close()
    return done, seconds

def small_files(d, count, size, limit):
    block = bytes(range(256)) * (size // 256)
    done, began = 0, time.perf_counter()
    while done < count and time.perf_counter() - began < limit:
        with open(os.path.join(d, f"f{done:06d}"), "wb") as f:
            f.write(block)
        done += 1
    return done, time.perf_counter() - began

def log_append(d, count, limit):
    path = os.path.join(d, "app.log")
    done, began = 0, time.perf_counter()
    while done < count and time.perf_counter() - began < limit:
        with open(path, "a") as f:
            f.write(f"{time.time():.6f} INFO request {done} served in 3 ms\n")
        done += 1
    seconds = time.perf_counter() - began
    with open(path) as f:
        assert sum(1 for _ in f) == done
    return done, seconds

def make_big(d, mib):
    block = random.Random(23).randbytes(1 << 20)
    began = time.perf_counter()
    with open(os.path.join(d, "big.bin"), "wb") as f:
        for _ in range(mib):
            f.write(block)
    return mib, time.perf_counter() - began

HELD = [0]

def held(fd):
    """Bytes of memory the open file holds when it is a memfd (the shield's plaintext copy: shared
    memory, charged to the container but not in VmHWM); 0 for a file on disk."""
    if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
        HELD[0] = max(HELD[0], os.fstat(fd).st_blocks * 512)

def read_seq(d):
    began, total = time.perf_counter(), 0
    with open(os.path.join(d, "big.bin"), "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
        held(f.fileno())
    return total, time.perf_counter() - began

def read_random(d, count):
    began, total = time.perf_counter(), 0
    fd = os.open(os.path.join(d, "big.bin"), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pick = random.Random(23)
        for _ in range(count):
            total += len(os.pread(fd, 4096, pick.randrange(0, max(1, size - 4096)) & ~4095))
        held(fd)
    finally:
        os.close(fd)
    return total, time.perf_counter() - began

case, d, args = sys.argv[1], sys.argv[2], [float(a) for a in sys.argv[3:]]
os.makedirs(d, exist_ok=True)
if case == "sqlite":
    count, seconds = sqlite_rows(d, int(args[0]), int(args[1]), args[2])
elif case == "files":
    count, seconds = small_files(d, int(args[0]), int(args[1]), args[2])
elif case == "log":
    count, seconds = log_append(d, int(args[0]), args[1])
elif case == "make-big":
    count, seconds = make_big(d, int(args[0]))
elif case == "read-seq":
    count, seconds = read_seq(d)
elif case == "read-random":
    count, seconds = read_random(d, int(args[0]))
else:
    raise SystemExit(f"unknown case {case}")
print(json.dumps({"count": count, "seconds": seconds, "hwm_kib": hwm_kib(), "held_kib": HELD[0] // 1024}), flush=True)
'''


@dataclass(frozen=True)
class Sizes:
    single_rows: int
    batch_rows: int
    batch: int
    files: int
    file_size: int
    log_lines: int
    big_mib: int
    random_reads: int
    limit_s: float  # a case stops after this long (its rate is what it did by then)
    startup_runs: int


QUICK = Sizes(single_rows=200, batch_rows=20_000, batch=1000, files=300, file_size=4096, log_lines=300,
              big_mib=64, random_reads=2000, limit_s=20, startup_runs=3)
FULL = Sizes(single_rows=2000, batch_rows=100_000, batch=1000, files=2000, file_size=4096, log_lines=2000,
             big_mib=1024, random_reads=20_000, limit_s=60, startup_runs=5)


@dataclass
class Result:
    """One run of the worker: count done, seconds, peak RSS; or why it failed."""

    count: float = 0
    seconds: float = 0.0
    hwm_mib: float = 0.0
    held_mib: float = 0.0  # memory held by a memfd the worker read through (not in VmHWM)
    error: str = ""
    random: Result | None = None  # read cases: the random reads of the same file
    made: Result | None = None  # read cases: the writing of the file

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Line:
    label: str
    unit: str
    original: float | None
    converted: float | None
    target: str
    met: bool | None
    note: str = ""
    extra: dict = field(default_factory=dict)


def docker(*args: str, check: bool = True, timeout: float | None = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def sconify(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "sconify", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"sconify {' '.join(args[:3])} failed: {result.stderr.strip()[-800:]}")
    return result


class Images:
    """The original and converted demo (start-up) and the demo with the worker (the cases)."""

    def __init__(self, work: Path):
        self.work = work
        name = f"sconify-bench-fidelity-{uuid.uuid4().hex[:8]}"
        self.demo, self.demo_conf = f"{name}:demo", f"{name}:demo-conf"
        self.worker, self.worker_conf = f"{name}:worker", f"{name}:worker-conf"
        self.demo_keys, self.worker_keys = work / "demo-out", work / "worker-out"

    def build(self) -> None:
        layout = self.work / "demo"
        sconify("demo", "python", "--to", f"oci:{layout}:latest")
        sconify("copy", f"oci:{layout}:latest", f"docker-daemon:{self.demo}")
        sconify("image", "--from", f"oci:{layout}:latest", "--to", f"docker-daemon:{self.demo_conf}",
                "--dir", "/app/data", "--out-dir", str(self.demo_keys))
        self.derive_worker()
        sconify("image", "--from", f"docker-daemon:{self.worker}", "--to", f"docker-daemon:{self.worker_conf}",
                "--dir", "/app/data", "--allow-args", "--out-dir", str(self.worker_keys))

    def derive_worker(self) -> None:
        """docker build: FROM the demo, COPY the worker, CMD python3 WORKER_PATH (offline)."""
        context = self.work / "worker-context"
        context.mkdir()
        (context / "fidelity_worker.py").write_text(WORKER)
        (context / "Dockerfile").write_text(f"FROM {self.demo}\nCOPY fidelity_worker.py {WORKER_PATH}\n"
                                            f'CMD ["python3", "{WORKER_PATH}"]\n')
        docker("build", "--network", "none", "-q", "-t", self.worker, str(context))

    def remove(self) -> None:
        docker("rmi", "-f", self.demo, self.demo_conf, self.worker, self.worker_conf, check=False)


class Volume:
    """A fresh Docker volume at /app/data for one image (filled from the image's /app/data on
    first use), with a private copy of the keys directory for the converted image: the runtime
    records the volume's tags there."""

    def __init__(self, image: str, keys: Path | None, work: Path):
        self.image, self.name = image, f"sconify-bench-fidelity-{uuid.uuid4().hex[:10]}"
        docker("volume", "create", self.name)
        self.secrets = None
        if keys is not None:
            self.secrets = Path(tempfile.mkdtemp(prefix="keys-", dir=work))
            shutil.copy(keys / "keys.json", self.secrets / "keys.json")

    def run(self, case: str, *args: object, directory: str = "", timeout: float = 1800) -> Result:
        """The worker's CASE in /app/data/bench-DIRECTORY (default: the case's name)."""
        argv = ["run", "--rm", "--network", "none", "-v", f"{self.name}:/app/data"]
        if self.secrets is not None:
            argv += ["-v", f"{self.secrets}:{SECRETS}"]
        argv += [self.image, "python3", WORKER_PATH, case, f"/app/data/bench-{directory or case}", *map(str, args)]
        try:
            done = docker(*argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Result(error=f"timed out after {timeout:.0f} s")
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            return Result(error=f"exit {done.returncode}: {why[-200:]}")
        doc = json.loads(lines[-1])
        return Result(doc["count"], doc["seconds"], doc["hwm_kib"] / 1024, doc["held_kib"] / 1024)

    def remove(self) -> None:
        docker("volume", "rm", "-f", self.name, check=False)


def median_result(results: list[Result]) -> Result:
    good = [r for r in results if not r.error]
    if not good:
        return results[-1]
    rates = sorted(good, key=lambda r: r.rate)
    return rates[len(rates) // 2]


def on_fresh_volume(image: str, keys: Path | None, work: Path, steps) -> Result:
    """``steps(volume) -> Result`` on a fresh volume of ``image``."""
    volume = Volume(image, keys, work)
    try:
        return steps(volume)
    finally:
        volume.remove()


def both(images: Images, work: Path, repeat: int, steps) -> tuple[Result, Result]:
    """``steps`` on a fresh volume of the original and of the converted image, ``repeat`` times
    each (alternating); the run with the median rate of each."""
    runs: dict[str, list[Result]] = {"original": [], "converted": []}
    for _ in range(repeat):
        runs["original"].append(on_fresh_volume(images.worker, None, work, steps))
        runs["converted"].append(on_fresh_volume(images.worker_conf, images.worker_keys, work, steps))
    return median_result(runs["original"]), median_result(runs["converted"])


def ratio_line(label: str, unit: str, scale: float, original: Result, converted: Result, target: float,
               note: str = "") -> Line:
    if original.error or converted.error:
        return Line(label, unit, original.rate * scale or None, converted.rate * scale or None, f">= {target}x", None,
                    note=f"original: {original.error}" if original.error else f"converted: {converted.error}")
    ratio = converted.rate / original.rate
    extra = {"original_count": original.count, "converted_count": converted.count,
             "original_seconds": round(original.seconds, 3), "converted_seconds": round(converted.seconds, 3)}
    if converted.count < original.count:
        note = (note + "; " if note else "") + (f"converted stopped at {converted.count:g} of {original.count:g} "
                                                f"after {converted.seconds:.0f} s")
    return Line(label, unit, original.rate * scale, converted.rate * scale, f">= {target}x", ratio >= target,
                note, {**extra, "ratio": ratio})


def write_cases(images: Images, work: Path, sizes: Sizes, repeat: int) -> list[Line]:
    lines = []
    cases = [
        ("SQLite insert, 1 row per txn", "rows/s", ("sqlite", sizes.single_rows, 1, sizes.limit_s), 0.5),
        (f"SQLite insert, {sizes.batch} rows per txn", "rows/s",
         ("sqlite", sizes.batch_rows, sizes.batch, sizes.limit_s), 0.5),
        (f"small files written + closed ({sizes.file_size // 1024} KiB)", "files/s",
         ("files", sizes.files, sizes.file_size, sizes.limit_s), 0.5),
        ("log line appended (open/write/close)", "lines/s", ("log", sizes.log_lines, sizes.limit_s), 0.2),
    ]
    for label, unit, args, target in cases:
        original, converted = both(images, work, repeat, lambda volume, args=args: volume.run(*args))
        lines.append(ratio_line(label, unit, 1, original, converted, target))
        report(lines[-1])
    return lines


def read_steps(size_mib: int, random_reads: int):
    def steps(volume: Volume) -> Result:
        made = volume.run("make-big", size_mib, directory="read")
        if made.error:
            return Result(error=f"writing the {size_mib} MiB file: {made.error}")
        seq, rnd = volume.run("read-seq", directory="read"), volume.run("read-random", random_reads, directory="read")
        seq.random, seq.made = rnd, made
        return seq
    return steps


def read_cases(images: Images, work: Path, sizes: Sizes, repeat: int) -> list[Line]:
    size = sizes.big_mib
    original, converted = both(images, work, repeat, read_steps(size, sizes.random_reads))
    note = ""
    first_error = converted.error
    while converted.error and not original.error and size > 16:  # the size at which it does run
        size //= 2
        steps = read_steps(size, sizes.random_reads)
        converted = on_fresh_volume(images.worker_conf, images.worker_keys, work, steps)
        note = f"converted failed at {sizes.big_mib} MiB ({first_error}); these figures are at {size} MiB"
        if not converted.error:
            original = on_fresh_volume(images.worker, None, work, steps)
    lines = []
    if original.error or converted.error:
        lines.append(Line(f"volume file of {size} MiB", "MB/s", None, None, ">= 0.7x", None,
                          note=original.error or converted.error))
        report(lines[-1])
        return lines
    label = f"{size} MiB" if not note else f"{size} MiB (not {sizes.big_mib})"
    made_o, made_c = original.made, converted.made
    lines.append(ratio_line(f"sequential read of a {label} volume file", "MB/s", 1 / MIB * 1.048576, original,
                            converted, 0.7, note))
    report(lines[-1])
    rnd_o, rnd_c = original.random, converted.random
    lines.append(ratio_line("random 4 KiB reads of it (open included)", "reads/s", 1 / 4096, rnd_o, rnd_c, 0.7))
    report(lines[-1])
    for what, o, c in (("sequential", original, converted), ("random", rnd_o, rnd_c)):
        if o.error or c.error:
            continue
        more = c.hwm_mib - o.hwm_mib
        lines.append(Line(f"peak RSS of the {what} reader (VmHWM)", "MiB", o.hwm_mib, c.hwm_mib, "< +128 MiB",
                          more < 128, f"{more:+.0f} MiB"))
        report(lines[-1])
        o_all, c_all = o.hwm_mib + o.held_mib, c.hwm_mib + c.held_mib
        lines.append(Line(f"  {what}: VmHWM + the plaintext memfd it read", "MiB", o_all, c_all, "< +128 MiB",
                          c_all - o_all < 128, f"{c_all - o_all:+.0f} MiB"))
        report(lines[-1])
    lines.append(Line(f"(not a target) writing the {label} file", "MB/s", made_o.rate * 1.048576,
                      made_c.rate * 1.048576 if not made_c.error else None, "", None,
                      f"ratio {made_c.rate / made_o.rate:.2f}x" if made_o.rate and made_c.rate else ""))
    report(lines[-1])
    return lines


def startup(images: Images, work: Path, runs: int) -> list[Line]:
    """The demo run with its own command (the container's own copy of /app/data), original and
    converted alternating, the median of ``runs`` after one warm-up each: `docker start -a` of a
    container created beforehand (the engine's copy of the image's file system, which its storage
    driver makes at create, is left out: it grows with the image, not with the runtime), and the
    whole `docker run --rm`."""
    secrets = work / "demo-secrets"
    secrets.mkdir()
    shutil.copy(images.demo_keys / "keys.json", secrets / "keys.json")
    create = {"original": ["create", "--network", "none", images.demo],
              "converted": ["create", "--network", "none", "-v", f"{secrets}:{SECRETS}", images.demo_conf]}
    times: dict[tuple[str, str], list[float]] = {}
    for attempt in range(runs + 1):
        for which in ("original", "converted"):
            container = docker(*create[which]).stdout.strip()
            try:
                began = time.perf_counter()
                done = docker("start", "-a", container, check=False)
                took = time.perf_counter() - began
            finally:
                docker("rm", "-f", container, check=False)
            began = time.perf_counter()
            whole = docker("run", "--rm", *create[which][1:], check=False)
            took_whole = time.perf_counter() - began
            for result in (done, whole):
                if result.returncode != 0:
                    return [Line("start-up of the Python demo", "s", None, None, "<= +0.3 s", None,
                                 f"{which}: exit {result.returncode}: {result.stderr.strip()[-200:]}")]
            if attempt:
                times.setdefault(("start", which), []).append(took)
                times.setdefault(("run", which), []).append(took_whole)
    lines = []
    for kind, label, target in (("start", "start-up of the Python demo (docker start -a)", "<= +0.3 s"),
                                ("run", "(not a target) the same, docker run --rm", "")):
        o, c = statistics.median(times[(kind, "original")]), statistics.median(times[(kind, "converted")])
        lines.append(Line(label, "s", o, c, target, c - o <= 0.3 if target else None, f"{c - o:+.3f} s"))
    return lines


def report(line: Line) -> None:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:.3f}"
    ratio = line.extra.get("ratio")
    verdict = "" if not line.target else "PASS" if line.met else "MISS" if line.met is False else "FAIL"
    print(f"{line.label:<50} {fmt(line.original):>12} {fmt(line.converted):>12} {line.unit:<8} "
          f"{f'{ratio:.3f}x' if ratio is not None else '':>8}  {line.target:<11} {verdict:<4}  {line.note}", flush=True)


def parse_size(text: str) -> int:
    """MiB from '1G', '256M', '64' (MiB)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"G": 1024, "M": 1, "K": 1 / 1024}.get(text[-1:], None)
    return max(1, int(float(text[:-1]) * scale) if scale is not None else int(text))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts and a 64 MiB volume file")
    parser.add_argument("--size", type=parse_size, help="size of the volume file read (default 1G; --quick 64M)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case and image (the median rate is shown)")
    parser.add_argument("--only", action="append", choices=["write", "read", "startup"],
                        help="run only these groups (repeatable)")
    parser.add_argument("--json", help="write the lines to this file")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.size:
        sizes = Sizes(**{**sizes.__dict__, "big_mib": args.size})
    groups = args.only or ["write", "read", "startup"]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, check=False,
                            text=True).stdout.strip()
    print(f"bench_fidelity: commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{'quick' if args.quick else 'full'}, repeat {args.repeat}", flush=True)
    lines: list[Line] = []
    with tempfile.TemporaryDirectory(prefix="sconify-bench-fidelity-") as tmp:
        work = Path(tmp)
        images = Images(work)
        try:
            began = time.perf_counter()
            images.build()
            print(f"images built and converted in {time.perf_counter() - began:.1f} s\n", flush=True)
            print(f"{'case':<50} {'original':>12} {'converted':>12} {'unit':<8} {'ratio':>8}  {'target':<11} verdict")
            if "write" in groups:
                lines += write_cases(images, work, sizes, args.repeat)
            if "read" in groups:
                lines += read_cases(images, work, sizes, args.repeat)
            if "startup" in groups:
                for line in startup(images, work, sizes.startup_runs):
                    lines.append(line)
                    report(line)
        finally:
            images.remove()
    targets = [line for line in lines if line.target]
    missed = [line.label.strip() for line in targets if not line.met]
    print(f"\n{len(targets) - len(missed)} of {len(targets)} targets met" + (f"; missed: {'; '.join(missed)}" if missed else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"commit": commit, "lines": [line.__dict__ for line in lines]}, indent=2,
                                              default=str) + "\n")
    return 0


if __name__ == "__main__":
    if not os.environ.get("DOCKER_HOST"):
        sys.exit("bench_fidelity.py: needs a Docker engine: eval \"$(../shared/tools/start-dockerd)\" first")
    sys.exit(main())
