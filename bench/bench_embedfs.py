"""Benchmark: inject a 200 MB embedfs archive into node.

Prints, for the same inputs in the same run: our injector's wall time and peak RSS, `cp` of the
same bytes as a baseline, and LIEF's own writer (add a segment, write) if it finishes within the
timeout. Also checks that two injections are byte-identical and the result still runs.

    python bench/bench_embedfs.py [--binary /usr/bin/node] [--size-mb 200] [--lief-timeout 120]

With ``--pack-only``: wall and CPU time of ``pack`` for many small source files and for one
200 MB file, read the way the pipeline reads them (os.pread on one shared spool file), and of
``measure_elf`` on ``--binary``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD_INJECT = """
import json, resource, sys, time
start = time.perf_counter()
from embedfs.elf import inject
inject(sys.argv[1], sys.argv[2], sys.argv[3])
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD_LIEF = """
import json, resource, sys, time
start = time.perf_counter()
import lief
binary = lief.ELF.parse(sys.argv[1])
segment = lief.ELF.Segment()
segment.type = lief.ELF.Segment.TYPE.LOAD
segment.flags = lief.ELF.Segment.FLAGS.R
segment.content = memoryview(open(sys.argv[2], "rb").read())
binary.add(segment)
binary.write(sys.argv[3])
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_archive(path: Path, size_mb: int) -> None:
    """An archive of about ``size_mb`` MB: many small text files plus incompressible blobs."""
    from embedfs.archive import ArchiveEntry, pack

    entries = []
    text = b"def handler(event):\n    return {'status': 200, 'body': event}\n" * 64
    for i in range(2000):
        entries.append(ArchiveEntry(f"app/pkg{i // 100}/mod{i}.py", "file", 0o644, 0, 0, len(text), source=text))
    blob_size = 8 << 20
    for i in range(size_mb // 8):
        seed = hashlib.sha256(str(i).encode()).digest()
        entries.append(ArchiveEntry(f"app/data/blob{i:03d}.bin", "file", 0o644, 0, 0, blob_size,
                                    source=lambda seed=seed: deterministic_stream(seed, blob_size)))
    with open(path, "wb") as out:
        pack(entries, out)


def deterministic_stream(seed: bytes, size: int):
    """Incompressible but reproducible bytes (AES-CTR keystream would do; SHAKE is stdlib)."""
    import io

    return io.BytesIO(hashlib.shake_256(seed).digest(size))


def python_like_text(rng, size: int) -> bytes:
    """Reproducible text that compresses about like Python source (3-4x with zstd -3)."""
    words = ["self", "return", "value", "data", "result", "config", "items", "index", "name", "None"]
    lines, total = [], 0
    while total < size:
        name, other = rng.choice(words), rng.choice(words)
        line = f"    def {name}_{rng.randrange(10000)}(self, {other}):  # {rng.randrange(1 << 30):x}\n"
        line += f"        return {other}.{rng.choice(words)}({rng.randrange(100)}, {name}={rng.random():.6f})\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


class SpoolReader(io.RawIOBase):
    """``size`` bytes at ``offset`` of a shared fd, read with os.pread (as the pipeline's spool)."""

    def __init__(self, fd: int, offset: int, size: int):
        self.fd, self.offset, self.size, self.pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = os.pread(self.fd, min(len(buffer), self.size - self.pos), self.offset + self.pos)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def spooled_entries(spool: Path, sizes: dict[str, int], seed: int):
    """Write the contents of ``sizes`` into one spool file; entries read back from it."""
    import random

    from embedfs.archive import ArchiveEntry

    rng = random.Random(seed)
    extents, offset = {}, 0
    with open(spool, "wb") as out:
        for path, size in sizes.items():
            out.write(python_like_text(rng, size))
            extents[path] = (offset, size)
            offset += size
    fd = os.open(spool, os.O_RDONLY)
    return fd, [ArchiveEntry(path, "file", 0o644, 0, 0, size,
                             source=lambda at=at, size=size: SpoolReader(fd, at, size))
                for path, (at, size) in extents.items()]


def time_pack(entries) -> dict:
    from embedfs.archive import pack

    start, cpu = time.perf_counter(), time.process_time()
    with open(os.devnull, "wb") as out:
        result = pack(entries, out)
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "bytes": result.size,
            "root": result.root_hash}


def bench_pack(work: Path, binary: str) -> None:
    """pack: 9,000 source files of 2-20 KB, and one 200 MB file; measure_elf of ``binary``."""
    import random

    from embedfs.measure import measure_elf

    rng = random.Random(1)
    small = {f"app/pkg{i // 100:03d}/mod{i:05d}.py": rng.randrange(2000, 20000) for i in range(9000)}
    cases = [("9,000 small files", small, 2), ("one 200 MB file", {"app/big.py": 200 << 20}, 3)]
    print(f"{'case':24} {'MB':>6} {'wall s':>7} {'CPU s':>7}  (best of 3; root hash)")
    for name, sizes, seed in cases:
        fd, entries = spooled_entries(work / "spool", sizes, seed)
        try:
            runs = [time_pack(entries) for _ in range(3)]
        finally:
            os.close(fd)
        assert len({r["root"] for r in runs}) == 1
        best = min(runs, key=lambda r: r["seconds"])
        print(f"{name:24} {sum(sizes.values()) / 1e6:6.0f} {best['seconds']:7.2f} {min(r['cpu'] for r in runs):7.2f}"
              f"  {best['root'][:16]}")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        measured = measure_elf(binary)
        times.append(time.perf_counter() - start)
    print(f"{'measure_elf':24} {Path(binary).stat().st_size / 1e6:6.0f} {min(times):7.2f}"
          f"{'':8}  {measured.mrenclave[:16]} ({measured.measured_pages} measured pages)")


def run_child(code: str, *args: str, timeout: float) -> dict | None:
    try:
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_cp(source: Path, target: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(["cp", source, target], check=True)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "peak_rss_mb": max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="/usr/bin/node")
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--lief-timeout", type=float, default=120)
    parser.add_argument("--skip-lief", action="store_true")
    parser.add_argument("--pack-only", action="store_true", help="time pack and measure_elf only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = Path(tmp)
        if args.pack_only:
            bench_pack(work, args.binary)
            return
        archive = work / "app.efs"
        start = time.perf_counter()
        make_archive(archive, args.size_mb)
        pack_seconds = time.perf_counter() - start
        archive_mb = archive.stat().st_size / 1e6
        print(f"archive: {archive_mb:.1f} MB packed in {pack_seconds:.2f} s; binary: {args.binary} "
              f"({Path(args.binary).stat().st_size / 1e6:.1f} MB)")

        # baseline: copy the same number of bytes (binary + archive concatenated)
        concatenated = work / "concat"
        with open(concatenated, "wb") as out:
            for part in (args.binary, archive):
                with open(part, "rb") as src:
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
        rows = [("cp (same bytes)", time_cp(concatenated, work / "copy"))]
        concatenated.unlink()
        (work / "copy").unlink()

        ours = [run_child(CHILD_INJECT, args.binary, str(archive), str(work / f"out{i}"), timeout=120) for i in (1, 2)]
        rows.append(("embedfs inject (incl. import)", ours[0]))
        identical = sha256_file(work / "out1") == sha256_file(work / "out2")
        runs = subprocess.run([work / "out1", "-e", "console.log('ok')"], capture_output=True, text=True)
        (work / "out2").unlink()
        (work / "out1").unlink()

        if not args.skip_lief:
            lief_result = run_child(CHILD_LIEF, args.binary, str(archive), str(work / "lief_out"),
                                    timeout=args.lief_timeout)
            rows.append(("LIEF writer (add segment)", lief_result or {"error": f"no result within {args.lief_timeout:.0f} s"}))

        print(f"{'method':32} {'seconds':>8} {'peak RSS MB':>12}")
        for name, result in rows:
            if result is None or "error" in result:
                print(f"{name:32} {'-':>8} {'-':>12}  ({(result or {}).get('error', 'failed')})")
            else:
                print(f"{name:32} {result['seconds']:8.2f} {result['peak_rss_mb']:12.0f}")
        still_runs = runs.returncode == 0 and runs.stdout.strip() == "ok"
        print(f"deterministic: {identical}; injected binary runs: {still_runs}")
        target_ok = ours[0] and "seconds" in ours[0] and ours[0]["seconds"] < 1.5 and ours[0]["peak_rss_mb"] < 600
        print(f"target (< 1.5 s, < 600 MB): {'met' if target_ok else 'NOT met'}")


if __name__ == "__main__":
    main()
