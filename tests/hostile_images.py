"""Crafted hostile images for tests/test_hostile.py: layer tars built at the byte level where
tarfile cannot (GNU sparse headers, decompression bombs, a million headers), and OCI layouts
written by hand so nothing of ours cleans them up on the way in.

Every builder returns bytes or writes files; none of them extracts anything.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
BLOCK = 512
GiB = 1 << 30


@dataclass(frozen=True)
class LayerBlob:
    """A stored layer: its bytes, their compression and the diff_id the config will claim."""

    data: bytes
    compression: str
    diff_id: str


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- tar members ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One tar member as a test writes it."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | chr | blk | fifo
    data: bytes = b""
    linkname: str = ""
    mode: int | None = None


TAR_TYPES = {
    "file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE,
}


def tar_of(members: Iterable[Member], encoding: str = "utf-8") -> bytes:
    """A PAX tar of ``members`` in the order given (names may be non-UTF-8 via surrogates)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding=encoding,
                      errors="surrogateescape") as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = TAR_TYPES[member.kind]
            info.mode = member.mode if member.mode is not None else (0o755 if member.kind == "dir" else 0o644)
            info.linkname = member.linkname
            info.size = len(member.data) if member.kind == "file" else 0
            if member.kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            tar.addfile(info, io.BytesIO(member.data) if member.kind == "file" else None)
    return out.getvalue()


def ustar_header(name: str, size: int, typeflag: bytes = tarfile.REGTYPE) -> bytearray:
    """A 512-byte ustar header (checksum still to be set by ``seal``)."""
    info = tarfile.TarInfo(name)
    info.size = 0
    info.type = typeflag
    info.mode = 0o644
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT)[:BLOCK])
    header[124:136] = number_field(size, 12)
    return header


def number_field(value: int, width: int) -> bytes:
    """A tar number field: octal when it fits, else GNU base-256 (high bit set)."""
    if value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def seal(header: bytearray) -> bytes:
    """Set a header's checksum (computed with the checksum field as spaces)."""
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def gnu_sparse_tar(name: str, real_size: int, data: bytes = b"x" * BLOCK) -> bytes:
    """A GNU (old format, type 'S') sparse member: ``real_size`` bytes, one stored data block."""
    header = ustar_header(name, len(data), tarfile.GNUTYPE_SPARSE)
    header[257:265] = b"ustar  \x00"
    # sparse map at 386: (offset, numbytes) pairs of 12-byte numbers; the data sits at the end
    header[386:398] = number_field(real_size - len(data), 12)
    header[398:410] = number_field(len(data), 12)
    header[482] = 0  # no extension headers
    header[483:495] = number_field(real_size, 12)
    padded = data + b"\0" * (-len(data) % BLOCK)
    return seal(header) + padded + b"\0" * (2 * BLOCK)


def pax_sparse_tar(name: str, real_size: int, data: bytes = b"x" * BLOCK) -> bytes:
    """A PAX 1.0 sparse member (as GNU tar --sparse --format=posix writes it)."""
    sparse_map = f"1\n{real_size - len(data)}\n{len(data)}\n".encode()
    sparse_map += b"\0" * (-len(sparse_map) % BLOCK)
    content = sparse_map + data
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
        info.size = len(content)
        info.pax_headers = {
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(real_size),
        }
        tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def oversized_pax_header_tar(size: int) -> bytes:
    """A PAX extended header of ``size`` bytes (one long comment record) before a small file."""
    rest = b"comment=" + b"a" * size + b"\n"
    length = len(rest) + 2
    while length != len(str(length)) + 1 + len(rest):
        length = len(str(length)) + 1 + len(rest)
    record = b"%d " % length + rest
    header = ustar_header("././@PaxHeader", len(record), tarfile.XHDTYPE)
    padded = record + b"\0" * (-len(record) % BLOCK)
    return seal(header) + padded + tar_of([Member("etc/after-pax", data=b"1")])


# --- compression ----------------------------------------------------------------------------


def compress(data: bytes, compression: str) -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    return zstandard.ZstdCompressor(level=3).compress(data)


def layer_blob(tar: bytes, compression: str = "gzip") -> LayerBlob:
    return LayerBlob(compress(tar, compression), compression, sha256(tar))


def bomb_layer(compression: str, real_size: int = 10 * GiB, piece: int = 64 << 20) -> LayerBlob:
    """A tar holding one ``real_size``-byte file of zeros, compressed as concatenated gzip members
    or zstd frames of ``piece`` zeros each (10 GiB: about 10 MB gzip, under 1 MB zstd).

    The diff_id is made up: the real one would need hashing 10 GiB, and a reader must stop long
    before it could check it.
    """
    assert real_size % piece == 0
    head = seal(ustar_header("var/lib/zeros", real_size))
    zeros = compress(b"\0" * piece, compression) if compression == "zstd" else gzip.compress(
        b"\0" * piece, compresslevel=9, mtime=0)
    data = compress(head, compression) + zeros * (real_size // piece) + compress(b"\0" * 2 * BLOCK, compression)
    return LayerBlob(data, compression, sha256(b"not the real diff_id"))


def many_entries_layer(count: int) -> LayerBlob:
    """A zstd tar of ``count`` empty files under ``many/``, generated header by header
    (about 1.5 s per million; the tar itself is never held whole in memory)."""
    template = ustar_header("many/f0000000", 0)
    template[148:156] = b" " * 8
    base_sum = sum(template) - sum(template[:13])
    tar_hash = hashlib.sha256()
    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as writer:

        def write(chunk: bytes) -> None:
            tar_hash.update(chunk)
            writer.write(chunk)

        write(seal(ustar_header("many/", 0, tarfile.DIRTYPE)))
        for chunk in _empty_file_headers(template, base_sum, count):
            write(chunk)
        write(b"\0" * 2 * BLOCK)
    return LayerBlob(out.getvalue(), "zstd", "sha256:" + tar_hash.hexdigest())


def _empty_file_headers(template: bytearray, base_sum: int, count: int) -> Iterator[bytes]:
    batch = []
    for number in range(count):
        name = b"many/f%07d" % number
        header = bytearray(template)
        header[:13] = name
        header[148:156] = b"%06o\x00 " % (base_sum + sum(name))
        batch.append(header)
        if len(batch) == 10_000:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch)


# --- OCI layouts ----------------------------------------------------------------------------


def put_blob(layout: Path, data: bytes) -> dict:
    """Store ``data`` as a blob; return its digest and size."""
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.partition(":")[2]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": digest, "size": len(data)}


def write_layout(
    layout: Path,
    layers: list[LayerBlob],
    base: Path | None = None,
    config: dict | None = None,
    platform: dict | None = None,
    tag: str = "latest",
) -> Path:
    """An OCI layout with ``layers`` on top of the layers of the layout ``base`` (tag latest).

    ``platform`` set: index.json points at an image index holding that one platform.
    """
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    base_descriptors, base_config = [], {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    if base is not None:
        base_manifest, base_config = read_base(base)
        base_descriptors = base_manifest["layers"]
        for descriptor in base_descriptors:
            target = layout / "blobs" / "sha256" / descriptor["digest"].partition(":")[2]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(base / "blobs" / "sha256" / descriptor["digest"].partition(":")[2], target)
    config = dict(config or base_config)
    config["rootfs"] = {"type": "layers",
                        "diff_ids": [*base_config["rootfs"]["diff_ids"], *(layer.diff_id for layer in layers)]}
    descriptors = [*base_descriptors]
    for layer in layers:
        descriptors.append({"mediaType": LAYER_MEDIA_TYPES[layer.compression], **put_blob(layout, layer.data)})
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **put_blob(layout, json.dumps(config).encode())},
        "layers": descriptors,
    }
    descriptor = {"mediaType": OCI_MANIFEST, **put_blob(layout, json.dumps(manifest).encode())}
    if platform is not None:
        nested = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [{**descriptor, "platform": platform}]}
        descriptor = {"mediaType": OCI_INDEX, **put_blob(layout, json.dumps(nested).encode())}
    descriptor["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def read_base(layout: Path) -> tuple[dict, dict]:
    """(manifest, config) of the only image in a layout written by sconify."""
    index = json.loads((layout / "index.json").read_bytes())
    manifest = json.loads(blob_path(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(blob_path(layout, manifest["config"]["digest"]).read_bytes())
    return manifest, config


def blob_path(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.partition(":")[2]


def manifest_of(layout: Path) -> dict:
    return read_base(layout)[0]


# --- archives -------------------------------------------------------------------------------


def archive_of(path: Path, files: Iterable[tuple[str, bytes]], head: bytes = b"", extra: Iterable[Member] = ()) -> Path:
    """A tar file of (name, bytes) members and ``extra`` members, after raw bytes ``head``."""
    body = tar_of([*(Member(name, data=data) for name, data in files), *extra])
    path.write_bytes(head + body)
    return path


def layout_files(layout: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of a layout, for packing it into an oci-archive."""
    return [(str(p.relative_to(layout)), p.read_bytes()) for p in sorted(layout.rglob("*")) if p.is_file()]


def docker_archive(path: Path, layer_names: list[str], members: Iterable[tuple[str, bytes]] = ()) -> Path:
    """A ``docker save``-style archive whose manifest.json lists ``layer_names`` as given."""
    config = {"architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": [sha256(b"layer")] * len(layer_names)}}
    manifest = [{"Config": "config.json", "RepoTags": ["hostile:latest"], "Layers": layer_names}]
    return archive_of(path, [("config.json", json.dumps(config).encode()),
                             ("manifest.json", json.dumps(manifest).encode()), *members])
