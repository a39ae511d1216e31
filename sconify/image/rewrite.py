"""Input layers rewritten without their entries under protected prefixes.

A whiteout hides a file in the merged view, but its bytes stay in the lower layer's blob, which
every pull downloads (docs/security.md). So an input layer that holds a regular file or a
hardlink under a protected prefix (an encrypted region: the data layer holds its protected
form) is written again without those members; every other input layer stays byte for byte.

``plan_rewrites`` decides from the headers ``RootFS`` indexed (``RootFS.placed``), without
reading a byte: which members go, and which hardlinks outside the prefixes lose the member they
name and so become regular files of their own with its content (the outside name still needs
it). ``rewrite_layer`` then copies the layer's tar with those members' byte ranges left out
(whatever header blocks a member has: PAX, GNU long names), so everything else keeps its exact
bytes: directories (the region's own entry keeps its mode and owner), symlinks, whiteouts and
opaque markers, extended attributes. The result is compressed as the input was, with the pinned
settings: the same input gives the same bytes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.layerwriter import LayerWriter
from sconify.image.model import BoundedReader, Layer
from sconify.image.rootfs import Placed, RootFS
from sconify.image.tarbounds import BoundedTarInfo, HostileHeader


@dataclass(frozen=True)
class ProtectedPrefix:
    """A directory of the image whose plaintext must leave every input layer (absolute path),
    and why (e.g. "encrypted region"): the Plan lists them."""

    path: str
    reason: str


@dataclass
class LayerRewrite:
    """What leaves one input layer, decided before any byte is read."""

    index: int
    removed: dict[int, str] = field(default_factory=dict)  # member offset_data -> its path
    # hardlinks outside every prefix whose target leaves: written as regular files
    materialized: dict[int, Placed] = field(default_factory=dict)
    regions: list[str] = field(default_factory=list)  # the prefixes (absolute) it held entries of
    # hardlinks under a prefix (removed) whose bytes sit outside every prefix: those bytes stay
    # in a lower layer under the outside name, so the conversion warns
    outside_sources: list[Placed] = field(default_factory=list)

    def summary(self) -> dict:
        """What the plan shows of it (``--dry-run`` too)."""
        return {
            "index": self.index,
            "removed_entries": len(self.removed),
            "materialized_hardlinks": sorted("/" + p.path for p in self.materialized.values()),
            "regions": self.regions,
        }

    def figures(self, layer: Layer, output: Layer) -> dict:
        """What the manifest records of it (``rewritten_layers``, docs/manifest.md)."""
        return {**self.summary(), "input_diff_id": layer.diff_id, "output_diff_id": output.diff_id}

    def describe(self) -> str:
        """One line for the plan table."""
        links = f", {len(self.materialized)} hardlinks made regular files" if self.materialized else ""
        return f"layer {self.index}: {len(self.removed)} entries under {', '.join(self.regions) or '-'} removed{links}"


def plan_rewrites(fs: RootFS, prefixes: list[ProtectedPrefix]) -> list[LayerRewrite]:
    """The input layers that hold regular files or hardlinks strictly below a protected prefix
    (as placed when their layer was applied, hidden later or not), in layer order."""
    roots = sorted({prefix.path.strip("/") for prefix in prefixes} - {""})
    if not roots:
        return []

    def under(path: str) -> str | None:
        return next((root for root in roots if path.startswith(root + "/")), None)

    rewrites = []
    removed_content: set[tuple[int, int]] = set()
    for index in sorted(fs.placed):
        rewrite = LayerRewrite(index)
        regions: set[str] = set()
        for placed in fs.placed[index]:  # member order: a hardlink comes after what it names
            root = under(placed.path)
            if root is not None:
                rewrite.removed[placed.offset_data] = placed.path
                regions.add("/" + root)
                if placed.kind == "file":
                    removed_content.add((index, placed.offset_data))
                elif under(placed.target) is None and (placed.data_layer, placed.data_offset) not in removed_content:
                    rewrite.outside_sources.append(placed)
            elif placed.kind == "hardlink" and (
                under(placed.target) is not None or (placed.data_layer, placed.data_offset) in removed_content
            ):
                rewrite.materialized[placed.offset_data] = placed
        if rewrite.removed or rewrite.materialized:
            rewrite.regions = sorted(regions)
            rewrites.append(rewrite)
    return rewrites


def link_warnings(rewrites: list[LayerRewrite]) -> list[str]:
    """One line per hardlink that shares a protected file's bytes with a name outside the
    protected prefixes: a link out of a region (made a regular file), and a link into one from
    outside (its bytes stay in their layer under the outside name, hidden by an upper whiteout
    or not: a whiteout hides, it does not remove)."""
    return [
        *(f"/{placed.path} is a hardlink to /{placed.target} in a protected region: it stays outside the "
          "region as a copy of the plaintext; remove it or protect its directory too"
          for rewrite in rewrites for placed in rewrite.materialized.values()),
        *(f"/{placed.path} in a protected region is a hardlink to /{placed.target}, outside it: its plaintext stays "
          f"in layer {placed.data_layer} under that name; copy the file into the region instead of linking it, or "
          "protect its directory too"
          for rewrite in rewrites for placed in rewrite.outside_sources),
    ]


def rewrite_layers(layers: tuple[Layer, ...], rewrites: list[LayerRewrite], work: str) -> dict[int, Layer]:
    """The rewritten layers by index. Each layer concerned (and each whose bytes a materialized
    hardlink takes) is inflated once into a temp file in ``work``, its digest and diff_id checked."""
    needed = {r.index for r in rewrites} | {p.data_layer for r in rewrites for p in r.materialized.values()}
    with contextlib.ExitStack() as stack:
        tars = {index: stack.enter_context(inflated(layers[index], work)) for index in sorted(needed)}
        return {r.index: rewrite_layer(layers[r.index], r, tars, work) for r in rewrites}


@contextlib.contextmanager
def inflated(layer: Layer, work: str) -> Iterator[BinaryIO]:
    """The layer's tar in an unlinked temp file (read to its end: digest and diff_id checked)."""
    with tempfile.TemporaryFile(prefix="sconify-rewrite-", dir=work) as tar:
        with layer.open_tar() as source:
            L.copy_stream(source, tar)
        tar.flush()
        yield tar


def rewrite_layer(layer: Layer, rewrite: LayerRewrite, tars: dict[int, BinaryIO], work: str) -> Layer:
    """``layer`` without the members ``rewrite`` removes, its materialized hardlinks as regular
    files; compressed as ``layer`` is (pinned settings)."""
    tar = tars[rewrite.index]
    fd = tar.fileno()
    what = f"layer {rewrite.index} ({layer.diff_id})"
    seen = 0
    with LayerWriter(layer.compression, directory=work, source=f"{what}, rewritten") as writer:
        cursor = 0
        tar.seek(0)
        try:
            with tarfile.open(fileobj=tar, mode="r:", tarinfo=BoundedTarInfo) as archive:
                for info in archive:
                    archive.members.clear()  # tarfile keeps every TarInfo otherwise
                    key = info.offset_data
                    if key not in rewrite.removed and key not in rewrite.materialized:
                        continue
                    seen += 1
                    copy_bytes(fd, cursor, info.offset - cursor, writer.stream)
                    cursor = archive.offset  # the end of this member: header blocks, data, padding
                    if key in rewrite.materialized:
                        write_regular(writer.stream, info, rewrite.materialized[key], tars)
        except (HostileHeader, tarfile.TarError) as exc:
            raise ImageError(f"{what} changed while it was converted ({exc}); re-run the conversion") from None
        if seen != len(rewrite.removed) + len(rewrite.materialized):
            raise ImageError(f"{what} no longer holds the entries indexed; re-run the conversion")
        copy_bytes(fd, cursor, os.fstat(fd).st_size - cursor, writer.stream)  # the end-of-archive blocks too
    return replace(writer.layer, limits=layer.limits)


def write_regular(out: BinaryIO, info: tarfile.TarInfo, placed: Placed, tars: dict[int, BinaryIO]) -> None:
    """The hardlink ``info`` as a regular file holding the bytes it shared (its header otherwise
    the same: mode, owner, times, extended attributes)."""
    regular = copy.copy(info)
    regular.type, regular.linkname, regular.size = tarfile.REGTYPE, "", placed.size
    regular.pax_headers = {k: v for k, v in info.pax_headers.items() if k not in ("linkpath", "size")}
    out.write(regular.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    copy_bytes(tars[placed.data_layer].fileno(), placed.data_offset, placed.size, out)
    out.write(bytes(-placed.size % tarfile.BLOCKSIZE))


def copy_bytes(fd: int, offset: int, count: int, out: BinaryIO) -> None:
    if count > 0:
        with io.BufferedReader(BoundedReader(fd, offset, count), L.CHUNK_SIZE) as source:
            if L.copy_stream(source, out) != count:
                raise ImageError("a rewritten layer's temp tar ended early; re-run the conversion")
