"""Injecting an embedfs archive into real executables: they still run, the archive is found
offline and from inside the running process, and the measurement covers it."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import lief
import pytest
import zstandard

import embedfs
from embedfs.archive import Archive, ArchiveEntry, pack
from embedfs.elf import (NT_EMBEDFS, AlreadyEmbeddedError, extract_archive, find_embedded, inject,
                         inject_with, open_embedded, restore_original)
from embedfs.errors import InputError, IntegrityError, NotELFError
from embedfs.measure import (SSA_FRAMES_PER_THREAD, Page, measure_elf, mrenclave_of_pages, plan_enclave,
                             read_segments, tcs_page)

from test_embedfs_measure import reference_image_pages  # the page-by-page definition

HELLO_C = r"""
#include <stdio.h>
int main(int argc, char **argv) { printf("hello from %s with %d args\n", "c", argc); return 0; }
"""

C_VARIANTS = {
    "pie": ["gcc", "-O1", "-pie", "-fPIE"],
    "non-pie": ["gcc", "-O1", "-no-pie", "-fno-pie"],
    "static": ["gcc", "-O1", "-static"],
    "static-pie": ["gcc", "-O1", "-static-pie"],
    "musl": ["musl-gcc", "-O1"],
}


def strip_section_headers(path: Path) -> None:
    """Zero e_shoff/e_shnum/e_shstrndx and cut the file where the section headers began."""
    data = bytearray(path.read_bytes())
    shoff = struct.unpack_from("<Q", data, 40)[0]
    struct.pack_into("<Q", data, 40, 0)
    struct.pack_into("<HH", data, 60, 0, 0)
    path.write_bytes(bytes(data[:shoff]))


@pytest.fixture(scope="session")
def c_binaries(tmp_path_factory) -> dict[str, Path]:
    """The small C program built as every kind of executable we must support."""
    root = tmp_path_factory.mktemp("cbin")
    source = root / "hello.c"
    source.write_text(HELLO_C)
    built = {}
    for name, command in C_VARIANTS.items():
        out = root / name
        subprocess.run([*command, "-o", str(out), str(source)], check=True)
        built[name] = out
    built["stripped"] = root / "stripped"
    shutil.copy(built["pie"], built["stripped"])
    subprocess.run(["strip", str(built["stripped"])], check=True)
    built["no-section-headers"] = root / "no-section-headers"
    shutil.copy(built["pie"], built["no-section-headers"])
    strip_section_headers(built["no-section-headers"])
    return built


def unpack_rootfs(layout: Path, into: Path) -> Path:
    """The fixture image's root filesystem, unpacked by umoci (an independent OCI reader)."""
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:latest", str(into)], check=True, capture_output=True)
    return into / "rootfs"


@pytest.fixture(scope="session")
def python_rootfs(python_image, tmp_path_factory) -> Path:
    """Root filesystem of the Debian-built Python image: its python3.11 runs chrooted in it."""
    return unpack_rootfs(python_image, tmp_path_factory.mktemp("python-bundle") / "bundle")


@pytest.fixture(scope="session")
def node_rootfs(node_image, tmp_path_factory) -> Path:
    """Root filesystem of the Debian-built Node.js image (node 18 with its libnode)."""
    return unpack_rootfs(node_image, tmp_path_factory.mktemp("node-bundle") / "bundle")


def run_chrooted(rootfs: Path, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return subprocess.run([chroot, str(rootfs), *argv], capture_output=True, text=True, timeout=120,
                          env=env or {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})

def sample_entries(marker: bytes = b"") -> list[ArchiveEntry]:
    files = {
        "app/main.py": b"print('hello from the archive')\n" + marker,
        "app/lib/util.py": b"def f():\n    return 42\n" * 50,
        "app/static/blob.bin": bytes(range(256)) * 1024,
    }
    entries = [ArchiveEntry(p, "file", 0o644, 0, 0, len(d), source=d) for p, d in files.items()]
    entries.append(ArchiveEntry("app/current", "symlink", 0o777, 0, 0, 0, linkname="main.py"))
    return entries


@pytest.fixture(scope="session")
def archive_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arc") / "app.efs"
    with open(path, "wb") as out:
        pack(sample_entries(), out)
    return path


def changed_bytes(original: bytes, injected: bytes) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(original, injected)) if a != b]


@pytest.mark.parametrize("variant", [*C_VARIANTS, "stripped", "no-section-headers"])
def test_injected_c_programs_still_run_and_carry_the_archive(variant, c_binaries, archive_file, tmp_path) -> None:
    binary = c_binaries[variant]
    before = subprocess.run([binary, "a"], capture_output=True, check=True).stdout
    out = tmp_path / variant
    result = inject(binary, archive_file, out)
    assert subprocess.run([out, "a"], capture_output=True, check=True).stdout == before
    original = binary.read_bytes()
    injected = out.read_bytes()
    # original bytes stay; only e_phoff (32..39) and e_phnum (56..57) in the ELF header change
    assert all(32 <= i < 40 or 56 <= i < 58 for i in changed_bytes(original, injected))
    assert injected[result.archive_offset:result.archive_offset + result.archive_size] == archive_file.read_bytes()
    with open_embedded(out) as archive:
        assert archive.verify().root_hash == result.root_hash


@pytest.mark.parametrize("variant", ["pie", "static", "no-section-headers"])
def test_lief_sees_the_new_read_only_segment_and_note(variant, c_binaries, archive_file, tmp_path) -> None:
    out = tmp_path / variant
    result = inject(c_binaries[variant], archive_file, out)
    parsed = lief.ELF.parse(str(out))
    loads = [s for s in parsed.segments if s.type == lief.ELF.Segment.TYPE.LOAD]
    ours = loads[-1]
    assert ours.file_offset == result.archive_offset and ours.virtual_address == result.archive_vaddr
    assert ours.flags == lief.ELF.Segment.FLAGS.R
    assert [s.virtual_address for s in loads] == sorted(s.virtual_address for s in loads)
    notes = [n for n in parsed.notes if n.name.rstrip("\x00") == "EMBEDFS"]
    assert len(notes) == 1 and notes[0].original_type == NT_EMBEDFS


def test_debian_python_still_runs_and_reads_its_archive_from_memory(python_rootfs, archive_file) -> None:
    out = python_rootfs / "usr/bin/python3.11-embedfs"
    result = inject(python_rootfs / "usr/bin/python3.11", archive_file, out)
    # the injected interpreter imports embedfs (and zstandard) copied from this checkout's environment
    site = python_rootfs / "opt/embedfs-test"
    for package in (embedfs, zstandard):
        shutil.copytree(Path(package.__file__).parent, site / package.__name__, dirs_exist_ok=True)
    script = (
        "import json, ssl, sqlite3\n"
        "from embedfs.runtime import open_self\n"
        "archive = open_self()\n"
        "archive.verify()\n"
        "print(archive.root_hash)\n"
        "print(archive.read('app/main.py').decode(), end='')\n"
    )
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": "/opt/embedfs-test"}
    run = run_chrooted(python_rootfs, ["/usr/bin/python3.11-embedfs", "-c", script], env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [result.root_hash, "print('hello from the archive')"]


def test_open_self_refuses_a_process_without_an_archive() -> None:
    run = subprocess.run([sys.executable, "-c", "from embedfs.runtime import open_self; open_self()"],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "carries no embedfs archive" in run.stderr


def test_debian_node_still_runs(node_rootfs, archive_file) -> None:
    node = (node_rootfs / "usr/bin/node").resolve()
    assert node.is_relative_to(node_rootfs.resolve()), "the fixture's node must be inside its rootfs"
    out = node_rootfs / "usr/bin/node-embedfs"
    inject(node, archive_file, out)
    run = run_chrooted(node_rootfs, ["/usr/bin/node-embedfs", "-e", "console.log(require('assert') && 1 + 1)"])
    assert (run.returncode, run.stdout) == (0, "2\n"), run.stderr
    assert open_embedded(out).read("app/current") == b"main.py"


def test_injection_is_deterministic(c_binaries, archive_file, tmp_path) -> None:
    inject(c_binaries["pie"], archive_file, tmp_path / "one")
    inject(c_binaries["pie"], archive_file, tmp_path / "two")
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def test_packing_straight_into_the_executable_gives_the_bytes_of_inject(c_binaries, archive_file, tmp_path) -> None:
    """inject_with (the pipeline's way: pack writes into the output) == pack to a file + inject."""
    inject(c_binaries["pie"], archive_file, tmp_path / "injected")
    packed = []

    def append(out) -> tuple[int, str]:
        packed.append(pack(sample_entries(), out))
        return packed[0].size, packed[0].root_hash

    result = inject_with(c_binaries["pie"], append, tmp_path / "packed-in")
    assert (tmp_path / "packed-in").read_bytes() == (tmp_path / "injected").read_bytes()
    assert result.root_hash == Archive.open(archive_file).root_hash and result.archive_size == packed[0].size

    def lying(out) -> tuple[int, str]:  # a size that is not what was written
        return pack(sample_entries(), out).size + 1, packed[0].root_hash

    with pytest.raises(InputError, match="not the .* bytes"):
        inject_with(c_binaries["pie"], lying, tmp_path / "lied")
    assert not (tmp_path / "lied").exists()


def test_the_original_is_recoverable_byte_for_byte(c_binaries, archive_file, tmp_path) -> None:
    inject(c_binaries["non-pie"], archive_file, tmp_path / "injected")
    restore_original(tmp_path / "injected", tmp_path / "restored")
    assert (tmp_path / "restored").read_bytes() == c_binaries["non-pie"].read_bytes()


def test_extract_copies_the_archive_out_offline(c_binaries, archive_file, tmp_path) -> None:
    inject(c_binaries["static"], archive_file, tmp_path / "injected")
    descriptor = extract_archive(tmp_path / "injected", tmp_path / "out.efs")
    assert (tmp_path / "out.efs").read_bytes() == archive_file.read_bytes()
    assert descriptor.root_hash == Archive.open(archive_file).root_hash


def test_a_second_injection_is_refused_unless_replace(c_binaries, archive_file, tmp_path) -> None:
    inject(c_binaries["pie"], archive_file, tmp_path / "once")
    with pytest.raises(AlreadyEmbeddedError, match="--replace"):
        inject(tmp_path / "once", archive_file, tmp_path / "twice")
    assert not (tmp_path / "twice").exists()
    other = tmp_path / "other.efs"
    with open(other, "wb") as out:
        pack(sample_entries(b"# v2\n"), out)
    inject(tmp_path / "once", other, tmp_path / "replaced", replace=True)
    inject(c_binaries["pie"], other, tmp_path / "fresh")
    assert (tmp_path / "replaced").read_bytes() == (tmp_path / "fresh").read_bytes()
    assert subprocess.run([tmp_path / "replaced"], capture_output=True).returncode == 0


def elf_with(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


@pytest.mark.parametrize("case", ["text", "truncated", "32-bit", "aarch64", "relocatable", "empty"])
def test_unusable_inputs_are_refused_and_left_untouched(case, c_binaries, archive_file, tmp_path) -> None:
    original = c_binaries["pie"].read_bytes()
    data = {
        "text": b"#!/bin/sh\necho hi\n",
        "truncated": original[: len(original) // 2],
        "32-bit": elf_with(original, 4, "<B", 1),
        "aarch64": elf_with(original, 18, "<H", 183),
        "relocatable": elf_with(original, 16, "<H", 1),
        "empty": b"",
    }[case]
    source = tmp_path / "input"
    source.write_bytes(data)
    with pytest.raises(NotELFError):
        inject(source, archive_file, tmp_path / "out")
    assert source.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def test_changing_one_embedded_byte_changes_root_hash_and_mrenclave_and_verify_names_the_file(
        c_binaries, archive_file, tmp_path) -> None:
    out = tmp_path / "app"
    result = inject(c_binaries["pie"], archive_file, out)
    before = measure_elf(out, heap_size=1 << 20, stack_size=1 << 16, threads=1)

    tampered_archive = tmp_path / "tampered.efs"
    with open(tampered_archive, "wb") as handle:
        pack(sample_entries(b"#"), handle)
    tampered_binary = tmp_path / "tampered"
    inject(c_binaries["pie"], tampered_archive, tampered_binary)
    after = measure_elf(tampered_binary, heap_size=1 << 20, stack_size=1 << 16, threads=1)
    assert open_embedded(tampered_binary).root_hash != result.root_hash
    assert after.mrenclave != before.mrenclave

    # flipping a stored byte in place (no repacking) is named by verify
    data = bytearray(out.read_bytes())
    member = open_embedded(out).stat("app/static/blob.bin")
    data[result.archive_offset + member.data_offset + 3] ^= 0x01
    out.write_bytes(bytes(data))
    assert measure_elf(out, heap_size=1 << 20, stack_size=1 << 16, threads=1).mrenclave != before.mrenclave
    with pytest.raises(IntegrityError, match="app/static/blob.bin"):
        open_embedded(out).verify()


def test_measurement_covers_the_embedfs_segment_and_parameters(c_binaries, archive_file, tmp_path) -> None:
    out = tmp_path / "app"
    result = inject(c_binaries["musl"], archive_file, out)
    small = dict(heap_size=1 << 20, stack_size=1 << 16, threads=2)
    base = measure_elf(out, **small)
    assert base.regions[0].name == "image" and base.regions[0].size >= result.output_size - result.original_size
    assert base.embedfs["root_hash"] == result.root_hash and base.embedfs["size"] == result.archive_size
    assert measure_elf(c_binaries["musl"], **small).embedfs is None
    for change in (dict(heap_size=2 << 20), dict(stack_size=2 << 16), dict(threads=3), dict(ssa_frame_size=2)):
        assert measure_elf(out, **{**small, **change}).mrenclave != base.mrenclave, change
    assert measure_elf(c_binaries["musl"], **small).mrenclave != base.mrenclave
    sgxs = io.BytesIO()
    assert base.write_sgxs(sgxs) == base.mrenclave
    assert hashlib.sha256(sgxs.getvalue()).hexdigest() == base.mrenclave


def test_find_embedded_returns_none_for_a_plain_executable(c_binaries) -> None:
    assert find_embedded(c_binaries["pie"]) is None


def documented_pages(path: Path, heap_size: int, stack_size: int, threads: int) -> tuple[list[Page], int]:
    """The enclave pages of docs/measurement.md built one by one, and the enclave size."""
    segments, entry, _ = read_segments(path)
    regions, base, size = plan_enclave(segments, entry, heap_size=heap_size, stack_size=stack_size,
                                       threads=threads, ssa_frame_size=1)
    pages = reference_image_pages(segments, base, path.read_bytes())
    for region in regions[1:]:
        if region.name.startswith("tcs["):
            tcs = tcs_page(region.offset + 4096, SSA_FRAMES_PER_THREAD, entry - base, region.offset)
            pages.append(Page(region.offset, region.flags, tcs))
        else:
            pages += [Page(at, region.flags, None, region.measured)
                      for at in range(region.offset, region.offset + region.size, 4096)]
    return pages, size


def test_measure_elf_equals_the_page_by_page_definition(c_binaries, archive_file, tmp_path) -> None:
    """measure_elf reads whole runs of pages at once; on every kind of executable, with and
    without an archive, it must give the MRENCLAVE of the documented pages one by one."""
    inject(c_binaries["static-pie"], archive_file, tmp_path / "with-archive")
    for path in [*c_binaries.values(), tmp_path / "with-archive"]:
        pages, size = documented_pages(path, heap_size=1 << 20, stack_size=1 << 16, threads=2)
        measured = measure_elf(path, heap_size=1 << 20, stack_size=1 << 16, threads=2)
        assert measured.mrenclave == mrenclave_of_pages(pages, size, 1), path.name
        assert (measured.page_count, measured.measured_pages) == (len(pages), sum(p.measured for p in pages))
