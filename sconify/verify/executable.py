"""The measured executable, copied out of the image: its SHA-256, its embedfs (root hash, every
member hash, the original executable underneath) and MRENCLAVE recomputed from the manifest's
parameters."""

from __future__ import annotations

from pathlib import Path

from embedfs.elf import find_embedded, open_embedded, restore_original
from embedfs.errors import EmbedfsError
from embedfs.measure import measure_elf
from sconify.hashing import sha256_file
from sconify.outputs.manifest import Manifest
from sconify.conversion.select import absolute
from sconify.verify.report import VerifyReport, differences, summarise


def check_executable_digest(report: VerifyReport, exe: Path, manifest: Manifest) -> None:
    actual = sha256_file(exe)
    expected = manifest.executable.sconified_sha256
    report.add(
        f"executable {manifest.executable.path} sha256",
        actual == expected,
        actual if actual == expected else f"image has {actual}, manifest records {expected}",
    )


def check_embedfs(report: VerifyReport, exe: Path, manifest: Manifest, work: Path,
                  code_key: bytes | None = None) -> None:
    """The embedfs in the executable (root hash, every member) and the original underneath.

    Encrypted members (--encrypted-code) are checked by the SHA-256 of their stored bytes, as
    the measurement covers them; with the keys file's ``code_key`` they are decrypted too."""
    try:
        descriptor = find_embedded(exe)
    except EmbedfsError as exc:
        report.add("embedfs present", False, f"{manifest.executable.path}: {exc}")
        return
    if descriptor is None:
        report.add("embedfs present", False, f"{manifest.executable.path} carries no embedfs")
        return
    try:
        archive = open_embedded(exe, code_key)
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
            if archive.encrypted:
                report.add("encrypted code", True, f"{len(archive.encrypted)} files, "
                           + ("decrypted with the code key" if code_key else "stored bytes checked (no code key)"))
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
