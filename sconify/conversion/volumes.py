"""Volumes: the protected regions of a conversion, each with an fspf of its own, and the data
layer that holds their files.

A region of kind ``kernel`` that is ``encrypted`` or ``authenticated`` is a *volume*, as in
SCONE: its fspf sits inside it, at ``<region>/.sconify.fspf``, holds that one region and its
files, and is sealed with a fresh key, so a volume keeps working when it is a Docker volume
mounted over the image, and its freshness (the fspf tag) is tracked on its own. Files of a
deeper region belong to that region's volume (longest prefix), not to the enclosing one.
Ephemeral regions and the not-protected '/' have no fspf. Layout: docs/fspf-format.md
("Volumes"), figures: docs/manifest.md.

The data layer is written in one pass: every encrypted file is encrypted from the kept layer
tar straight into the layer, authenticated files are hashed in place, and each volume's sealed
fspf follows its files.
"""

from __future__ import annotations

import collections
import posixpath
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from sconify.fspf import Fspf
from sconify.image.layerwriter import BlobFollower, LayerWriter
from sconify.image.model import Layer
from sconify.image.rootfs import RootFS
from sconify.outputs.manifest import VolumeFigures
from sconify.conversion.newlayers import LayerTar, TarEntry, missing_parents, source_date_epoch
from sconify.conversion.select import absolute, rel
from sconify.conversion.spool import Extent, Spool

FSPF_NAME = ".sconify.fspf"  # a volume's fspf, in the volume's own directory
VOLUME_PROTECTIONS = ("encrypted", "authenticated")


def is_volume(region: dict) -> bool:
    """Whether a region (``{"path", "kind", "protection"}``) has an fspf of its own."""
    return region["kind"] == "kernel" and region["protection"] in VOLUME_PROTECTIONS


def fspf_path_of(region_path: str) -> str:
    """Where the fspf of the volume at ``region_path`` sits (absolute): /app/data/.sconify.fspf,
    /.sconify.fspf for '/'."""
    return posixpath.join(region_path, FSPF_NAME)


@dataclass
class SealedVolume:
    """A volume once its files are protected and its fspf sealed."""

    path: str
    protection: str
    fspf_path: str
    key: bytes = field(repr=False)
    tag: bytes
    files: dict[str, int]  # absolute image path -> plaintext size
    declared: bool = False  # a --generic image's volume: no key, no fspf (key and tag are empty)

    def figures(self) -> VolumeFigures:
        """What the manifest records (never the key)."""
        return VolumeFigures(
            path=self.path,
            fspf_path=self.fspf_path,
            protection=self.protection,
            tag=self.tag.hex(),
            files={path: {"size": size} for path, size in sorted(self.files.items())},
        )


@dataclass
class DataLayer:
    layer: Layer
    volumes: list[SealedVolume]  # in path order


RELEASE_EVERY = 32 << 20  # plaintext bytes read for the last time between two releases


def write_data_layer(
    fs: RootFS,
    volumes: list[dict],
    data_files: dict[str, list[str]],
    spool: Spool,
    extents: dict[str, Extent],
    random,
    work: str,
    compression: str,
    direct: bool = False,
    follow: BlobFollower | None = None,
) -> DataLayer:
    """Protect the files of every volume and write the data layer in one pass: each encrypted
    file is encrypted from the image straight into the layer (no staging of ciphertext),
    authenticated files are hashed in place; each volume's fspf, complete once its files are,
    is sealed with a fresh key and follows them. ``volumes``: the volume regions in path order;
    ``data_files``: region path -> its files (relative), every one in ``extents``. ``direct``:
    the layer's blob is bound for disk; ``follow``: told of the blob as it grows (see LayerWriter)."""
    epoch = source_date_epoch()
    reads_left = collections.Counter(extents[path] for files in data_files.values() for path in files)
    done: list[str] = []  # read for the last time, not released yet
    done_bytes = 0

    def protect(fspf: Fspf, path: str, sink: BinaryIO | None) -> None:
        nonlocal done_bytes
        extent = extents[path]
        with spool.open(extent) as source:
            fspf.protect_file(absolute(path), source, extent.size, sink)
        reads_left[extent] -= 1  # hard links share one extent
        if not reads_left[extent]:
            done.append(path)
            done_bytes += extent.size
        if done_bytes >= RELEASE_EVERY:
            # Give the plaintext's pages back as we go: the layer's next writes take them. In
            # runs rather than file by file: neighbours in the tar are punched as one range.
            fs.release(done)
            done.clear()
            done_bytes = 0

    def encrypt(fspf: Fspf, path: str):
        return lambda sink: protect(fspf, path, sink)

    sealed: list[SealedVolume] = []
    with LayerWriter(compression, directory=work, source="data layer", direct=direct, follow=follow) as writer:
        tar = LayerTar(writer.stream)
        # Volume by volume, each volume's files in order, then its fspf: keys drawn from a
        # seeded --deterministic-keys-from source come out the same for the same input.
        for region in volumes:
            fspf = Fspf.create(random=random)
            fspf.add_region(region["path"], kind="kernel", protection=region["protection"])
            encrypted = region["protection"] == "encrypted"
            sizes: dict[str, int] = {}
            for path in data_files.get(region["path"], []):
                size = extents[path].size
                if encrypted:
                    entry = fs.entries[path]
                    tar.add(TarEntry(
                        path=path, kind="file", mode=entry.mode, uid=entry.uid, gid=entry.gid,
                        size=fspf.stored_size(absolute(path), size), mtime=entry.mtime,
                        write=encrypt(fspf, path),
                    ))
                else:
                    protect(fspf, path, None)
                sizes[absolute(path)] = size
            data, key, tag = fspf.encrypt_bytes()
            fspf_path = fspf_path_of(region["path"])
            fspf_rel = rel(fspf_path)
            for parent in missing_parents([fspf_rel], lambda p: p in fs.entries or p in tar.paths, epoch):
                tar.add(parent)
            # Owned like its directory, so a service running as that user can rewrite it.
            directory = fs.entries.get(rel(region["path"]))
            tar.add(TarEntry(
                path=fspf_rel, kind="file", mode=0o644, uid=getattr(directory, "uid", 0),
                gid=getattr(directory, "gid", 0), size=len(data), mtime=epoch,
                write=lambda sink, data=data: sink.write(data),
            ))
            sealed.append(SealedVolume(region["path"], region["protection"], fspf_path, key, tag, sizes))
        tar.close()
    return DataLayer(replace(writer.layer, compressible=False), sealed)


def declare_volumes(fs: RootFS, volumes: list[dict], work: str, compression: str, direct: bool = False,
                    follow: BlobFollower | None = None) -> DataLayer:
    """The data layer of a --generic image: no file, no fspf, no key; only each volume's directory
    where the image lacks it. The volumes are *declared* (docs/deploy.md): each deployment's
    launcher initialises them with the deployment's own key on its first start."""
    epoch = source_date_epoch()
    declared: list[SealedVolume] = []
    with LayerWriter(compression, directory=work, source="data layer", direct=direct, follow=follow) as writer:
        tar = LayerTar(writer.stream)
        for region in volumes:
            fspf_path = fspf_path_of(region["path"])
            for parent in missing_parents([rel(fspf_path)], lambda p: p in fs.entries or p in tar.paths, epoch):
                tar.add(parent)
            declared.append(SealedVolume(region["path"], region["protection"], fspf_path, b"", b"", {}, declared=True))
        tar.close()
    return DataLayer(writer.layer, declared)
