"""Baseline "bare pass": decompress, re-tar and recompress every layer of an OCI layout, in Python.

The least any Python converter that rewrites layers must do: no rootfs view, no selection, no
crypto. Each layer is streamed (gzip or zstd in, ``tarfile`` re-tar, zstd level 3 on two threads
out, as sconify compresses), never held in memory.

    python bench/repack.py LAYOUT OUT_DIR
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import open_layer, read_json_blob  # noqa: E402


def repack_layer(layout: Path, layer: dict, out: Path) -> int:
    """Re-tar one layer into ``out`` (zstd); returns the member count."""
    count = 0
    compressor = zstandard.ZstdCompressor(level=3, threads=2, write_checksum=True)
    with open_layer(layout, layer) as source, tarfile.open(fileobj=source, mode="r|") as reader, \
            out.open("wb") as blob, compressor.stream_writer(blob, closefd=False) as sink, \
            tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as writer:
        for member in reader:
            writer.addfile(member, reader.extractfile(member) if member.isreg() else None)
            count += 1
    return count


def main() -> None:
    layout, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    index = json.loads((layout / "index.json").read_text())
    manifest = read_json_blob(layout, index["manifests"][0]["digest"])
    for number, layer in enumerate(manifest["layers"]):
        repack_layer(layout, layer, out_dir / f"layer{number}.tar.zst")


if __name__ == "__main__":
    main()
