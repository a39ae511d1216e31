"""OCI image layouts: reading a layout from a directory or a tar, writing one to a directory."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from sconify.atomic import atomic_file, fsync_path
from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.model import (
    BeforeCommit,
    BlobOpener,
    Image,
    Layer,
    WriteResult,
    canonical_json,
    make_image,
    parse_json_object,
    slice_opener,
)
from sconify.image.reference import DEFAULT_PLATFORM, parse_platform
from sconify.image.tarbounds import BoundedTarInfo, HostileHeader

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
MAX_JSON_SIZE = 16 << 20  # manifests, indexes and configs are small; refuse giant ones
MAX_INDEX_DEPTH = 4


class BlobStore(Protocol):
    """Where a layout's files live: a directory or the members of a tar."""

    def file_size(self, name: str) -> int | None: ...

    def file_opener(self, name: str) -> BlobOpener: ...


def blob_name(digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    return f"blobs/{algorithm}/{hexdigest}"


class DirectoryStore:
    """Layout files in a directory; symlinks and non-regular files are not followed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file_size(self, name: str) -> int | None:
        try:
            st = os.lstat(self.root / name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not os.path.isfile(self.root / name) or os.path.islink(self.root / name):
            raise ImageError(f"{self.root / name} is not a regular file; re-create the layout")
        return st.st_size

    def file_opener(self, name: str) -> BlobOpener:
        size = self.file_size(name)
        if size is None:
            raise ImageError(f"{self.root / name} is missing; re-create the layout")
        return slice_opener(self.root / name, 0, size)


def read_json_file(store: BlobStore, name: str, what: str, digest: str | None = None,
                   size: int | None = None) -> tuple[bytes, dict]:
    """Read a small JSON file of the layout, checking digest and size when given."""
    actual_size = store.file_size(name)
    if actual_size is None:
        raise ImageError(f"{what} ({name}) is missing; the image is incomplete, re-create or re-pull it")
    if size is not None and actual_size != size:
        raise ImageError(
            f"{what} ({name}) has {actual_size} bytes, expected {size}; "
            "the blob is truncated or wrong, re-create or re-pull the image"
        )
    if actual_size > MAX_JSON_SIZE:
        raise ImageError(f"{what} ({name}) is {actual_size} bytes, larger than {MAX_JSON_SIZE}; refusing it")
    with store.file_opener(name)() as handle:
        data = handle.read()
    if digest is not None:
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise ImageError(
                f"{what} has digest {actual}, expected {digest}; the image is corrupt, re-create or re-pull it"
            )
    return data, parse_json_object(data, f"{what} ({name})")


def read_layout(store: BlobStore, tag: str | None, platform: str | None, source: str) -> Image:
    """Read the image named by ``tag`` (or the only one) from an OCI layout."""
    _, layout = read_json_file(store, LAYOUT_FILE, f"{source}: oci-layout file")
    if layout.get("imageLayoutVersion") != LAYOUT_VERSION:
        raise ImageError(
            f"{source}: unsupported imageLayoutVersion {layout.get('imageLayoutVersion')!r}; "
            f"only {LAYOUT_VERSION} is supported"
        )
    _, index = read_json_file(store, "index.json", f"{source}: index.json")
    descriptor = select_from_index(index, tag, platform, source)
    for _ in range(MAX_INDEX_DEPTH):
        media_type = descriptor.get("mediaType")
        if media_type in MANIFEST_TYPES:
            return read_manifest(store, descriptor, source)
        if media_type not in INDEX_TYPES:
            raise ImageError(
                f"{source}: unknown manifest media type {media_type!r}; "
                "only OCI and Docker schema 2 manifests and indexes are supported"
            )
        _, nested = read_json_file(store, *descriptor_blob(descriptor, f"{source}: image index"))
        descriptor = select_platform(nested, platform or DEFAULT_PLATFORM, source)
    raise ImageError(f"{source}: image indexes nested deeper than {MAX_INDEX_DEPTH}; refusing it")


def descriptor_blob(descriptor: dict, what: str) -> tuple[str, str, str, int]:
    """(blob name, what, digest, size) of a descriptor, validated."""
    digest = L.check_digest(descriptor.get("digest"), what)
    size = descriptor.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"{what} descriptor has no valid size; re-create the image")
    return blob_name(digest), what, digest, size


def _manifests(index: dict, source: str) -> list[dict]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
        raise ImageError(f"{source}: index has no valid 'manifests' list; re-create the image")
    return manifests


def select_from_index(index: dict, tag: str | None, platform: str | None, source: str) -> dict:
    """Pick the descriptor named ``tag``, or the only one / the asked platform when untagged."""
    manifests = _manifests(index, source)
    tags = sorted({str(m.get("annotations", {}).get(REF_NAME)) for m in manifests
                   if isinstance(m.get("annotations"), dict) and REF_NAME in m["annotations"]})
    if tag is not None:
        named = [m for m in manifests
                 if isinstance(m.get("annotations"), dict) and m["annotations"].get(REF_NAME) == tag]
        if not named:
            raise ImageError(
                f"{source}: no image tagged {tag!r} (tags: {', '.join(tags) or 'none'}); "
                "use one of those tags"
            )
        if len(named) > 1:
            return select_platform({"manifests": named}, platform or DEFAULT_PLATFORM, source)
        return named[0]
    if len(manifests) == 1:
        return manifests[0]
    if not manifests:
        raise ImageError(f"{source}: the layout holds no image; write one into it first")
    if all(isinstance(m.get("platform"), dict) for m in manifests):
        return select_platform(index, platform or DEFAULT_PLATFORM, source)
    raise ImageError(
        f"{source}: the layout holds {len(manifests)} images; add a tag to the reference "
        f"(tags: {', '.join(tags) or 'none'})"
    )


def select_platform(index: dict, platform: str, source: str) -> dict:
    """The manifest descriptor for ``os/arch[/variant]`` in a multi-platform index."""
    want_os, want_arch, want_variant = parse_platform(platform)
    available = []
    for descriptor in _manifests(index, source):
        plat = descriptor.get("platform")
        if not isinstance(plat, dict):
            continue
        name = "/".join(str(p) for p in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if p)
        available.append(name)
        if plat.get("os") == want_os and plat.get("architecture") == want_arch and (
            want_variant is None or plat.get("variant") == want_variant
        ):
            return descriptor
    raise ImageError(
        f"{source}: no image for platform {platform} (available: {', '.join(available) or 'none'}); "
        "pass --platform with one of those"
    )


def manifest_parts(manifest: dict, source: str, fix: str) -> tuple[dict, list]:
    """The config descriptor and the layer descriptors of an image manifest (schema 2, an
    image config), or a one-line ImageError ending in ``fix``. Any transport's reader uses it."""
    if manifest.get("schemaVersion") != 2:
        raise ImageError(f"{source}: manifest schemaVersion is not 2; only schema 2 manifests are supported")
    config_desc = manifest.get("config")
    layer_descs = manifest.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layer_descs, list):
        raise ImageError(f"{source}: manifest lacks 'config' or 'layers'; {fix}")
    if config_desc.get("mediaType") not in CONFIG_TYPES:
        raise ImageError(
            f"{source}: unknown config media type {config_desc.get('mediaType')!r}; "
            "only OCI and Docker image configs are supported (is this an artifact rather than an image?)"
        )
    return config_desc, layer_descs


def read_manifest(store: BlobStore, descriptor: dict, source: str) -> Image:
    """Read a manifest, its config and its layer descriptors (blob existence and sizes checked)."""
    _, manifest = read_json_file(store, *descriptor_blob(descriptor, f"{source}: manifest"))
    config_desc, layer_descs = manifest_parts(manifest, source, "re-create the image")
    config_bytes, _ = read_json_file(store, *descriptor_blob(config_desc, f"{source}: config"))
    layers = []
    for position, desc in enumerate(layer_descs):
        if not isinstance(desc, dict):
            raise ImageError(f"{source}: layer descriptor {position} is not an object; re-create the image")
        what = f"{source}: layer {position}"
        name, _, digest, size = descriptor_blob(desc, what)
        media_type = str(desc.get("mediaType"))
        compression = L.compression_for_media_type(media_type, what)
        actual = store.file_size(name)
        if actual is None:
            raise ImageError(f"{what} blob {digest} is missing; the image is incomplete, re-create or re-pull it")
        if actual != size:
            raise ImageError(
                f"{what} blob {digest} has {actual} bytes, expected {size}; "
                "the blob is truncated or wrong, re-create or re-pull the image"
            )
        layers.append(Layer(digest, size, "", compression, media_type, store.file_opener(name), what))
    return replace(make_image(config_bytes, layers, source), manifest_digest=descriptor["digest"])


def read_oci_dir(path: str, tag: str | None, platform: str | None) -> Image:
    root = Path(path)
    source = f"oci:{path}"
    if not root.is_dir():
        raise ImageError(f"{source}: no such directory; check the path of the OCI layout")
    return read_layout(DirectoryStore(root), tag, platform, source)


# --- writing -----------------------------------------------------------------------------


def schema2_manifest(image: Image, media_type: str, config_media_type: str,
                     layer_media_types: dict[str, str]) -> bytes:
    """A schema 2 manifest (OCI or Docker flavour) of an image whose layers are final."""
    return canonical_json({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_media_type, "digest": image.config_digest, "size": len(image.config_bytes)},
        "layers": [
            {"mediaType": layer_media_types[layer.compression], "digest": layer.digest, "size": layer.size}
            for layer in image.layers
        ],
    })


def oci_manifest(image: Image) -> bytes:
    """The OCI manifest of an image whose layers are final, as canonical JSON."""
    return schema2_manifest(image, OCI_MANIFEST, OCI_CONFIG, L.OCI_LAYER_MEDIA_TYPES)


def manifest_descriptor(manifest: bytes, tag: str | None) -> dict:
    descriptor: dict = {
        "mediaType": OCI_MANIFEST,
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest),
    }
    if tag:
        descriptor["annotations"] = {REF_NAME: tag}
    return descriptor


def layout_members(image: Image, tag: str | None, index: dict | None = None) -> tuple[bytes, bytes, dict]:
    """(manifest bytes, index.json bytes, manifest descriptor) for writing ``image``."""
    manifest = oci_manifest(image)
    descriptor = manifest_descriptor(manifest, tag)
    kept = []
    if index is not None:
        for entry in _manifests(index, "existing index.json"):
            annotations = entry.get("annotations") if isinstance(entry.get("annotations"), dict) else {}
            if tag and annotations.get(REF_NAME) == tag:
                continue  # the tag moves to the new image, like skopeo
            kept.append(entry)
    new_index = dict(index or {"schemaVersion": 2, "mediaType": OCI_INDEX})
    new_index["manifests"] = kept + [descriptor]
    return manifest, canonical_json(new_index), descriptor


def write_result(reference: str, image: Image, descriptor: dict) -> WriteResult:
    return WriteResult(
        reference=reference,
        manifest_digest=descriptor["digest"],
        config_digest=image.config_digest,
        layer_digests=tuple(layer.digest for layer in image.layers),
        manifest_media_type=descriptor["mediaType"],
    )


def write_blobs(blob_dir: Path, image: Image, manifest: bytes, created: list[Path]) -> None:
    """Write config, layers and manifest blobs that are not there yet, appending each new path
    to ``created`` (so a caller can take them back on failure)."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[str, bytes | Layer]] = [
        ("sha256:" + hashlib.sha256(manifest).hexdigest(), manifest),
        (image.config_digest, image.config_bytes),
    ]
    pending += [(layer.digest, layer) for layer in image.layers]
    for digest, item in pending:
        path = blob_dir / digest.partition(":")[2]
        if path.exists():
            continue
        if isinstance(item, Layer) and item.trusted and link_private_blob(item, path):
            created.append(path)
            continue
        with atomic_file(path, direct=isinstance(item, Layer)) as handle:  # a layer: past the page cache
            if isinstance(item, bytes):
                handle.write(item)
            else:
                item.copy_blob(handle)  # kernel-side for trusted file-backed layers
        created.append(path)


def link_private_blob(layer: Layer, path: Path) -> bool:
    """Hard-link the temp blob sconify wrote for ``layer`` (a new layer) to ``path``, atomically;
    False where that cannot be done (another filesystem, not a whole private file), so the caller
    copies. Input blobs are never linked: a later change of the input would change the output."""
    blob = layer.file_range
    if blob is None or not blob.private or blob.offset != 0 or os.path.getsize(blob.path) != blob.size:
        return False
    temporary = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        os.link(blob.path, temporary)
    except OSError:
        return False
    try:
        os.chmod(temporary, 0o644)  # as atomic_file leaves blobs (the temp blob is 0600)
        fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return True


def write_oci_dir(image: Image, path: str, tag: str | None, before_commit: BeforeCommit | None = None) -> WriteResult:
    """Write ``image`` into the layout at ``path`` (created, or extended with a new/moved tag).

    An existing layout keeps its other tags; on failure its index.json is unchanged and the
    blobs this write added are removed again. A new layout is built in a staging directory
    beside it and renamed into place whole. ``before_commit`` runs before that last step."""
    root = Path(path)
    reference = f"oci:{path}" + (f":{tag}" if tag else "")
    if root.exists() and not root.is_dir():
        raise ImageError(f"{reference}: {path} exists and is not a directory; choose another path")
    if root.is_dir() and any(root.iterdir()):
        store = DirectoryStore(root)
        if store.file_size(LAYOUT_FILE) is None:
            raise ImageError(f"{reference}: {path} is a non-empty directory but not an OCI layout; choose an empty or new directory")
        _, index = read_json_file(store, "index.json", f"{reference}: index.json")
        manifest, index_bytes, descriptor = layout_members(image, tag, index)
        created: list[Path] = []
        try:
            write_blobs(root / "blobs" / "sha256", image, manifest, created)
            with atomic_file(root / "index.json") as handle:
                handle.write(index_bytes)
                if before_commit is not None:
                    before_commit(write_result(reference, image, descriptor))
        except BaseException:
            for blob in created:
                with contextlib.suppress(FileNotFoundError):
                    blob.unlink()
            raise
        return write_result(reference, image, descriptor)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        manifest, index_bytes, descriptor = layout_members(image, tag)
        write_blobs(staging / "blobs" / "sha256", image, manifest, [])
        (staging / LAYOUT_FILE).write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        (staging / "index.json").write_bytes(index_bytes)
        os.chmod(staging, 0o755)
        fsync_path(staging / "index.json")
        if before_commit is not None:
            before_commit(write_result(reference, image, descriptor))
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return write_result(reference, image, descriptor)


def layout_files(image: Image, tag: str | None) -> Iterable[tuple[str, bytes | Layer]]:
    """Every file of a fresh single-image layout, in a fixed order (for archive writers)."""
    manifest, index_bytes, _ = layout_members(image, tag)
    yield LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
    yield "index.json", index_bytes
    seen = set()
    for layer in image.layers:
        if layer.digest not in seen:
            seen.add(layer.digest)
            yield blob_name(layer.digest), layer
    yield blob_name(image.config_digest), image.config_bytes
    yield blob_name("sha256:" + hashlib.sha256(manifest).hexdigest()), manifest


class TarStore:
    """Layout files inside an uncompressed tar archive, read in place (never extracted)."""

    MAX_MEMBERS = 100_000

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.members: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(path, "r:", tarinfo=BoundedTarInfo) as archive:
                for count, member in enumerate(archive):
                    if count >= self.MAX_MEMBERS:
                        raise ImageError(f"{source}: more than {self.MAX_MEMBERS} archive members; refusing it")
                    if member.isreg():
                        name = _normal_member_name(member.name)
                        self.members[name] = (member.offset_data, member.size)
        except HostileHeader as exc:
            raise ImageError(f"{source}: {exc}") from None
        except (tarfile.TarError, EOFError) as exc:
            raise ImageError(f"{source}: not a readable tar archive ({exc}); check the file") from None
        except IsADirectoryError:
            raise ImageError(f"{source}: is a directory, not an archive; use oci:{path} for a layout directory") from None
        except FileNotFoundError:
            raise ImageError(f"{source}: no such file; check the path") from None
        end = path.stat().st_size
        for name, (offset, size) in self.members.items():
            if offset + size > end:
                raise ImageError(f"{source}: archive member {name} is truncated; re-create the archive")

    def file_size(self, name: str) -> int | None:
        entry = self.members.get(name)
        return None if entry is None else entry[1]

    def file_opener(self, name: str) -> BlobOpener:
        offset, size = self.members[name]
        return slice_opener(self.path, offset, size)


def _normal_member_name(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)
