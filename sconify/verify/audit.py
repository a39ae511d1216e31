"""The audit of one image, one story: read the image once, then run every check of
``layers``, ``executable``, ``volumes`` and ``runtime`` against the manifest, the independent
ones overlapping on worker threads. ``copy_out`` writes a file of the image to disk (the
executable here; ``measure`` and ``diff`` use it too)."""

from __future__ import annotations

import concurrent.futures
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sconify.errors import ImageError
from sconify.image.layerread import short_gil_switches
from sconify.image.model import copy_range
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.outputs.manifest import Manifest
from sconify.conversion.select import is_regular, try_resolve
from sconify.verify.executable import check_embedfs, check_executable_digest, check_measurement
from sconify.verify.layers import (
    check_added_layers,
    check_identity,
    check_lower_layers,
    check_no_plaintext,
    check_removed,
    recorded_input_blobs,
)
from sconify.verify.report import VerifyReport, checks_of
from sconify.verify.runtime import check_runtime
from sconify.verify.volumes import check_volumes

if TYPE_CHECKING:  # keys are optional: their crypto loads when they are used
    from sconify.outputs.keys import KeysFile


def verify_image(
    reference: str,
    manifest: Manifest,
    *,
    keys: KeysFile | None = None,
    sgxs_out: str | None = None,
    platform: str | None = None,
    session: dict | None = None,
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
            # The input's layers hold nothing sconify computed: index only the layers sconify
            # added here (both cores: tar headers here, inflating on RootFS's thread), and the
            # input's on a worker (digests, and no plaintext of an encrypted volume in them),
            # alongside the checks of the executable.
            lower = pool.submit(checks_of, check_lower_layers, replace(image, layers=image.layers[:base]), manifest)
            fs = RootFS.from_image(replace(image, layers=image.layers[base:]), cache_layers=True)
        else:
            lower = None
            # Every layer: digests, diff_ids, and the headers the shield's check of "every file
            # under a protected region" needs. The tars of the layers sconify added are kept
            # (files are read from them, not inflated again); the input's only give names, and
            # the diff_id of an input blob stored as recorded is not recomputed (see below).
            fs = RootFS.from_image(image, cache_layers=range(base, len(image.layers)),
                                   diff_ids_known=recorded_input_blobs(image.layers[:base], manifest))
        check_contents(report, fs, manifest, keys, sgxs_out, pool, whiteouts_needed=added_layers_only,
                       first=base if added_layers_only else 0, session=session)
        if lower is not None:
            report.checks += lower.result()  # an ImageError (corrupt input blob) propagates: could not read
    return report


def check_contents(
    report: VerifyReport,
    fs: RootFS,
    manifest: Manifest,
    keys: KeysFile | None,
    sgxs_out: str | None,
    pool: concurrent.futures.Executor,
    *,
    whiteouts_needed: bool,
    first: int = 0,
    session: dict | None = None,
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
            pool.submit(checks_of, check_embedfs, exe, manifest, Path(work), keys.code_key if keys else None),
            pool.submit(checks_of, check_measurement, exe, manifest, sgxs_out),
        ]
        here = VerifyReport("")
        check_removed(here, fs, manifest, whiteouts_needed=whiteouts_needed)
        if whiteouts_needed:  # the view holds just the layers sconify added
            check_added_layers(here, fs, manifest)
        check_no_plaintext(here, fs, manifest, first)
        check_volumes(here, fs, manifest, keys)
        if manifest.runtime is not None:
            check_runtime(here, fs, manifest, session)
        for future in executable_checks:
            report.checks += future.result()
        report.checks += here.checks


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
