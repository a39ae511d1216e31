"""sconify benchmarks: one command builds the inputs, runs every case and prints medians.

    python bench/run.py                 # full run: 3 repetitions, synthetic images 0.25-2 GB
    python bench/run.py --quick         # 1 repetition, small synthetic images (a few minutes)
    python bench/run.py --only python --only embedfs --repeat 5 --json results.json

Each of our figures sits next to a baseline measured in the same run on the same input:
`skopeo copy` to an OCI layout with zstd, and a bare Python pass that only decompresses,
re-tars and recompresses the layers (bench/repack.py). Wall time, CPU time (user+sys) and peak
RSS come from os.wait4 on each child process. Inputs are cached in $SCONIFY_BENCH_CACHE
(default ~/.cache/sconify/bench); outputs go to a temporary directory removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from measure import CommandFailed, Summary, repeat, steal_share, stolen_seconds  # noqa: E402
from synth import cache_dir, uncompressed_rootfs_bytes  # noqa: E402

GROUPS = ("python", "node", "synth", "scaling", "embedfs", "fspf", "runtime", "registry", "rewrite")
FULL_SIZES = (0.25, 0.5, 1.0, 2.0)
QUICK_SIZES = (0.05, 0.1)
MAIN_SIZE = 1.0  # the size the synthetic targets are about
RSS_LIMIT_MB = 600


@dataclass
class Row:
    """One line of the result table: our figure next to a baseline, and the target if any."""

    case: str
    ours: str  # what we ran
    wall: float
    cpu: float
    peak_rss_mb: float
    mb_per_s: float | None = None
    baseline: str | None = None
    baseline_wall: float | None = None
    ratio: float | None = None  # ours / baseline wall time
    target: str | None = None
    met: bool | None = None
    steal: float | None = None  # share of the machine's CPU time the host stole during our runs (median)

    @classmethod
    def of(cls, case: str, ours: str, figures: Summary, *rest, **named) -> "Row":
        """A row of ``figures`` (medians of the runs of ``ours``)."""
        return cls(case, ours, figures.wall, figures.cpu, figures.peak_rss_mb, *rest, steal=figures.steal, **named)


class Rows(list):
    """The table's rows; each one is also shown on stderr as soon as it is measured."""

    def append(self, row: Row) -> None:
        super().append(row)
        print(f"  {row.case}: {describe(row)}", file=sys.stderr)


def describe(row: Row) -> str:
    """One row as a line: our figures, the baseline's wall time and the target, if any."""
    text = f"{row.ours.strip()} {row.wall:.2f} s, CPU {row.cpu:.2f} s, RSS {row.peak_rss_mb:.0f} MB"
    if row.mb_per_s is not None:
        text += f", {row.mb_per_s:.0f} MB/s"
    if row.baseline_wall is not None:
        text += f"; {row.baseline} {row.baseline_wall:.2f} s"
        if row.ratio is not None:
            text += f" ({row.ratio:.2f}x)"
    if row.target is not None:
        text += f"; target {row.target}: " + ("met" if row.met else "NOT met")
    return text


@dataclass
class Report:
    rows: list[Row] = field(default_factory=Rows)
    scaling: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    work: Path
    repeat: int
    report: Report
    sconify_outputs: dict[str, tuple[str, Path, float]] = field(default_factory=dict)  # case -> (ref, manifest, wall)
    synth_runs: dict[float, Summary] = field(default_factory=dict)  # size in GB -> sconify-image figures


# --- commands ------------------------------------------------------------------------------


def sconify_argv(source: str, destination: str, outdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sconify", "image", "--from", source, "--to", destination, *extra, "--json",
        "--manifest-out", str(outdir / "manifest.json"), "--session-out", str(outdir / "session.yaml"),
        "--keys-out", str(outdir / "keys.json"),
    ]  # the same order as sconify_side_outputs


def sconify_side_outputs(outdir: Path) -> list[Path]:
    """What sconify-image writes beside the image (it refuses to overwrite the keys file)."""
    return [outdir / "manifest.json", outdir / "session.yaml", outdir / "keys.json"]


def skopeo_argv(source: str, destination: str) -> list[str]:
    return ["skopeo", "copy", "--quiet", "--dest-compress-format", "zstd", source, destination]


def fresh(*paths: Path):
    """A before-each hook that removes ``paths`` so every run writes a new output."""
    def clear() -> None:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return clear


# --- image cases ---------------------------------------------------------------------------


def image_case(ctx: Context, name: str, layout: Path, data_args: list[str], targets: dict) -> Summary:
    """sconify-image, skopeo copy (zstd) and the bare repack pass on one OCI layout."""
    source = f"oci:{layout}:latest"
    rootfs = uncompressed_rootfs_bytes(layout)
    outdir = ctx.work / name.replace(" ", "-")
    outdir.mkdir(parents=True, exist_ok=True)
    out_image = outdir / "image"
    ours = repeat(sconify_argv(source, f"oci:{out_image}:bench", outdir, *data_args), ctx.repeat,
                  before_each=fresh(out_image, *sconify_side_outputs(outdir)))
    mb_s = rootfs / 1e6 / ours.wall
    skopeo_out = outdir / "skopeo"
    skopeo = repeat(skopeo_argv(source, f"oci:{skopeo_out}:bench"), ctx.repeat, before_each=fresh(skopeo_out))
    repack_out = outdir / "repack"
    bare = repeat([sys.executable, str(BENCH / "repack.py"), str(layout), str(repack_out)], ctx.repeat,
                  before_each=fresh(repack_out))
    label = f"{name} ({rootfs / 1e6:.0f} MB rootfs)"
    rows = ctx.report.rows
    ratio = ours.wall / skopeo.wall
    row = Row.of(label, "sconify-image", ours, mb_s, "skopeo copy zstd", skopeo.wall, ratio)
    if "skopeo_ratio" in targets:
        row.target, row.met = f"<= {targets['skopeo_ratio']}x skopeo", ratio <= targets["skopeo_ratio"]
    rows.append(row)
    rows.append(Row.of(label, "sconify-image", ours, mb_s, "bare repack (Python)", bare.wall, ours.wall / bare.wall))
    rows.append(Row.of(label, "  skopeo copy zstd", skopeo, rootfs / 1e6 / skopeo.wall))
    rows.append(Row.of(label, "  bare repack", bare, rootfs / 1e6 / bare.wall))
    if "mb_per_s" in targets:
        rows.append(Row.of(label, "sconify-image MB/s", ours, mb_s,
                           target=f">= {targets['mb_per_s']} MB/s", met=mb_s >= targets["mb_per_s"]))
    rows.append(Row.of(label, "sconify-image RSS", ours, mb_s,
                       target=f"< {RSS_LIMIT_MB} MB", met=ours.peak_rss_mb < RSS_LIMIT_MB))
    ctx.sconify_outputs[name] = (f"oci:{out_image}:bench", outdir, ours.wall)
    verify_case(ctx, name)
    shutil.rmtree(outdir, ignore_errors=True)
    return ours


def verify_case(ctx: Context, name: str) -> None:
    """`sconify verify` of the output just written, as an auditor runs it (the image and the
    manifest, no keys) and as the data owner runs it (with --keys: every protected file is
    decrypted and every layer indexed); target for both: at least 2x faster than sconify."""
    ref, outdir, sconify_wall = ctx.sconify_outputs[name]
    argv = [sys.executable, "-m", "sconify", "verify", ref, "--manifest", str(outdir / "manifest.json")]
    for label, extra in (("sconify verify", []), ("sconify verify --keys", ["--keys", str(outdir / "keys.json")])):
        result = repeat(argv + extra, ctx.repeat)
        speedup = sconify_wall / result.wall
        ctx.report.rows.append(Row.of(ctx.report.rows[-1].case, label, result, None, "sconify-image", sconify_wall,
                                      result.wall / sconify_wall, ">= 2x faster than sconify", speedup >= 2))


def python_case(ctx: Context) -> None:
    layout = demo_layout("python")
    image_case(ctx, "python fixture", layout, ["--dir", "/app/data"], {"skopeo_ratio": 1.5})
    selection_case(ctx, "python fixture", layout)


def node_case(ctx: Context) -> None:
    layout = demo_layout("node")
    image_case(ctx, "node fixture", layout, ["--dir", "/app/data"], {})
    selection_case(ctx, "node fixture", layout)


REWRITE_SHARE = 1.10  # converting with the layers that hold protected plaintext rewritten: <= 10 % more


def rewrite_case(ctx: Context) -> None:
    """The python and node fixtures converted with --dir /app/data, the app layer rewritten
    without the plaintext of /app/data (as shipped) and kept as it is (the rewrite's plan
    emptied, bench/norewrite.py), through the same wrapper; target <= 1.10x."""
    for name in ("python", "node"):
        source = f"oci:{demo_layout(name)}:latest"
        outdir = ctx.work / f"rewrite-{name}"
        outdir.mkdir(parents=True, exist_ok=True)
        out_image = outdir / "image"
        figures = {}
        for mode in ("without", "with"):
            argv = [sys.executable, str(BENCH / "norewrite.py"), mode,
                    *sconify_argv(source, f"oci:{out_image}:bench", outdir, "--dir", "/app/data")[3:]]
            figures[mode] = repeat(argv, ctx.repeat, before_each=fresh(out_image, *sconify_side_outputs(outdir)))
        ratio = figures["with"].wall / figures["without"].wall
        label = f"{name} fixture, input layers rewritten"
        ctx.report.rows.append(Row.of(label, "sconify-image (rewritten)", figures["with"], None,
                                      "not rewritten", figures["without"].wall, ratio,
                                      f"<= {REWRITE_SHARE}x", ratio <= REWRITE_SHARE))
        ctx.report.rows.append(Row.of(label, "  sconify-image (not rewritten)", figures["without"]))
        shutil.rmtree(outdir, ignore_errors=True)


SELECTION_SHARE = 0.10  # code selection (sconify.conversion.codepaths + recipes): at most 10 % of a conversion


def selection_case(ctx: Context, name: str, layout: Path) -> None:
    """The "select files" phase (the service and its code roots derived from the image) as a
    share of the whole conversion, from the phase times sconify-image reports (--json)."""
    outdir = ctx.work / f"{name.replace(' ', '-')}-selection"
    shares, totals = [], []
    for _ in range(ctx.repeat):
        fresh(outdir)()
        outdir.mkdir(parents=True)
        done = subprocess.run(sconify_argv(f"oci:{layout}:latest", f"oci:{outdir / 'image'}:bench", outdir,
                                           "--dir", "/app/data"), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise CommandFailed(f"sconify-image of {name} failed: {done.stderr.strip()[-300:]}")
        phases = json.loads(done.stdout)["phases"]
        total = sum(seconds for phase, seconds in phases.items() if phase != "runtime")  # runtime: a cache hit
        shares.append(phases["select files"] / total)
        totals.append(total)
    shutil.rmtree(outdir, ignore_errors=True)
    share, total = sorted(shares)[len(shares) // 2], sorted(totals)[len(totals) // 2]
    row = Row(f"{name} code selection", f"select files {share * 100:.1f} % of {total:.2f} s", share * total, 0.0, 0.0,
              target=f"<= {SELECTION_SHARE * 100:.0f} % of the conversion", met=share <= SELECTION_SHARE)
    ctx.report.rows.append(row)


def build_in_child(code: str) -> Path:
    """Run input-building ``code`` in a child that prints a path.

    Inputs are built in a child so the runner stays small: on Linux a child's ru_maxrss starts
    from the RSS of the process that forked it, so a big runner would inflate every figure.
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=BENCH)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise CommandFailed(f"building bench inputs failed: {lines[-1] if lines else done.returncode}")
    return Path(done.stdout.strip().splitlines()[-1])


def demo_layout(name: str) -> Path:
    return build_in_child(f"from sconify.demo import debimage; print(debimage.build_image({name!r}))")


def synth_layout(size_gb: float, compression: str) -> Path:
    began = time.perf_counter()
    layout = build_in_child(
        "from sconify.demo import debimage; from synth import synthetic_image, uncompressed_rootfs_bytes; "
        f"layout = synthetic_image({int(size_gb * (1 << 30))}, debimage.build_image('python'), {compression!r}); "
        "uncompressed_rootfs_bytes(layout); print(layout)"
    )
    seconds = time.perf_counter() - began
    if seconds > 1:
        print(f"  generated synthetic {size_gb} GB image in {seconds:.0f} s: {layout}", file=sys.stderr)
    return layout


def synth_case(ctx: Context, size_gb: float, compression: str) -> None:
    ctx.synth_runs[size_gb] = image_case(ctx, f"synthetic {size_gb:g} GB", synth_layout(size_gb, compression), ["--dir", "/app/data"],
               {"mb_per_s": 100})


def scaling_case(ctx: Context, sizes: list[float], compression: str) -> None:
    """sconify-image over the synthetic sizes; least-squares slope of wall time per GB."""
    points = []
    for size in sizes:
        layout = synth_layout(size, compression)
        rootfs = uncompressed_rootfs_bytes(layout)
        summary = ctx.synth_runs.get(size)  # the synthetic case already ran this size
        if summary is None:
            outdir = ctx.work / f"scale-{size:g}"
            outdir.mkdir(parents=True, exist_ok=True)
            out_image = outdir / "image"
            summary = repeat(sconify_argv(f"oci:{layout}:latest", f"oci:{out_image}:bench", outdir, "--dir", "/app/data"),
                             ctx.repeat, before_each=fresh(out_image, *sconify_side_outputs(outdir)))
            shutil.rmtree(outdir, ignore_errors=True)
        points.append((rootfs / 1e9, summary))
        ctx.report.rows.append(Row.of(f"scaling {size:g} GB ({rootfs / 1e6:.0f} MB rootfs)", "sconify-image", summary,
                                      rootfs / 1e6 / summary.wall, target=f"< {RSS_LIMIT_MB} MB RSS", met=summary.peak_rss_mb < RSS_LIMIT_MB))
    if len(points) >= 2:
        xs = [x for x, _ in points]
        slope, intercept, r2 = least_squares(xs, [s.wall for _, s in points])
        cpu_slope, cpu_intercept, cpu_r2 = least_squares(xs, [s.cpu for _, s in points])
        ctx.report.scaling = {
            "points": [{"rootfs_gb": x, **s.as_dict()} for x, s in points],
            "seconds_per_gb": slope,
            "intercept_s": intercept,
            "r2": r2,
            "cpu_seconds_per_gb": cpu_slope,
            "cpu_intercept_s": cpu_intercept,
            "cpu_r2": cpu_r2,
            "linear": max(r2, cpu_r2) >= 0.98 if len(points) >= 3 else None,  # two points always fit
        }


def least_squares(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of the line through (xs, ys)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, 1 - residual / total if total else 1.0


# --- embedfs and fspf -------------------------------------------------------------------------


def cached_directory(name: str, fill) -> Path:
    """``cache_dir()/name``, filled once by ``fill(staging_dir)`` and renamed into place."""
    directory = cache_dir() / name
    if directory.is_dir():
        return directory
    staged = directory.with_name(f".{name}.tmp{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    fill(staged)
    os.rename(staged, directory)
    return directory


def embedfs_inputs(size_mb: int) -> Path:
    """A directory of ``size_mb`` MB to pack: 2,000 small .py files and 8 MB incompressible blobs."""
    import hashlib

    def fill(staged: Path) -> None:
        text = b"def handler(event):\n    return {'status': 200, 'body': event}\n" * 64
        for index in range(2000):
            path = staged / "app" / f"pkg{index // 100}" / f"mod{index}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text)
        (staged / "app" / "data").mkdir(parents=True)
        for index in range(size_mb // 8):
            (staged / "app" / "data" / f"blob{index:03d}.bin").write_bytes(
                hashlib.shake_256(str(index).encode()).digest(8 << 20))

    return cached_directory(f"embedfs-{size_mb}M", fill)


def fspf_inputs(size_mb: int) -> Path:
    """``size_mb`` MB of incompressible data in 64 files."""

    def fill(staged: Path) -> None:
        block = random_block()
        per_file = (size_mb << 20) // 64
        for index in range(64):
            with open(staged / f"file-{index:04d}.bin", "wb") as handle:
                for offset in range(0, per_file, len(block)):
                    handle.write(block[: min(len(block), per_file - offset)])

    return cached_directory(f"fspf-{size_mb}M", fill)


def random_block() -> bytes:
    import random

    return random.Random(7).randbytes(1 << 20)


def embedfs_case(ctx: Context, size_mb: int, binary: str) -> None:
    """embedfs pack + inject into node, measure and verify, each next to a plain-tool baseline."""
    source = embedfs_inputs(size_mb)
    work = ctx.work / "embedfs"
    work.mkdir(parents=True, exist_ok=True)
    archive, injected = work / "app.efs", work / "node.efs"
    ours = repeat(["sh", "-c", 'embedfs pack "$1" "$2" >/dev/null && embedfs inject "$3" "$2" -o "$4" >/dev/null',
                   "sh", str(source), str(archive), binary, str(injected)], ctx.repeat, before_each=fresh(archive, injected))
    tarball = work / "app.tar.zst"
    base = repeat(["sh", "-c", 'tar -C "$1" -cf - . | zstd -q -3 -T2 -o "$2" && cat "$3" "$2" > "$4"',
                   "sh", str(source), str(tarball), binary, str(work / "cat.out")], ctx.repeat,
                  before_each=fresh(tarball, work / "cat.out"))
    label = f"embedfs {size_mb} MB into node"
    rows = ctx.report.rows
    rows.append(Row.of(label, "embedfs pack + inject", ours, size_mb * 1.048576 / ours.wall,
                       "tar | zstd -T2; cat", base.wall, ours.wall / base.wall,
                       f"< {RSS_LIMIT_MB} MB RSS", ours.peak_rss_mb < RSS_LIMIT_MB))
    size = injected.stat().st_size / 1e6
    measured = repeat(["embedfs", "measure", str(injected), "--json"], ctx.repeat)
    sha = repeat(["sha256sum", str(injected)], ctx.repeat)
    rows.append(Row.of(f"measure {size:.0f} MB binary", "embedfs measure", measured, size / measured.wall,
                       "sha256sum", sha.wall, measured.wall / sha.wall))
    verified = repeat(["embedfs", "verify", str(injected)], ctx.repeat)
    unzstd = repeat(["sh", "-c", 'zstd -q -d -c "$1" | sha256sum', "sh", str(tarball)], ctx.repeat)
    rows.append(Row.of(f"verify {size:.0f} MB binary", "embedfs verify", verified, size / verified.wall,
                       "zstd -d | sha256sum", unzstd.wall, verified.wall / unzstd.wall))


def fspf_case(ctx: Context, size_mb: int) -> None:
    """`sconify fspf addf` of ``size_mb`` MB, encrypted and authenticated, next to `cp -r`."""
    source = fspf_inputs(size_mb)
    work = ctx.work / "fspf"
    work.mkdir(parents=True, exist_ok=True)
    volume, encrypted, copied = work / "volume.fspf", work / "encrypted", work / "copy"
    rows = ctx.report.rows
    label = f"fspf addf {size_mb} MB"
    copy = repeat(["cp", "-r", str(source), str(copied)], ctx.repeat, before_each=fresh(copied))
    sha = repeat(["sh", "-c", 'cat "$1"/* | sha256sum', "sh", str(source)], ctx.repeat)
    for protection, out, baseline, name in (("encrypted", encrypted, copy, "cp -r"),
                                            ("authenticated", None, sha, "cat | sha256sum")):
        def prepare(protection=protection, out=out) -> None:
            fresh(volume, *([out] if out else []))()
            for step in (["create", str(volume)], ["addr", str(volume), "/", "--kernel", "/", "--not-protected"],
                         ["addr", str(volume), "/data", "--kernel", "/data", f"--{protection}"]):
                subprocess.run([sys.executable, "-m", "sconify", "fspf", *step], check=True, capture_output=True)

        argv = [sys.executable, "-m", "sconify", "fspf", "addf", str(volume), "/data", str(source)] + ([str(out)] if out else [])
        result = repeat(argv, ctx.repeat, before_each=prepare)
        rows.append(Row.of(label, f"sconify fspf addf {protection}", result, size_mb * 1.048576 / result.wall,
                           name, baseline.wall, result.wall / baseline.wall))


def runtime_case(ctx: Context, volume_mb: int) -> None:
    """The runtime's start-up under Docker and an encrypted volume's throughput (bench_runtime)."""
    from bench_runtime import local_startup_rows, startup_rows, volume_rows

    rows = startup_rows(ctx.work, ctx.repeat, demo_layout("python"), Row)
    if not rows:
        ctx.report.notes.append("runtime start-up under Docker not measured: no Docker engine (DOCKER_HOST or start-dockerd)")
    rows += local_startup_rows(ctx.work, ctx.repeat, Row)
    for row in rows + volume_rows(ctx.work, ctx.repeat, volume_mb, Row):
        ctx.report.rows.append(row)


def registry_case(ctx: Context, size_gb: float, compression: str) -> None:
    """Registry to registry: the Python demo and the synthetic image (bench_registry)."""
    from bench_registry import registry_rows

    cases = [("Python fixture", demo_layout("python"), []),
             (f"synthetic {size_gb:g} GB", synth_layout(size_gb, compression), ["--dir", "/app/data"])]
    rows, notes = registry_rows(ctx.work, ctx.repeat, cases, Row)
    ctx.report.notes += notes
    for row in rows:
        ctx.report.rows.append(row)


# --- output ----------------------------------------------------------------------------------


def format_table(report: Report) -> str:
    header = ("case", "ours", "s", "cpu s", "RSS MB", "steal", "MB/s", "baseline", "base s", "ratio", "target", "met?")
    lines = []
    for row in report.rows:
        lines.append((
            row.case, row.ours, f"{row.wall:.2f}", f"{row.cpu:.2f}", f"{row.peak_rss_mb:.0f}",
            f"{row.steal:.0%}" if row.steal is not None else "",
            f"{row.mb_per_s:.0f}" if row.mb_per_s is not None else "",
            row.baseline or "", f"{row.baseline_wall:.2f}" if row.baseline_wall is not None else "",
            f"{row.ratio:.2f}x" if row.ratio is not None else "", row.target or "",
            "" if row.met is None else ("yes" if row.met else "NO"),
        ))
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    out = [" | ".join(cell.ljust(width) for cell, width in zip(header, widths))]
    out.append("-+-".join("-" * width for width in widths))
    out += [" | ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in lines]
    if report.scaling:
        s = report.scaling
        out.append("")
        out.append(f"scaling: wall {s['seconds_per_gb']:.1f} s per GB of rootfs (intercept {s['intercept_s']:.1f} s, "
                   f"R^2 {s['r2']:.3f}); CPU {s['cpu_seconds_per_gb']:.1f} s per GB (intercept {s['cpu_intercept_s']:.1f} s, "
                   f"R^2 {s['cpu_r2']:.3f}): " + {True: "linear", False: "NOT linear (R^2 < 0.98)",
                                                None: "too few sizes to judge linearity"}[s["linear"]])
    for note in report.notes:
        out.append(f"note: {note}")
    return "\n".join(out)


def machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "load_before": os.getloadavg()[0]}


# One core's SHA-256 speed in a quiet state of these machines (DESIGN.md); the calibration
# compares the machine of this run with it.
QUIET_SHA256_GB_S = 1.85


def calibrate() -> dict:
    """How fast this machine is right now: one core's SHA-256 of 256 MiB (GB/s, best of 3) and
    the host's steal meanwhile. Run in a child, so the runner stays small (see build_in_child)."""
    code = ("import hashlib, time; b = bytes(256 << 20); best = 9e9\n"
            "for _ in range(3):\n"
            "    t = time.perf_counter(); hashlib.sha256(b).digest(); best = min(best, time.perf_counter() - t)\n"
            "print(len(b) / 1e9 / best)")
    stolen = stolen_seconds()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    steal = steal_share(stolen, stolen_seconds(), time.perf_counter() - began)
    return {"sha256_gb_s": round(float(done.stdout), 2), "steal": None if steal is None else round(steal, 3)}


def describe_calibration(when: str, figures: dict) -> str:
    speed = figures["sha256_gb_s"]
    steal = "" if figures["steal"] is None else f", host steal {figures['steal']:.0%}"
    return (f"machine {when}: SHA-256 {speed:.2f} GB/s on one core ({speed / QUIET_SHA256_GB_S:.0%} of the "
            f"{QUIET_SHA256_GB_S} GB/s of a quiet spell{steal})")


def runner_rss_mb() -> float:
    """The runner's own peak RSS: the floor under every child's ru_maxrss (see build_in_child)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- main ------------------------------------------------------------------------------------


def compile_bytecode() -> str:
    """Compile sconify's and embedfs's modules to bytecode, as installing a wheel does.

    An editable install has none, and with PYTHONDONTWRITEBYTECODE set (as on these machines)
    every run would compile ~8,000 lines again (~0.15 s of CPU), which a user of an installed
    sconify never pays; skopeo, the baseline, is a compiled binary."""
    import importlib.util

    directories = [str(Path(p)) for name in ("sconify", "embedfs")
                   for p in importlib.util.find_spec(name).submodule_search_locations]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", *directories], env=env, check=True)
    return "bytecode of sconify and embedfs compiled before measuring (as a wheel install does)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="groups: " + ", ".join(GROUPS))
    parser.add_argument("--quick", action="store_true", help="1 repetition, synthetic sizes 0.05/0.1 GB, 50 MB embedfs/fspf")
    parser.add_argument("--repeat", type=int, default=None, help="runs per case (default 3, 1 with --quick)")
    parser.add_argument("--sizes", type=float, nargs="+", default=None, metavar="GB",
                        help="synthetic image sizes for the scaling case (default 0.25 0.5 1 2)")
    parser.add_argument("--only", action="append", choices=GROUPS, help="run only these groups (repeatable)")
    parser.add_argument("--synth-compression", choices=("gzip", "zstd"), default="gzip",
                        help="layer compression of the synthetic input (default gzip, as most registries serve)")
    parser.add_argument("--node", default="/usr/bin/node", help="node binary for the embedfs case")
    parser.add_argument("--json", type=Path, help="also write the table as JSON to this file")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    repeats = args.repeat or (1 if args.quick else 3)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    main_size = sizes[-1] if args.quick else MAIN_SIZE
    blob_mb = 50 if args.quick else 200
    fspf_mb = 50 if args.quick else 1024
    groups = args.only or list(GROUPS)
    if "embedfs" in groups and not os.path.exists(args.node):
        parser.error(f"--node {args.node} does not exist; pass a node binary or leave out the embedfs group")
    if any(g in groups for g in ("python", "node", "synth")) and not shutil.which("skopeo"):
        parser.error("skopeo is not installed (the baseline); apt-get install skopeo")
    report = Report(machine=machine())
    report.notes.append(compile_bytecode())
    report.machine["before"] = calibrate()
    work = Path(tempfile.mkdtemp(prefix="sconify-bench-", dir=args.workdir))
    ctx = Context(work=work, repeat=repeats, report=report)
    began = time.perf_counter()
    try:
        for group in GROUPS:
            if group not in groups:
                continue
            print(f"running {group} ({repeats}x)...", file=sys.stderr)
            if group == "python":
                python_case(ctx)
            elif group == "node":
                node_case(ctx)
            elif group == "synth":
                synth_case(ctx, main_size, args.synth_compression)
            elif group == "scaling":
                scaling_case(ctx, list(sizes), args.synth_compression)
            elif group == "embedfs":
                embedfs_case(ctx, blob_mb, args.node)
            elif group == "fspf":
                fspf_case(ctx, fspf_mb)
            elif group == "runtime":
                runtime_case(ctx, 64 if args.quick else 256)
            elif group == "registry":
                registry_case(ctx, main_size, args.synth_compression)
            elif group == "rewrite":
                rewrite_case(ctx)
    except CommandFailed as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.machine["seconds"] = round(time.perf_counter() - began, 1)
    report.machine["load_after"] = os.getloadavg()[0]
    report.machine["after"] = calibrate()
    for when in ("before", "after"):
        report.notes.append(describe_calibration(when, report.machine[when]))
    report.notes.append(f"runner peak RSS {runner_rss_mb():.0f} MB (a floor under the children's RSS figures); "
                        f"load average {report.machine['load_before']:.1f} before, {report.machine['load_after']:.1f} after")
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
