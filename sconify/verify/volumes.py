"""The volumes: the fspf tag of every volume and, given the keys, every file of every volume
read through that volume's shield (in one pass over the layers), with every file under a
protected region recorded in its fspf."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO

from sconify.fspf import Shield
from sconify.fspf.errors import FspfError, IntegrityError
from sconify.fspf.format import tag_of
from sconify.fspf.shield import VerifyReport as ShieldReport
from sconify.image.rootfs import RootFS
from sconify.outputs.manifest import Manifest, VolumeFigures
from sconify.conversion.select import absolute, is_regular, iter_tree, region_of, rel, try_resolve
from sconify.verify.report import VerifyReport, differences, summarise
from sconify.verify.runtime import runtime_paths

if TYPE_CHECKING:  # keys are optional: their crypto loads when they are used
    from sconify.outputs.keys import KeysFile, VolumeKeys


def check_volumes(report: VerifyReport, fs: RootFS, manifest: Manifest, keys: KeysFile | None) -> None:
    """Each volume's fspf is in the image with the tag the manifest records; with the keys,
    every file of every volume is read through that volume's shield. Checks are per volume
    (``volume PATH: ...``), so a failure names the volume."""
    if manifest.generic:
        check_declared_volumes(report, fs, manifest)
        return
    fresh: dict[str, bytes] = {}  # volume path -> its fspf, carrying the recorded tag
    for volume in manifest.volumes:
        name = f"volume {volume.path}: fspf tag"
        located = try_resolve(fs, volume.fspf_path)
        if located is None or not is_regular(fs.entries[located]):
            report.add(name, False, f"{volume.fspf_path} is not a file in the image")
            continue
        data = fs.read(located)
        try:
            tag = tag_of(data).hex()
        except FspfError as exc:
            report.add(name, False, str(exc))
            continue
        report.add(
            name,
            tag == volume.tag,
            tag if tag == volume.tag
            else f"image has {tag}, manifest records {volume.tag} (an older or different fspf)",
        )
        if tag == volume.tag:
            fresh[volume.path] = data
    if keys is None:
        return
    held = volume_keys(report, manifest, keys)
    present = protected_paths(fs, manifest)
    lent = LentStreams()
    shields: dict[str, Shield] = {}
    for volume in manifest.volumes:
        if volume.path not in fresh or volume.path not in held:
            continue  # its tag or its key is reported above
        key = held[volume.path]
        try:
            shield = Shield(fresh[volume.path], key.fspf_key, key.fspf_tag, opener=lent.opener)
        except FspfError as exc:
            report.add(f"volume {volume.path}: protected files (through the shield)", False, str(exc))
            continue
        if check_fspf_content(report, volume, shield):
            shields[volume.path] = shield
    results = shield_files(shields, lent, fs, present)
    for volume in manifest.volumes:
        if volume.path not in results:
            continue
        result = results[volume.path]
        report.add(
            f"volume {volume.path}: protected files (through the shield)",
            result.ok,
            f"{result.files} files, {result.bytes} bytes" if result.ok
            else summarise([str(problem) for problem in result.problems]),
        )
        recorded = set(volume.files)
        missing = recorded - {absolute(p) for p in present[volume.path]}
        if missing:
            report.add(
                f"volume {volume.path}: protected files present", False,
                summarise([f"{p} missing" for p in sorted(missing)]),
            )


def check_declared_volumes(report: VerifyReport, fs: RootFS, manifest: Manifest) -> None:
    """A --generic image's volumes are declared, not filled (docs/deploy.md): no fspf and no file
    under any of them, so every deployment starts from the same empty volume and its own key."""
    present = protected_paths(fs, manifest)
    for volume in manifest.volumes:
        located = try_resolve(fs, volume.fspf_path)
        found = ([volume.fspf_path] if located is not None else []) + [absolute(p) for p in present[volume.path]]
        report.add(f"volume {volume.path}: declared (generic)", not found,
                   "no fspf, no file: each deployment makes its own" if not found
                   else f"a generic image's volume holds {summarise(found)}")


def volume_keys(report: VerifyReport, manifest: Manifest, keys: KeysFile) -> dict[str, VolumeKeys]:
    """The keys of each volume of the manifest whose tag is the manifest's; a failed
    "keys file" check names any volume without a key, with another tag, or not in the manifest."""
    held: dict[str, VolumeKeys] = {}
    problems = []
    for volume in manifest.volumes:
        key = keys.volume(volume.path)
        if key is None:
            problems.append(f"no key for volume {volume.path}")
        elif key.fspf_tag.hex() != volume.tag:
            problems.append(
                f"the key of volume {volume.path} is for another fspf (its tag differs from the manifest's)"
            )
        else:
            held[volume.path] = key
    problems += [
        f"volume {v.path} is not in the manifest" for v in keys.volumes if manifest.volume(v.path) is None
    ]
    if problems:
        report.add("keys file", False, summarise(problems))
    return held


def check_fspf_content(report: VerifyReport, volume: VolumeFigures, shield: Shield) -> bool:
    """The opened fspf holds exactly the volume's region (kernel path = its path) and the files
    the manifest lists, with their sizes: False (a failed check) otherwise."""
    regions = [(r.path, r.kind, r.protection, r.kernel_path) for r in shield.fspf.regions]
    if regions != [(volume.path, "kernel", volume.protection, volume.path)]:
        shown = ", ".join(f"{path} ({kind}, {protection})" for path, kind, protection, _ in regions) or "none"
        report.add(f"volume {volume.path}: fspf region", False,
                   f"the fspf holds the regions {shown}, not just {volume.path} ({volume.protection})")
        return False
    lines = differences({p: str(info["size"]) for p, info in volume.files.items()},
                        {record.path: str(record.size) for record in shield.fspf.files})
    if lines:
        report.add(f"volume {volume.path}: fspf lists the manifest's files", False,
                   summarise([line.replace(" added", " recorded in the fspf only") for line in lines]))
    return True


def protected_paths(fs: RootFS, manifest: Manifest) -> dict[str, list[str]]:
    """volume path -> the regular files of the image in that volume (longest prefix over every
    region), sorted: each must be recorded in the volume's fspf. The fspfs themselves and the
    executable (it is measured) are outside the shields by construction."""
    regions = manifest.all_regions()
    roots = [rel(volume.path) for volume in manifest.volumes]
    unshielded = {rel(volume.fspf_path) for volume in manifest.volumes} | {rel(manifest.executable.path)} | \
        runtime_paths(manifest)
    if "" in roots:
        candidates = (path for path, entry in fs.entries.items() if is_regular(entry))
    else:
        candidates = (
            path
            for root in roots
            if (resolved := try_resolve(fs, "/" + root)) is not None and fs.entries[resolved].kind == "dir"
            for path, entry in iter_tree(fs, resolved)
            if is_regular(entry)
        )
    present: dict[str, list[str]] = {volume.path: [] for volume in manifest.volumes}
    for path in sorted(set(candidates) - unshielded):
        region = region_of(path, regions)
        if region["path"] in present and region["kind"] == "kernel":
            present[region["path"]].append(path)
    return present


class BorrowedStream(io.RawIOBase):
    """A stream lent to a reader that closes what it is given: closing this one leaves the
    stream open (its owner, e.g. ``RootFS.iter_files``, may still read it to its end)."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._stream.seekable()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def readinto(self, buffer) -> int:  # type: ignore[override]
        return self._stream.readinto(buffer)


class LentStreams:
    """The streams of ``RootFS.iter_files`` lent to the shields, one at a time: a shield's
    opener takes the stream of the path it asks for, or finds the file missing."""

    def __init__(self) -> None:
        self._lent: dict[str, BinaryIO] = {}

    def lend(self, path: str, stream: BinaryIO) -> None:
        self._lent[path] = stream

    def take_back(self, path: str) -> None:
        self._lent.pop(path, None)

    def opener(self, stored: str) -> BinaryIO:
        stream = self._lent.pop(stored, None)
        if stream is None:
            raise FileNotFoundError(stored)
        return BorrowedStream(stream)  # type: ignore[return-value]


def shield_files(
    shields: dict[str, Shield], lent: LentStreams, fs: RootFS, present: dict[str, list[str]]
) -> dict[str, ShieldReport]:
    """``Shield.verify_all(present)`` of every volume, with each file read as ``fs.iter_files``
    streams it (one pass for all volumes: in layer order, each layer once, nothing copied):
    every recorded file through its volume's shield (opened with ``lent.opener``), then the
    files present in a volume that its fspf lacks. Stored paths are image paths."""
    owner = {
        path: volume
        for volume, shield in shields.items()
        for path in present[volume]
        if shield.fspf.file(absolute(path)) is not None
    }

    def read_through(shield: Shield, path: str) -> IntegrityError | None:
        try:
            return shield.check_file(path)
        finally:
            lent.take_back(path)

    found: dict[tuple[str, str], IntegrityError | None] = {}
    for entry, stream in fs.iter_files(sorted(owner)):
        path, volume = absolute(entry.path), owner[entry.path]
        lent.lend(path, stream)
        found[(volume, path)] = read_through(shields[volume], path)
    reports = {}
    for volume, shield in shields.items():
        problems = []
        checked = 0
        for record in shield.fspf.files:
            # A recorded file not streamed is missing: the opener says so, the shield names it.
            key = (volume, record.path)
            problem = found[key] if key in found else read_through(shield, record.path)
            if problem is None:
                checked += record.size
            else:
                problems.append(problem)
        problems += shield.added_files(absolute(p) for p in present[volume])
        reports[volume] = ShieldReport(len(shield.fspf.files), checked, tuple(problems))
    return reports
