"""Measure and diff: what a sconified image says about itself without a manifest (its labels,
its executable's embedfs, the files of its data layer), for ``sconify measure`` and
``sconify diff``."""

from __future__ import annotations

import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

from embedfs.elf import open_embedded
from embedfs.errors import EmbedfsError
from sconify.errors import UsageError
from sconify.image.model import Image
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.outputs.manifest import LABEL_PREFIX
from sconify.conversion.select import absolute, is_regular, try_resolve
from sconify.verify.audit import copy_out


def image_labels(image: Image) -> dict[str, str]:
    return dict((image.config.get("config") or {}).get("Labels") or {})


@dataclass
class SconifiedImage:
    """What an image says about itself without a manifest: labels, executable, embedfs."""

    reference: str
    labels: dict[str, str]
    executable: str
    members: dict[str, str]  # path -> sha256
    mrenclave_label: str
    protected_paths: list[str]  # paths the data layer writes (ciphertext), the volumes' fspfs excluded


def open_sconified(reference: str, work: Path, platform: str | None = None) -> SconifiedImage:
    image = read_image(reference, platform=platform)
    labels = image_labels(image)
    executable = labels.get(LABEL_PREFIX + "executable")
    if not executable:
        raise UsageError(
            f"{reference} carries no {LABEL_PREFIX}executable label: it was not written by sconify-image"
        )
    fs = RootFS.from_image(image)
    exe_path = try_resolve(fs, executable)
    if exe_path is None or not is_regular(fs.entries[exe_path]):
        raise UsageError(f"{reference}: the labelled executable {executable} is missing from the image")
    target = work / f"exe-{len(list(work.iterdir()))}"
    copy_out(fs, exe_path, target)
    try:
        with open_embedded(target) as archive:
            members = {absolute(m.path): m.sha256 for m in archive.list()}
    except EmbedfsError as exc:
        raise UsageError(f"{reference}: {exc}") from None
    from sconify.conversion.volumes import FSPF_NAME  # the data layer's writer: not needed by verify

    # One fspf per volume (label io.sconify.volumes); images converted before volumes had one.
    volumes = [path for path in labels.get(LABEL_PREFIX + "volumes", "").split(",") if path]
    fspfs = {posixpath.join(path, FSPF_NAME) for path in volumes}
    fspfs.add(labels.get(LABEL_PREFIX + "fspf.path", ""))
    data_layer = len(image.layers) - 1
    protected = sorted(
        absolute(path)
        for path, entry in fs.entries.items()
        if entry.layer_index == data_layer and is_regular(entry) and absolute(path) not in fspfs
    )
    return SconifiedImage(
        reference, labels, executable, members, labels.get(LABEL_PREFIX + "mrenclave", ""), protected
    )


def diff_images(ref_a: str, ref_b: str, platform: str | None = None) -> list[tuple[str, str]]:
    """(what, how it differs) lines between two sconified images; empty when they agree."""
    with tempfile.TemporaryDirectory(prefix="sconify-diff-") as work:
        a = open_sconified(ref_a, Path(work), platform)
        b = open_sconified(ref_b, Path(work), platform)
    lines: list[tuple[str, str]] = []
    if a.executable != b.executable:
        lines.append(("executable", f"{a.executable} -> {b.executable}"))
    names = ("mrenclave", "heap-size", "stack-size", "threads", "embedfs.root-hash", "volumes", "version")
    for name in names:
        va, vb = a.labels.get(LABEL_PREFIX + name), b.labels.get(LABEL_PREFIX + name)
        if va != vb:
            lines.append((name, f"{va} -> {vb}"))
    for path in sorted(set(a.members) | set(b.members)):
        if path not in b.members:
            lines.append(("embedded file removed", path))
        elif path not in a.members:
            lines.append(("embedded file added", path))
        elif a.members[path] != b.members[path]:
            lines.append(("embedded file changed", path))
    for path in sorted(set(a.protected_paths) ^ set(b.protected_paths)):
        lines.append(("protected file " + ("removed" if path in a.protected_paths else "added"), path))
    return lines
