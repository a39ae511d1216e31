"""Auditing a sconified image: recompute every figure of its manifest from the image alone.

``verify_image`` reads the output image (any transport), and checks, each as a named ``Check``:
image identity (config digest, diff_ids, reused input layers, labels), the executable's SHA-256,
its embedfs (root hash, every member hash, the original executable underneath), MRENCLAVE (from
the manifest's parameters), that embedded files are gone from the rootfs, the fspf tag of every
volume and, given the keys, every file of every volume through that volume's shield. Nothing
here trusts the machine that built the image.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from embedfs.elf import find_embedded, open_embedded, restore_original
from embedfs.errors import EmbedfsError
from embedfs.measure import measure_elf
from sconify.atomic import atomic_write_bytes
from sconify.errors import ImageError, UsageError
from sconify.fspf import Shield
from sconify.fspf.errors import FspfError, IntegrityError
from sconify.fspf.format import tag_of
from sconify.fspf.shield import VerifyReport as ShieldReport
from sconify.hashing import sha256_file
from sconify.image import layers as L
from sconify.image.layerread import short_gil_switches
from sconify.image.model import Image, Layer, copy_range
from sconify.image.rootfs import PathNotFound, RootFS
from sconify.image.transports import read_image
from sconify.manifest import LABEL_PREFIX, Manifest, VolumeFigures
from sconify.runtime import CONFIG_PATH as RUNTIME_CONFIG_PATH
from sconify.select import absolute, is_regular, iter_tree, region_of, rel, try_resolve

if TYPE_CHECKING:  # keys are optional: their crypto loads when they are used
    from sconify.keys import KeysFile, VolumeKeys

SIGNATURE_SCHEMA = "sconify.signature/v1"
MAX_DIFFERENCES_SHOWN = 5


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""  # for a failure: what differs; for a pass: what was checked


@dataclass
class VerifyReport:
    reference: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> Check:
        check = Check(name, ok, detail)
        self.checks.append(check)
        return check

    def to_dict(self) -> dict:
        return {
            "reference": self.reference,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Human lines for keys missing, added or with another value."""
    lines = []
    for key in sorted(set(expected) | set(actual)):
        if key not in actual:
            lines.append(f"{key} missing")
        elif key not in expected:
            lines.append(f"{key} added")
        elif expected[key] != actual[key]:
            lines.append(f"{key} differs")
    return lines


def summarise(lines: list[str]) -> str:
    shown = "; ".join(lines[:MAX_DIFFERENCES_SHOWN])
    more = len(lines) - MAX_DIFFERENCES_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def copy_out(fs: RootFS, path: str, target: Path) -> None:
    """Write the content of the regular file ``path`` of the image to ``target``."""
    if copy_cached(fs, path, target):
        return
    for _entry, stream in fs.iter_files([path]):
        with target.open("wb") as out:
            shutil.copyfileobj(stream, out, 1 << 20)


def copy_cached(fs: RootFS, path: str, target: Path) -> bool:
    """Write the file ``path`` to ``target`` from the layer tar RootFS keeps in a temp file
    (in the kernel where it can); False (nothing written) when its layer is not kept."""
    cached = fs.cached_content(path)
    if cached is None:
        return False
    fd, offset, size = cached
    with target.open("wb") as out:
        done = copy_range(fd, out.fileno(), offset, size)
    if done != size:
        raise ImageError(f"a cached layer tar ended {size - done} bytes early; re-run verify")
    return True


def checks_of(function: Callable[..., None], *args: object) -> list[Check]:
    """The checks ``function(report, *args)`` adds, collected on their own (so independent
    checks can run on another thread and still be reported in a fixed order)."""
    part = VerifyReport("")
    function(part, *args)
    return part.checks


def verify_image(
    reference: str,
    manifest: Manifest,
    *,
    keys: KeysFile | None = None,
    sgxs_out: str | None = None,
    platform: str | None = None,
) -> VerifyReport:
    """Recompute every figure of ``manifest`` from the image at ``reference``.

    The layers are indexed once (RootFS keeps their tars, so each file is then read once from
    them), and independent checks overlap on the two cores: the input's blobs and the
    executable (digest, embedfs, MRENCLAVE) on worker threads, the fspf and the protected
    files on this one. SHA-256, zstd and AES-GCM release the GIL.
    """
    report = VerifyReport(reference)
    image = read_image(reference, platform=platform)
    check_identity(report, image, manifest)
    base = len(manifest.input.diff_ids)
    # With keys, the shield must see every file of the merged view under a protected region
    # (plaintext left in a lower layer would otherwise go unnoticed): index all layers.
    added = 3 if manifest.runtime is not None else 2  # code, data (and runtime) layers
    added_layers_only = keys is None and len(image.layers) == len(manifest.output.diff_ids) == base + added
    with short_gil_switches(), \
            concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="sconify-verify") as pool:
        if added_layers_only:
            # The input's layers hold nothing sconify computed: index only the two layers
            # sconify added (both cores: tar headers here, inflating on RootFS's thread), then
            # hash the input's blobs on a worker, alongside the checks of the executable.
            lower = pool.submit(checks_of, check_input_blobs, image.layers[:base], manifest)
            fs = RootFS.from_image(replace(image, layers=image.layers[base:]), cache_layers=True)
        else:
            lower = None
            # Every layer: digests, diff_ids, and the headers the shield's check of "every file
            # under a protected region" needs. The tars of the layers sconify added are kept
            # (files are read from them, not inflated again); the input's only give names, and
            # the diff_id of an input blob stored as recorded is not recomputed (see below).
            fs = RootFS.from_image(image, cache_layers=range(base, len(image.layers)),
                                   diff_ids_known=recorded_input_blobs(image.layers[:base], manifest))
        check_contents(report, fs, manifest, keys, sgxs_out, pool, whiteouts_needed=added_layers_only)
        if lower is not None:
            report.checks += lower.result()  # an ImageError (corrupt input blob) propagates: could not read
    return report


def check_input_blobs(report: VerifyReport, layers: tuple[Layer, ...], manifest: Manifest) -> None:
    """The input's layers, reused as they were: each blob is read once and its SHA-256 checked.

    A blob whose digest is the one the manifest records for that input layer is the input's own,
    byte for byte, so its diff_id is the input's (which ``check_identity`` compares); it is not
    inflated. Any other blob (e.g. recompressed for the destination) is inflated and its diff_id
    recomputed. Raises ImageError when a blob is missing, truncated or differs from its digest.
    """
    as_recorded = recorded_input_blobs(layers, manifest)
    inflated = 0
    for index, layer in enumerate(layers):
        if index in as_recorded:
            with layer.open_blob() as blob:  # size and digest checked at the end
                L.drain(blob)
        else:
            layer.verify()
            inflated += 1
    how = f"{len(layers)} layers: blob digests as recorded for the input"
    report.add("input layers' blobs", True, how + (f"; {inflated} inflated for their diff_ids" if inflated else ""))


def recorded_input_blobs(layers: tuple[Layer, ...], manifest: Manifest) -> set[int]:
    """Indexes of the input layers stored as the manifest records them (same blob digest): once
    that digest is checked, the blob is the one sconify read, inflated and hashed, so its
    diff_id is the recorded one, which ``check_identity`` compares with the config's."""
    recorded = manifest.input.layer_digests
    return {index for index, layer in enumerate(layers) if index < len(recorded) and layer.digest == recorded[index]}


def check_contents(
    report: VerifyReport,
    fs: RootFS,
    manifest: Manifest,
    keys: KeysFile | None,
    sgxs_out: str | None,
    pool: concurrent.futures.Executor,
    *,
    whiteouts_needed: bool,
) -> None:
    """Every check that reads files: executable, embedfs, MRENCLAVE, whiteouts, fspf and, with
    keys, every protected file.

    The layers' tars were kept by the index pass, so each file is read once from them. The
    executable's checks run on workers (SHA-256 and zstd release the GIL) while this thread
    reads the fspf and the protected files through the shield (AES-GCM releases it too).
    """
    with fs, tempfile.TemporaryDirectory(prefix="sconify-verify-") as work:
        exe = Path(work, "executable")
        exe_path = try_resolve(fs, manifest.executable.path)
        if exe_path is None or not is_regular(fs.entries[exe_path]):
            report.add("executable", False, f"{manifest.executable.path} is not a file in the image")
            return
        copy_out(fs, exe_path, exe)
        executable_checks = [
            pool.submit(checks_of, check_executable_digest, exe, manifest),
            pool.submit(checks_of, check_embedfs, exe, manifest, Path(work)),
            pool.submit(checks_of, check_measurement, exe, manifest, sgxs_out),
        ]
        here = VerifyReport("")
        check_removed(here, fs, manifest, whiteouts_needed=whiteouts_needed)
        if whiteouts_needed:  # the view holds just the layers sconify added
            check_added_layers(here, fs, manifest)
        check_volumes(here, fs, manifest, keys)
        if manifest.runtime is not None:
            check_runtime(here, fs, manifest)
        for future in executable_checks:
            report.checks += future.result()
        report.checks += here.checks


def runtime_paths(manifest: Manifest) -> set[str]:
    """The runtime layer's files (relative paths), if the conversion added one."""
    return {rel(path) for path in manifest.runtime.files} if manifest.runtime is not None else set()


def check_runtime(report: VerifyReport, fs: RootFS, manifest: Manifest) -> None:
    """The runtime layer: each file byte for byte as recorded, and a runtime config that names
    the measured executable, the measurement and the volumes the manifest records (the launcher
    checks the measurement against the keys, so a wrong config only stops the service)."""
    runtime = manifest.runtime
    problems = []
    for path, digest in sorted(runtime.files.items()):
        entry = fs.entries.get(rel(path))
        if entry is None or not is_regular(entry):
            problems.append(f"{path} missing")
        elif hashlib.sha256(fs.read(rel(path))).hexdigest() != digest:
            problems.append(f"{path} differs from the recorded SHA-256")
    report.add("runtime files", not problems,
               f"{len(runtime.files)} files as recorded" if not problems else summarise(problems))
    try:
        config = json.loads(fs.read(rel(RUNTIME_CONFIG_PATH)))
        expected = {
            "executable": manifest.executable.path,
            "executable_sha256": manifest.executable.sconified_sha256,
            "mrenclave": manifest.measurement.mrenclave,
            "heap_size": manifest.measurement.heap_size,
            "stack_size": manifest.measurement.stack_size,
            "threads": manifest.measurement.threads,
            "volumes": [[v.path, v.fspf_path, v.protection] for v in manifest.volumes],
        }
        found = {
            "executable": config["executable"],
            "executable_sha256": config["executable_sha256"],
            "mrenclave": config["mrenclave"],
            **{key: config["measurement"][key] for key in ("heap_size", "stack_size", "threads")},
            "volumes": [[v["path"], v["fspf_path"], v["protection"]] for v in config["volumes"]],
        }
        wrong = [key for key in expected if expected[key] != found[key]]
        report.add("runtime config", not wrong,
                   "names the measured executable, its measurement and volumes" if not wrong
                   else f"{RUNTIME_CONFIG_PATH}: {', '.join(wrong)} differ from the manifest")
    except (PathNotFound, KeyError, TypeError, ValueError) as exc:
        report.add("runtime config", False, f"{RUNTIME_CONFIG_PATH} is missing or malformed ({exc})")


# Transports that store every compression as it is: an image copied between them keeps its
# layer blobs (and their digests); docker-archive and the engine recompress zstd layers.
BLOB_KEEPING_TRANSPORTS = ("oci", "oci-archive")


def check_identity(report: VerifyReport, image: Image, manifest: Manifest) -> None:
    out = manifest.output
    report.add(
        "image config digest",
        image.config_digest == out.config_digest,
        image.config_digest
        if image.config_digest == out.config_digest
        else f"image has {image.config_digest}, manifest records {out.config_digest}",
    )
    diff_ids = list(image.diff_ids)
    if diff_ids == out.diff_ids:
        report.add("layer diff_ids", True, f"{len(diff_ids)} layers")
    else:
        changed = [
            f"layer {i}: image {a[:19]}..., manifest {b[:19]}..."
            for i, (a, b) in enumerate(zip(diff_ids, out.diff_ids))
            if a != b
        ]
        if len(diff_ids) != len(out.diff_ids):
            changed.insert(0, f"image has {len(diff_ids)} layers, manifest {len(out.diff_ids)}")
        report.add("layer diff_ids", False, summarise(changed))
    base = manifest.input.diff_ids
    report.add(
        "input layers reused byte for byte",
        diff_ids[: len(base)] == base,
        f"{len(base)} input layers"
        if diff_ids[: len(base)] == base
        else "the image's lower layers are not the input's",
    )
    layer_digests = [layer.digest for layer in image.layers]
    stored_as_written = (
        report.reference.partition(":")[0] in BLOB_KEEPING_TRANSPORTS
        and out.reference.partition(":")[0] in BLOB_KEEPING_TRANSPORTS
    )
    if out.layer_digests and len(layer_digests) == len(out.layer_digests) and stored_as_written:
        report.add(
            "layer blob digests",
            layer_digests == out.layer_digests,
            "as written"
            if layer_digests == out.layer_digests
            else summarise(
                [
                    f"layer {i} blob differs"
                    for i, (a, b) in enumerate(zip(layer_digests, out.layer_digests))
                    if a != b
                ]
            ),
        )
    labels = (image.config.get("config") or {}).get("Labels") or {}
    label = labels.get(LABEL_PREFIX + "mrenclave")
    report.add(
        "config label io.sconify.mrenclave",
        label == manifest.measurement.mrenclave,
        "matches the manifest" if label == manifest.measurement.mrenclave else f"label is {label!r}",
    )
    label, volumes = labels.get(LABEL_PREFIX + "volumes"), ",".join(v.path for v in manifest.volumes)
    report.add(
        "config label io.sconify.volumes",
        label == volumes,
        "matches the manifest" if label == volumes
        else f"label is {label!r}, the manifest's volumes {volumes!r}",
    )


def check_executable_digest(report: VerifyReport, exe: Path, manifest: Manifest) -> None:
    actual = sha256_file(exe)
    expected = manifest.executable.sconified_sha256
    report.add(
        f"executable {manifest.executable.path} sha256",
        actual == expected,
        actual if actual == expected else f"image has {actual}, manifest records {expected}",
    )


def check_embedfs(report: VerifyReport, exe: Path, manifest: Manifest, work: Path) -> None:
    """The embedfs in the executable (root hash, every member) and the original underneath."""
    try:
        descriptor = find_embedded(exe)
    except EmbedfsError as exc:
        report.add("embedfs present", False, f"{manifest.executable.path}: {exc}")
        return
    if descriptor is None:
        report.add("embedfs present", False, f"{manifest.executable.path} carries no embedfs")
        return
    try:
        archive = open_embedded(exe)
    except EmbedfsError as exc:
        report.add("embedfs root hash", False, str(exc))
        return
    with archive:
        report.add(
            "embedfs root hash",
            archive.root_hash == manifest.embedfs.root_hash,
            archive.root_hash
            if archive.root_hash == manifest.embedfs.root_hash
            else f"image has {archive.root_hash}, manifest records {manifest.embedfs.root_hash}",
        )
        try:
            verified = archive.verify()
            report.add(
                "embedfs file hashes", True, f"{verified.file_count} files, {verified.content_bytes} bytes"
            )
        except EmbedfsError as exc:
            report.add("embedfs file hashes", False, str(exc))
        actual_files = {absolute(m.path): m.sha256 for m in archive.list()}
    lines = differences(manifest.embedfs.files, actual_files)
    report.add(
        "embedded files match the manifest",
        not lines,
        f"{len(actual_files)} files" if not lines else summarise(lines),
    )
    original = work / "original"
    try:
        restore_original(exe, original)
        actual_original = sha256_file(original)
        expected_original = manifest.executable.original_sha256
        report.add(
            "original executable under the embedfs",
            actual_original == expected_original,
            actual_original
            if actual_original == expected_original
            else f"restored {actual_original}, manifest records {expected_original}",
        )
    except EmbedfsError as exc:
        report.add("original executable under the embedfs", False, str(exc))


def check_measurement(report: VerifyReport, exe: Path, manifest: Manifest, sgxs_out: str | None) -> None:
    params = manifest.measurement
    try:
        measurement = measure_elf(
            exe,
            heap_size=params.heap_size,
            stack_size=params.stack_size,
            threads=params.threads,
            ssa_frame_size=params.ssa_frame_size,
        )
    except EmbedfsError as exc:
        report.add("MRENCLAVE", False, f"cannot measure {manifest.executable.path}: {exc}")
        return
    described = f"heap {params.heap_size}, stack {params.stack_size}, {params.threads} threads"
    report.add(
        "MRENCLAVE",
        measurement.mrenclave == params.mrenclave,
        f"{measurement.mrenclave} ({described})"
        if measurement.mrenclave == params.mrenclave
        else f"recomputed {measurement.mrenclave} with the manifest's parameters ({described}), "
        f"manifest records {params.mrenclave}",
    )
    if measurement.enclave_size != params.enclave_size:
        report.add(
            "enclave size",
            False,
            f"recomputed {measurement.enclave_size}, manifest records {params.enclave_size}",
        )
    if sgxs_out:
        measurement.write_sgxs(sgxs_out)


def check_removed(report: VerifyReport, fs: RootFS, manifest: Manifest, *, whiteouts_needed: bool) -> None:
    """Embedded files must be gone: absent from the view and, when the view holds only the
    layers sconify added, named by a whiteout there."""
    problems = [f"{p} still present" for p in manifest.embedfs.removed if rel(p) in fs.entries]
    if whiteouts_needed:
        problems += [f"{p} not whited out" for p in manifest.embedfs.removed if rel(p) not in fs.whiteouts]
    report.add(
        "embedded files absent from the rootfs",
        not problems,
        f"{len(manifest.embedfs.removed)} files" if not problems else summarise(problems),
    )


def check_added_layers(report: VerifyReport, fs: RootFS, manifest: Manifest) -> None:
    """The layers sconify added hold the executable, each volume's fspf, the ciphertexts, the
    whiteouts of the embedded files and the runtime's files: nothing else."""
    expected = {rel(manifest.executable.path)} | {rel(volume.fspf_path) for volume in manifest.volumes} | {
        rel(path) for volume in manifest.volumes if volume.protection == "encrypted" for path in volume.files
    } | runtime_paths(manifest)
    problems = [
        f"{absolute(p)} added"
        for p, entry in sorted(fs.entries.items())
        if entry.kind != "dir" and p not in expected
    ]
    problems += [
        f"whiteout of {absolute(p)}"
        for p in sorted(fs.whiteouts - {rel(p) for p in manifest.embedfs.removed})
    ]
    report.add(
        "added layers hold only what the manifest lists",
        not problems,
        f"{len(expected)} files, {len(fs.whiteouts)} whiteouts" if not problems else summarise(problems),
    )


def check_volumes(report: VerifyReport, fs: RootFS, manifest: Manifest, keys: KeysFile | None) -> None:
    """Each volume's fspf is in the image with the tag the manifest records; with the keys,
    every file of every volume is read through that volume's shield. Checks are per volume
    (``volume PATH: ...``), so a failure names the volume."""
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


# --- signatures ---------------------------------------------------------------------------


def sign_manifest(manifest_path: str, key_path: str, signature_path: str) -> tuple[str, str]:
    """Sign the manifest as a DSSE envelope around an in-toto Statement (sconify.attest) whose
    subject is the output image; returns (algorithm, keyid)."""
    from sconify import attest

    key = attest.load_signing_key(key_path)
    try:
        data = Path(manifest_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read manifest {manifest_path}: {exc.strerror}") from None
    manifest = Manifest.parse(data, manifest_path)  # only sign something that is a manifest
    output = manifest.output
    payload = attest.statement(output.reference, output.manifest_digest or output.config_digest, json.loads(data))
    envelope = attest.sign_envelope(payload, key)
    atomic_write_bytes(signature_path, attest.envelope_bytes(envelope) + b"\n")
    return attest.algorithm(key), envelope["signatures"][0]["keyid"]


def default_signature_path(manifest_path: str) -> str:
    """MANIFEST.intoto.jsonl (what sign writes), else a legacy MANIFEST.sig beside it."""
    dsse = f"{manifest_path}.intoto.jsonl"
    legacy = f"{manifest_path}.sig"
    return legacy if not Path(dsse).exists() and Path(legacy).exists() else dsse


def check_signature(report: VerifyReport, manifest_path: str, signature_path: str | None, signer_path: str) -> None:
    """A DSSE/in-toto signature file (or the legacy Ed25519-over-bytes ``.sig``) by ``signer_path``."""
    from sconify import attest

    signature_path = signature_path or default_signature_path(manifest_path)
    signer = attest.load_verify_key(signer_path)
    data = Path(manifest_path).read_bytes()
    try:
        raw = Path(signature_path).read_bytes()
    except OSError as exc:
        report.add("manifest signature", False, f"cannot read {signature_path}: {exc.strerror}")
        return
    try:
        legacy = json.loads(raw)
    except ValueError:
        legacy = None
    if isinstance(legacy, dict) and legacy.get("schema") == SIGNATURE_SCHEMA:
        check_legacy_signature(report, data, legacy, signature_path, signer, signer_path)
        return
    try:
        envelope = attest.parse_envelope(raw, signature_path)
        statement = attest.verify_envelope(envelope, signer, signer_path)
    except attest.EnvelopeError as exc:
        report.add("manifest signature", False, str(exc))
        return
    try:
        manifest_doc = json.loads(data)
    except ValueError:
        manifest_doc = None
    if statement.get("predicate") != manifest_doc:
        report.add("manifest signature", False,
                   "the signed statement does not match the manifest's content (manifest or signature changed)")
        return
    output = Manifest.parse(data, manifest_path).output
    image_digest = output.manifest_digest or output.config_digest
    if image_digest not in attest.subject_digests(statement):
        report.add("manifest signature", False, f"the signed statement's subject is not {image_digest}")
        return
    report.add("manifest signature", True,
               f"{attest.algorithm(signer)} DSSE in-toto statement by {attest.keyid(signer)[:16]}...")


def check_legacy_signature(report: VerifyReport, data: bytes, doc: dict, signature_path: str,
                           signer, signer_path: str) -> None:
    """The sconify.signature/v1 file: an Ed25519 signature over the manifest's exact bytes."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signature = bytes.fromhex(doc["signature"])
        claimed = bytes.fromhex(doc["public_key"])
    except (ValueError, KeyError, TypeError):
        report.add("manifest signature", False, f"{signature_path} is not a sconify signature file")
        return
    if not isinstance(signer, Ed25519PublicKey):
        report.add("manifest signature", False, f"{signature_path} is an Ed25519 signature; {signer_path} is not an Ed25519 key")
        return
    raw = signer.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if claimed != raw:
        report.add(
            "manifest signature",
            False,
            f"signed by another key ({claimed.hex()[:16]}...), not by {signer_path}",
        )
        return
    try:
        signer.verify(signature, data)
    except InvalidSignature:
        report.add(
            "manifest signature",
            False,
            "the signature does not match the manifest's bytes (manifest or signature changed)",
        )
        return
    report.add("manifest signature", True, f"ed25519 by {claimed.hex()[:16]}... (legacy .sig)")


# --- measure and diff ---------------------------------------------------------------------


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
    from sconify.volumes import FSPF_NAME  # the data layer's writer: not needed by verify

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
