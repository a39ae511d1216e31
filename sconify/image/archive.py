"""Single-file transports: ``oci-archive:`` (an OCI layout in a tar) and ``docker-archive:``
(the ``docker save`` format). Read in place from the tar, written as a deterministic tar."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path
from typing import BinaryIO

from sconify.atomic import atomic_file
from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.model import BeforeCommit, Image, Layer, WriteResult, canonical_json, make_image, parse_json
from sconify.image.oci import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    TarStore,
    layout_files,
    layout_members,
    manifest_descriptor,
    read_layout,
    schema2_manifest,
    write_result,
)

DIR_MODE = 0o755
FILE_MODE = 0o644


def _open_store(path: str, source: str) -> TarStore:
    file = Path(path)
    if not file.exists():
        raise ImageError(f"{source}: no such file; check the path of the archive")
    return TarStore(file, source)


def read_oci_archive(path: str, tag: str | None, platform: str | None) -> Image:
    source = f"oci-archive:{path}"
    return read_layout(_open_store(path, source), tag, platform, source)


def read_docker_archive(path: str, tag: str | None) -> Image:
    """Read the image tagged ``tag`` (or the only one) from a ``docker save`` archive."""
    source = f"docker-archive:{path}"
    store = _open_store(path, source)
    data = _read_member(store, "manifest.json", f"{source}: manifest.json")
    entries = parse_json(data, f"{source}: manifest.json")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ImageError(f"{source}: manifest.json is not a list of images; re-create the archive")
    entry = _select_entry(entries, tag, source)
    config_name = entry.get("Config")
    layer_names = entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageError(f"{source}: manifest.json entry lacks Config or Layers; re-create the archive")
    config_bytes = _read_member(store, _member(config_name), f"{source}: config {config_name}")
    layers = []
    for position, name in enumerate(layer_names):
        what = f"{source}: layer {position} ({name})"
        if not isinstance(name, str) or store.file_size(_member(name)) is None:
            raise ImageError(f"{what} is missing from the archive; re-create the archive")
        opener = store.file_opener(_member(name))
        digest, size, compression = _hash_blob(opener)
        media_type = L.DOCKER_LAYER_MEDIA_TYPES[compression]
        layers.append(Layer(digest, size, "", compression, media_type, opener, what))
    image = make_image(config_bytes, layers, source)
    for layer in image.layers:
        if layer.compression == "none" and layer.digest != layer.diff_id:
            raise ImageError(
                f"{layer.source} has digest {layer.digest} but the config lists diff_id {layer.diff_id}; "
                "the archive is corrupt, re-create it"
            )
    return image


def _member(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _read_member(store: TarStore, name: str, what: str) -> bytes:
    size = store.file_size(name)
    if size is None:
        raise ImageError(f"{what} is missing from the archive; re-create the archive")
    if size > 16 << 20:
        raise ImageError(f"{what} is {size} bytes, too large for JSON metadata; refusing it")
    with store.file_opener(name)() as handle:
        return handle.read()


def _select_entry(entries: list[dict], tag: str | None, source: str) -> dict:
    tags = sorted(t for e in entries for t in (e.get("RepoTags") or []) if isinstance(t, str))
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        raise ImageError(f"{source}: the archive holds {len(entries)} images; add :NAME:TAG (tags: {', '.join(tags)})")
    for entry in entries:
        if tag in (entry.get("RepoTags") or []):
            return entry
    raise ImageError(f"{source}: no image tagged {tag!r} (tags: {', '.join(tags) or 'none'}); use one of those")


def _hash_blob(opener) -> tuple[str, int, str]:
    """(digest, size, compression) of a blob: docker archives record no layer digests."""
    digest = hashlib.sha256()
    size = 0
    with opener() as blob:
        head = blob.read(L.CHUNK_SIZE)
        compression = L.sniff_compression(head)
        chunk = head
        while chunk:
            digest.update(chunk)
            size += len(chunk)
            chunk = blob.read(L.CHUNK_SIZE)
    return "sha256:" + digest.hexdigest(), size, compression


# --- writing -----------------------------------------------------------------------------


def _tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """A member header with every variable field pinned (reproducible archives)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = DIR_MODE if directory else FILE_MODE
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    return info


class TarWriter:
    """A PAX tar written member by member to a stream, the same bytes as ``tarfile`` writes.

    Headers come from ``TarInfo.tobuf`` (``add_header``); the caller then writes the member's
    data (``write``), or hands the stream on and accounts for it (``wrote``), and ``pad``s it.
    A trusted file-backed layer's data is copied kernel-side (``Layer.copy_blob``) instead of
    through ``tarfile``'s 16 KiB Python loop. ``offset`` is the bytes written so far.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.offset = 0

    def write(self, data) -> int:
        self.handle.write(data)
        self.offset += len(data)
        return len(data)

    def wrote(self, count: int) -> None:
        """``count`` bytes went to ``handle`` directly."""
        self.offset += count

    def add_header(self, info: tarfile.TarInfo) -> None:
        self.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def pad(self) -> None:
        """Zeros up to the next 512-byte block, after a member's data."""
        self.write(tarfile.NUL * (-self.offset % tarfile.BLOCKSIZE))

    def add_directory(self, name: str) -> None:
        self.add_header(_tar_info(name, directory=True))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add_header(_tar_info(name, len(data)))
        self.write(data)
        self.pad()

    def add_layer(self, name: str, layer: Layer) -> None:
        self.add_header(_tar_info(name, layer.size))
        layer.copy_blob(self.handle)
        self.wrote(layer.size)
        self.pad()

    def add(self, name: str, item: bytes | Layer | None) -> None:
        """A member: None is a directory, bytes a small file, a Layer its stored blob."""
        if item is None:
            self.add_directory(name)
        elif isinstance(item, bytes):
            self.add_bytes(name, item)
        else:
            self.add_layer(name, item)

    def finish(self) -> None:
        """The end-of-archive marker, padded to a whole record (as ``TarFile.close`` does)."""
        self.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        self.write(tarfile.NUL * (-self.offset % tarfile.RECORDSIZE))


def _write_tar(path: str, members: list[tuple[str, bytes | Layer | None]],
               result: WriteResult | None = None, before_commit: BeforeCommit | None = None) -> WriteResult | None:
    """Write members (None = directory) to ``path`` atomically, as a PAX tar, past the page
    cache (an image archive is written once, then loaded or pushed: sconify.conversion.direct);
    ``before_commit`` gets ``result`` before the archive is renamed into place."""
    with atomic_file(path, direct=True) as handle:
        _write_tar_to(handle, members)
        if before_commit is not None and result is not None:
            before_commit(result)
    return result


def _write_tar_to(handle: BinaryIO, members: list[tuple[str, bytes | Layer | None]]) -> None:
    archive = TarWriter(handle)
    for name, item in members:
        archive.add(name, item)
    archive.finish()


def write_oci_archive(image: Image, path: str, tag: str | None, before_commit: BeforeCommit | None = None
                      ) -> WriteResult:
    """Write a one-image OCI layout as a tar file."""
    reference = f"oci-archive:{path}" + (f":{tag}" if tag else "")
    _check_output_file(path, reference)
    members: list[tuple[str, bytes | Layer | None]] = [("blobs", None), ("blobs/sha256", None)]
    members += list(layout_files(image, tag))
    _, _, descriptor = layout_members(image, tag)
    result = write_result(reference, image, descriptor)
    _write_tar(path, members, result, before_commit)
    return result


def docker_manifest(image: Image) -> bytes:
    """The Docker schema 2 manifest of the image (reported as the digest of docker outputs)."""
    return schema2_manifest(image, DOCKER_MANIFEST, DOCKER_CONFIG, L.DOCKER_LAYER_MEDIA_TYPES)


def docker_archive_members(image: Image, tag: str | None) -> list[tuple[str, bytes | Layer | None]]:
    """The members of a ``docker load``-able archive: layers, config, manifest.json.

    No zstd layers: skopeo refuses them here, and docker load 20.10 fails on them.
    """
    for layer in image.layers:
        if layer.compression == "zstd":
            raise ImageError("docker-archive cannot carry zstd layers; use --compression gzip or none")
    config_name = image.config_digest.partition(":")[2] + ".json"
    layer_names = [layer.digest.partition(":")[2] + ".tar" for layer in image.layers]
    members: list[tuple[str, bytes | Layer | None]] = []
    seen = set()
    for name, layer in zip(layer_names, image.layers):
        if name not in seen:
            seen.add(name)
            members.append((name, layer))
    members.append((config_name, image.config_bytes))
    manifest = [{"Config": config_name, "RepoTags": [tag] if tag else None, "Layers": layer_names}]
    members.append(("manifest.json", canonical_json(manifest)))
    return members


def write_docker_archive(image: Image, path: str, tag: str | None, before_commit: BeforeCommit | None = None
                         ) -> WriteResult:
    """Write a ``docker save``-style archive that ``docker load`` and skopeo accept."""
    reference = f"docker-archive:{path}" + (f":{tag}" if tag else "")
    _check_output_file(path, reference)
    result = docker_result(reference, image)
    _write_tar(path, docker_archive_members(image, tag), result, before_commit)
    return result


def docker_result(reference: str, image: Image) -> WriteResult:
    """The WriteResult of a docker output: its manifest is the Docker schema 2 one."""
    descriptor = manifest_descriptor(docker_manifest(image), None)
    descriptor["mediaType"] = DOCKER_MANIFEST
    return write_result(reference, image, descriptor)


def write_docker_archive_to(image: Image, handle: BinaryIO, tag: str | None) -> None:
    """Stream a docker archive into an open file (used for ``docker load``)."""
    _write_tar_to(handle, docker_archive_members(image, tag))


def _check_output_file(path: str, reference: str) -> None:
    if Path(path).is_dir():
        raise ImageError(f"{reference}: {path} is a directory; give a file path for the archive")
