"""Throughput of `fspf addf` next to the raw AES-GCM and SHA-256 limits measured in the same run.

    python bench/bench_fspf.py [--size-mb 1024] [--files 64] [--dir /dev/shm]

Writes SIZE of random data as FILES files, then times addf into an authenticated region, addf
into an encrypted region (ciphertext written as new files beside it), and the encrypted build
streamed to /dev/null (how the pipeline uses it: ciphertext goes straight into a layer tar).
Prints MB/s for each next to the single-core AES-256-GCM (64 KiB chunks) and SHA-256 figures
and the speed of merely copying the data into new files (the file-system write limit).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sconify.fspf import DEFAULT_CHUNK_SIZE, Fspf


def raw_aes_gcm(total: int, chunk: int = DEFAULT_CHUNK_SIZE) -> float:
    """Single-core AES-256-GCM encryption MB/s over in-memory chunks."""
    aead, data, nonce = AESGCM(os.urandom(32)), os.urandom(chunk), os.urandom(12)
    start = time.perf_counter()
    for _ in range(total // chunk):
        aead.encrypt(nonce, data, b"")
    return total / (time.perf_counter() - start) / 1e6


def raw_sha256(total: int, chunk: int = DEFAULT_CHUNK_SIZE) -> float:
    """Single-core SHA-256 MB/s over in-memory chunks."""
    data, digest = os.urandom(chunk), hashlib.sha256()
    start = time.perf_counter()
    for _ in range(total // chunk):
        digest.update(data)
    return total / (time.perf_counter() - start) / 1e6


def make_data(directory: Path, size: int, files: int) -> None:
    directory.mkdir(parents=True)
    block = os.urandom(1 << 20)
    per_file = size // files
    for index in range(files):
        with open(directory / f"file-{index:04d}.bin", "wb") as handle:
            for _ in range(per_file >> 20):
                handle.write(block)
            handle.write(block[: per_file & ((1 << 20) - 1)])


def time_addf(src: Path, protection: str, out: Path | None) -> float:
    fspf = Fspf.create()
    fspf.add_region("/")
    fspf.add_region("/data", protection=protection)
    start = time.perf_counter()
    result = fspf.add_directory("/data", src, out)
    elapsed = time.perf_counter() - start
    return result.bytes / elapsed / 1e6


def raw_copy(src: Path, out: Path) -> float:
    """MB/s of copying every file into a new file with 64 KiB writes: the write limit."""
    out.mkdir()
    total = 0
    start = time.perf_counter()
    for source in sorted(src.iterdir()):
        with open(source, "rb") as reader, open(out / source.name, "wb") as writer:
            while block := reader.read(DEFAULT_CHUNK_SIZE):
                writer.write(block)
                total += len(block)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return total / elapsed / 1e6


def time_stream(src: Path) -> float:
    """MB/s of protect_file for every file of an encrypted region, ciphertext to /dev/null."""
    fspf = Fspf.create()
    fspf.add_region("/", protection="encrypted")
    total = 0
    start = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        for source in sorted(src.iterdir()):
            with open(source, "rb") as reader:
                size = os.fstat(reader.fileno()).st_size
                fspf.protect_file(f"/{source.name}", reader, size, sink)
                total += size
    return total / (time.perf_counter() - start) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="bench-fspf-", dir=args.dir))
    try:
        make_data(work / "src", size, args.files)
        sample = min(size, 512 << 20)
        aes, sha = raw_aes_gcm(sample), raw_sha256(sample)
        copy = raw_copy(work / "src", work / "copy")
        authenticated = time_addf(work / "src", "authenticated", None)
        streamed = time_stream(work / "src")
        encrypted = time_addf(work / "src", "encrypted", work / "out")
        aes_after, sha_after = raw_aes_gcm(sample), raw_sha256(sample)
        aes, sha = max(aes, aes_after), max(sha, sha_after)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"data: {args.size_mb} MiB in {args.files} files under {args.dir or tempfile.gettempdir()}, chunk {DEFAULT_CHUNK_SIZE} B, {os.cpu_count()} cores")
    print(f"raw single-core AES-256-GCM: {aes:6.0f} MB/s   SHA-256: {sha:6.0f} MB/s   copy to new files: {copy:6.0f} MB/s")
    rows = (
        ("addf authenticated", authenticated),
        ("encrypted, streamed", streamed),
        ("addf encrypted", encrypted),
    )
    for name, rate in rows:
        print(f"{name:20s} {rate:6.0f} MB/s = {rate / aes:4.0%} of AES-GCM, {rate / sha:4.0%} of SHA-256, {rate / copy:4.0%} of copy")


if __name__ == "__main__":
    main()
