"""Synthetic app image for the benchmarks: the Python demo image plus one large app layer.

The app layer holds ``size`` bytes over about 50,000 files per GB, mixed like a real service:

* code: ``/app/synth/pkgNNN/modNNNNN.py``: 70 % of the files, 25 % of the bytes, text that
  compresses about as well as Python sources (embedded by the python recipe);
* data: ``/app/data/synth/NNN/recNNNNN.bin``: 10 % of the files, 50 % of the bytes,
  incompressible (encrypted into the fspf with ``--dir /app/data``);
* assets: ``/app/static/NNN/assetNNNNN.json``: 20 % of the files, 25 % of the bytes,
  half-compressible (left as they are).

Content is deterministic (seeded pools sliced per file) and streamed straight from ``tarfile``
through the compressor into the blob: no file per entry on disk, nothing buffered per layer.

    python bench/synth.py --size-gb 1 [--compression gzip|zstd] [--cache DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import zstandard

GENERATOR_VERSION = 1
FILES_PER_GB = 50_000
POOL_SIZE = 48 << 20
TEXT_POOL_SIZE = 8 << 20  # repeated 6x: further apart than any compressor window
EPOCH = 1_700_000_000
WORDS = (
    "def return self import from class if else elif for in while with as try except raise yield "
    "lambda None True False and or not is pass break continue async await global assert request "
    "response handler config value items result data path name index count logger session user "
    "record payload status error message cache buffer stream offset length timeout retry"
).split()


@dataclass(frozen=True)
class Share:
    """One kind of file in the app layer: its fraction of the files and of the bytes."""

    kind: str
    files: float
    bytes: float


SHARES = (Share("code", 0.70, 0.25), Share("data", 0.10, 0.50), Share("asset", 0.20, 0.25))


@dataclass(frozen=True)
class Member:
    path: str
    size: int
    kind: str
    offset: int  # where its bytes start in the pool of its kind


def cache_dir() -> Path:
    """Where generated inputs live: $SCONIFY_BENCH_CACHE or ~/.cache/sconify/bench."""
    return Path(os.environ.get("SCONIFY_BENCH_CACHE") or Path.home() / ".cache" / "sconify" / "bench")


def text_pool(seed: int) -> bytes:
    """Python-like text: indented lines of words with identifiers, ~4x compressible by zstd."""
    rng = random.Random(seed)
    words = WORDS
    lines = []
    size = 0
    while size < TEXT_POOL_SIZE:
        indent = "    " * rng.randrange(0, 4)
        line = indent + " ".join(rng.choice(words) + (str(rng.randrange(1000)) if rng.random() < 0.3 else "")
                                 for _ in range(rng.randrange(3, 11))) + "\n"
        lines.append(line)
        size += len(line)
    text = "".join(lines).encode()[:TEXT_POOL_SIZE]
    return text * (POOL_SIZE // TEXT_POOL_SIZE)


def binary_pool(seed: int) -> bytes:
    return random.Random(seed).randbytes(POOL_SIZE)


def asset_pool(seed: int) -> bytes:
    """Half-compressible: random bytes as hex, alternating with repeated JSON keys."""
    rng = random.Random(seed)
    parts = []
    size = 0
    while size < POOL_SIZE:
        part = b'{"id": "' + rng.randbytes(48).hex().encode() + b'", "kind": "asset", "tags": ["static"]},\n'
        parts.append(part)
        size += len(part)
    return b"".join(parts)[:POOL_SIZE]


def plan_members(total_bytes: int) -> list[Member]:
    """The app layer's files, sorted by path; sizes vary around each kind's mean."""
    rng = random.Random(total_bytes)
    files = max(len(SHARES), round(FILES_PER_GB * total_bytes / (1 << 30)))
    members: list[Member] = []
    for share in SHARES:
        count = max(1, round(files * share.files))
        budget = int(total_bytes * share.bytes)
        mean = budget // count
        sizes = [max(1, int(mean * rng.uniform(0.25, 1.75))) for _ in range(count)]
        sizes[-1] = max(1, sizes[-1] + budget - sum(sizes))
        for index, size in enumerate(sizes):
            size = min(size, POOL_SIZE)
            if share.kind == "code":
                path = f"app/synth/pkg{index // 200:03d}/mod{index:05d}.py"
            elif share.kind == "data":
                path = f"app/data/synth/{index // 200:03d}/rec{index:05d}.bin"
            else:
                path = f"app/static/{index // 200:03d}/asset{index:05d}.json"
            members.append(Member(path, size, share.kind, rng.randrange(0, POOL_SIZE - size + 1)))
    return sorted(members, key=lambda m: m.path)


def directories(members: list[Member]) -> list[str]:
    found: set[str] = set()
    for member in members:
        parent = os.path.dirname(member.path)
        while parent and parent not in found:
            found.add(parent)
            parent = os.path.dirname(parent)
    return sorted(found)


class HashingWriter(io.RawIOBase):
    """Writes through to ``sink`` while counting bytes and hashing them (SHA-256)."""

    def __init__(self, sink: BinaryIO):
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def write_app_layer(members: list[Member], pools: dict[str, bytes], tar_out: BinaryIO) -> None:
    """Stream the app layer tar (directories, then files in path order) into ``tar_out``."""
    with tarfile.open(fileobj=tar_out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in directories(members):
            if path == "app":
                continue  # the demo image already has /app
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for member in members:
            info = tarfile.TarInfo(member.path)
            info.size, info.mode, info.mtime = member.size, 0o644, EPOCH
            view = memoryview(pools[member.kind])[member.offset: member.offset + member.size]
            tar.addfile(info, io.BytesIO(view))


def compress_layer(members: list[Member], pools: dict[str, bytes], blob: BinaryIO, compression: str) -> tuple[str, str, int]:
    """Write the compressed app layer to ``blob``; returns (digest, diff_id, stored size)."""
    stored = HashingWriter(blob)
    if compression == "zstd":
        compressor = zstandard.ZstdCompressor(level=3, threads=2).stream_writer(stored, closefd=False)
    else:
        compressor = gzip.GzipFile(fileobj=stored, mode="wb", compresslevel=1, mtime=0)
    plain = HashingWriter(compressor)
    buffered = io.BufferedWriter(plain, 1 << 20)
    write_app_layer(members, pools, buffered)
    buffered.flush()
    compressor.close()
    return "sha256:" + stored.digest.hexdigest(), "sha256:" + plain.digest.hexdigest(), stored.size


def read_json_blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())


def write_json_blob(layout: Path, document: dict) -> tuple[str, int]:
    data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def synthetic_image(size_bytes: int, base_layout: Path, compression: str = "gzip", cache: Path | None = None) -> Path:
    """Build (or reuse) the synthetic image of ``size_bytes`` app bytes; returns its OCI layout.

    The layout is tagged ``latest``; it is written under a temporary name and renamed, so a
    cached layout is always complete.
    """
    cache = cache or cache_dir()
    key = hashlib.sha256(f"{GENERATOR_VERSION}:{size_bytes}:{compression}:{base_layout.name}".encode()).hexdigest()[:12]
    layout = cache / f"synth-{size_bytes >> 20}M-{compression}-{key}"
    if (layout / "index.json").is_file():
        return layout
    cache.mkdir(parents=True, exist_ok=True)
    staged = cache / f".{layout.name}.tmp{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    blobs = staged / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    index = json.loads((base_layout / "index.json").read_text())
    manifest = read_json_blob(base_layout, index["manifests"][0]["digest"])
    config = read_json_blob(base_layout, manifest["config"]["digest"])
    for layer in manifest["layers"]:
        name = layer["digest"].split(":", 1)[1]
        source = base_layout / "blobs" / "sha256" / name
        if same_device(base_layout, staged):
            os.link(source, blobs / name)
        else:
            shutil.copyfile(source, blobs / name)
    pools = {"code": text_pool(1), "data": binary_pool(2), "asset": asset_pool(3)}
    members = plan_members(size_bytes)
    temporary = blobs / "app-layer.partial"
    with temporary.open("wb") as blob:
        digest, diff_id, stored = compress_layer(members, pools, blob, compression)
    temporary.rename(blobs / digest.split(":", 1)[1])
    config["rootfs"]["diff_ids"].append(diff_id)
    config.setdefault("history", []).append(
        {"created": "2023-11-14T22:13:20Z", "created_by": f"bench/synth.py: {len(members)} files, {size_bytes} bytes"}
    )
    config_digest, config_size = write_json_blob(staged, config)
    media = "application/vnd.oci.image.layer.v1.tar+" + ("zstd" if compression == "zstd" else "gzip")
    manifest["config"] = {**manifest["config"], "digest": config_digest, "size": config_size}
    manifest["layers"].append({"mediaType": media, "digest": digest, "size": stored})
    manifest_digest, manifest_size = write_json_blob(staged, manifest)
    (staged / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (staged / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    }, sort_keys=True))
    os.rename(staged, layout)
    return layout


def same_device(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def uncompressed_rootfs_bytes(layout: Path) -> int:
    """Sum of regular-file sizes over every layer (the MB/s denominator), read once per layout."""
    cached = layout / "rootfs-bytes"
    if cached.is_file():
        return int(cached.read_text())
    total = 0
    manifest = read_json_blob(layout, json.loads((layout / "index.json").read_text())["manifests"][0]["digest"])
    for layer in manifest["layers"]:
        with open_layer(layout, layer) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            total += sum(member.size for member in tar if member.isreg())
    try:
        cached.write_text(str(total))
    except OSError:
        pass
    return total


def open_layer(layout: Path, layer: dict) -> BinaryIO:
    path = layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]
    raw = path.open("rb")
    if layer["mediaType"].endswith("+zstd"):
        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    if layer["mediaType"].endswith("+gzip") or layer["mediaType"].endswith(".tar.gzip"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def iter_sizes(gigabytes: list[float]) -> Iterator[int]:
    for value in gigabytes:
        yield int(value * (1 << 30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--compression", choices=("gzip", "zstd"), default="gzip")
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    from sconify.demo import debimage

    base = debimage.build_image("python")
    layout = synthetic_image(int(args.size_gb * (1 << 30)), base, args.compression, args.cache)
    print(f"oci:{layout}:latest  ({uncompressed_rootfs_bytes(layout) / 1e6:.0f} MB of rootfs files)")


if __name__ == "__main__":
    main()
