"""The C measurement (runtime/src/measure.c, through runtime/build/tools/measure_tool) gives
the MRENCLAVE of embedfs.measure.measure_elf for the same executable and parameters, and
refuses what the Python code refuses."""

from __future__ import annotations

import random
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import runtime_tool
from test_embedfs_elf import c_binaries, sample_entries  # noqa: F401 (c_binaries: a fixture)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedfs.archive import pack
from embedfs.elf import find_embedded, inject
from embedfs.errors import EmbedfsError
from embedfs.measure import measure_elf

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME = REPO_ROOT / "runtime"
TOOL = RUNTIME / "build" / "tools" / "measure_tool"

C_VARIANTS = ("pie", "non-pie", "static", "static-pie")  # gcc builds of test_embedfs_elf's hello.c

# heap, stack, threads, SSA frame size
PARAMETER_SETS = [
    (64 << 20, 2 << 20, 8, 1),  # the defaults
    (4096, 4096, 1, 1),
    (1 << 20, 256 << 10, 3, 2),
    (128 << 20, 8 << 20, 16, 4),
]

# What measure_elf raises on inputs it cannot measure: its own errors, and (for layouts no
# enclave can have) struct/overflow/value errors from packing or from min() of no segments.
PYTHON_REFUSALS = (EmbedfsError, struct.error, OverflowError, ValueError)


@pytest.fixture(scope="module")
def tool() -> Path:
    return runtime_tool("measure_tool")


def c_measure(tool: Path, path: Path, heap: int, stack: int, threads: int, ssa: int) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), str(path), str(heap), str(stack), str(threads), str(ssa)],
                          capture_output=True, text=True, timeout=60)


def python_measure(path: Path, heap: int, stack: int, threads: int, ssa: int) -> str:
    return measure_elf(path, heap_size=heap, stack_size=stack, threads=threads, ssa_frame_size=ssa).mrenclave


def assert_same(tool: Path, path: Path, params: tuple[int, int, int, int]) -> str:
    expected = python_measure(path, *params)
    result = c_measure(tool, path, *params)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n", f"{path} {params}"
    return expected


def assert_both_refuse(tool: Path, path: Path, params: tuple[int, int, int, int] = PARAMETER_SETS[0]) -> str:
    with pytest.raises(PYTHON_REFUSALS):
        python_measure(path, *params)
    result = c_measure(tool, path, *params)
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("measure_tool: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def c_programs(c_binaries) -> dict[str, Path]:  # noqa: F811 (the imported fixture)
    """The small C program as PIE, non-PIE, static and static-PIE (test_embedfs_elf builds them)."""
    return {name: c_binaries[name] for name in C_VARIANTS}


@pytest.fixture(scope="module")
def injected(c_programs, tmp_path_factory) -> dict[str, Path]:
    """The PIE and Debian's python3 with the sample archive injected."""
    root = tmp_path_factory.mktemp("measure-injected")
    archive = root / "app.efs"
    with open(archive, "wb") as out:
        pack(sample_entries(), out)
    made = {}
    for name, binary in (("pie", c_programs["pie"]), ("python3", Path("/usr/bin/python3").resolve())):
        made[name] = root / name
        inject(binary, archive, made[name], validate=False)  # lief's extra parse is not under test here
        assert find_embedded(made[name]) is not None
    return made


@pytest.mark.parametrize("params", PARAMETER_SETS)
def test_debian_python3(tool, params) -> None:
    assert_same(tool, Path("/usr/bin/python3").resolve(), params)


@pytest.mark.parametrize("variant", sorted(C_VARIANTS))
@pytest.mark.parametrize("params", PARAMETER_SETS)
def test_gcc_programs(tool, c_programs, variant, params) -> None:
    assert_same(tool, c_programs[variant], params)


@pytest.mark.parametrize("name", ["pie", "python3"])
@pytest.mark.parametrize("params", PARAMETER_SETS[:3])
def test_executables_with_an_embedfs(tool, c_programs, injected, name, params) -> None:
    value = assert_same(tool, injected[name], params)
    if name == "pie":
        assert value != python_measure(c_programs["pie"], *params)  # the archive is measured


def test_every_parameter_changes_the_c_result(tool, c_programs) -> None:
    path = c_programs["pie"]
    values = {c_measure(tool, path, *p).stdout for p in [
        (1 << 20, 1 << 16, 2, 1), (2 << 20, 1 << 16, 2, 1), (1 << 20, 2 << 16, 2, 1),
        (1 << 20, 1 << 16, 3, 1), (1 << 20, 1 << 16, 2, 2)]}
    assert len(values) == 5


# ---------------------------------------------------------------------------------------------
# refusals


def test_non_elf_is_refused(tool, tmp_path) -> None:
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\necho not an ELF\n")
    assert "not an ELF" in assert_both_refuse(tool, path)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_both_refuse(tool, empty)


@pytest.mark.parametrize("keep", [40, 1000, -100])
def test_truncated_elf_is_refused(tool, c_programs, tmp_path, keep) -> None:
    data = c_programs["pie"].read_bytes()
    path = tmp_path / "truncated"
    path.write_bytes(data[:keep])
    assert "truncated" in assert_both_refuse(tool, path)


def test_32_bit_and_wrong_machine_are_refused(tool, c_programs, tmp_path) -> None:
    data = bytearray(c_programs["pie"].read_bytes())
    for name, at, value in (("class", 4, b"\x01"), ("machine", 18, b"\x03\x00"), ("type", 16, b"\x01\x00")):
        path = tmp_path / name
        path.write_bytes(bytes(data[:at]) + value + bytes(data[at + len(value):]))
        assert_both_refuse(tool, path)


@pytest.mark.parametrize("params", [(4095, 4096, 1, 1), (0, 4096, 1, 1), (4096, 1000, 1, 1), (4096, 4096, 0, 1),
                                    (4096, 4096, 1, 0)])
def test_bad_parameters_are_refused(tool, c_programs, params) -> None:
    assert_both_refuse(tool, c_programs["pie"], params)


def test_a_damaged_descriptor_is_refused(tool, injected, tmp_path) -> None:
    descriptor = find_embedded(injected["pie"])
    note = (descriptor.archive_offset + descriptor.archive_size + 7) // 8 * 8
    data = bytearray(injected["pie"].read_bytes())
    struct.pack_into("<I", data, note + 12 + 8, 2)  # descriptor version 2
    path = tmp_path / "version2"
    path.write_bytes(bytes(data))
    assert "version" in assert_both_refuse(tool, path)


# ---------------------------------------------------------------------------------------------
# hand-made layouts: unaligned, overlapping, p_filesz > p_memsz, gaps, the top of the address space


PT_LOAD, PT_NOTE = 1, 4


def synthetic_elf(segments: list[tuple[int, int, int, int, int]], entry: int, body: bytes,
                  extra: list[tuple] = ()) -> bytes:
    """An x86_64 PIE header, then program headers (PT_LOAD: flags, offset, vaddr, filesz, memsz,
    and raw ``extra`` tuples), over ``body`` (which must leave the first bytes to the headers)."""
    phdrs = [(PT_LOAD, f, o, v, v, fs, ms, 0x1000) for f, o, v, fs, ms in segments] + list(extra)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01".ljust(16, b"\0"), 3, 62, 1, entry, 64, 0, 0,
                         64, 56, len(phdrs), 64, 0, 0)
    table = b"".join(struct.pack("<IIQQQQQQ", *ph) for ph in phdrs)
    start = len(header) + len(table)
    return header + table + body[start:]


BODY = random.Random(7).randbytes(48 * 1024)

HANDMADE = {
    "overlapping-pages": ([(4, 0, 0x10000, 0x1800, 0x1800), (5, 0x1900, 0x11900, 0x2000, 0x2000),
                           (6, 0x4000, 0x13a00, 0x300, 0x5000)], 0x10100),
    "filesz-past-memsz": ([(5, 0, 0x10000, 0x3000, 0x800), (6, 0x3000, 0x10c00, 0x1000, 0x3000)], 0x10000),
    "same-range-twice": ([(5, 0x1000, 0x20000, 0x2000, 0x2000), (6, 0x5000, 0x20800, 0x2000, 0x4000)], 0x20000),
    "gap": ([(5, 0, 0x400000, 0x2000, 0x2000), (6, 0x2000, 0x7f0000000000, 0x1000, 0x10000)], 0x400100),
    "unaligned-bss-only": ([(4, 0x123, 0x30123, 0x2000, 0x2000), (6, 0, 0x33456, 0, 0x2345)], 0x30200),
    "top-of-address-space": ([(5, 0x800, 0xFFFFFFFFFFFFE800, 0x1000, 0x1400)], 0xFFFFFFFFFFFFE900),
    "enclave-of-2^63": ([(5, 0, 0x10000, 0x1000, 0x1000), (6, 0x1000, 0x7FFFFFFFF0000000, 0x800, 0x1000)],
                        0x10000),
    "empty-segments-ignored": ([(5, 0, 0x10000, 0x1000, 0x1000), (6, 0xFFFFFFFF, 0x5000, 0, 0)], 0x10000),
}


@pytest.mark.parametrize("name", sorted(HANDMADE))
def test_handmade_layouts(tool, tmp_path, name) -> None:
    segments, entry = HANDMADE[name]
    path = tmp_path / name
    path.write_bytes(synthetic_elf(segments, entry, BODY))
    for params in PARAMETER_SETS[1:3]:
        assert_same(tool, path, params)


@pytest.mark.parametrize("segments, entry, extra", [
    ([(5, 0, 0x10000, 0x1000, 0x1000)], 0x9000, []),  # entry below the image
    ([(5, 0, 0x10000, 0x1000, 0x1000)], 0x11000, []),  # entry past the image
    ([(5, 0, 0x10000, 0x1000, 0)], 0x10000, []),  # PT_LOADs without memory
    ([(5, 0, 0, 0x1000, 0x1000), (6, 0, 0x7FFFFFFFFFFFF000, 0, 0x1000)], 0x10, []),  # more than 2^63 bytes
    ([(5, 0, 0x10000, 0xC001, 0xD000)], 0x10000, []),  # file bytes past the end
    ([(5, 0, 0x10000, 0x1000, 0x1000)], 0x10000, [(PT_NOTE, 4, 1 << 63, 0, 0, 0, 0, 4)]),  # note offset
    ([], 0, [(PT_NOTE, 4, 0, 0, 0, 0, 0, 4)]),  # no PT_LOAD
])
def test_handmade_refusals(tool, tmp_path, segments, entry, extra) -> None:
    path = tmp_path / "bad"
    path.write_bytes(synthetic_elf(segments, entry, BODY[:0xC000], extra))
    assert_both_refuse(tool, path, PARAMETER_SETS[1])


segment_strategy = st.tuples(
    st.integers(0, 7),  # p_flags
    st.integers(0, len(BODY)),  # p_offset
    st.integers(0, 0x9000),  # p_vaddr above 0x10000
    st.integers(0, 0x4000),  # p_filesz (clipped to the file)
    st.integers(0, 0x6000),  # p_memsz
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(segment_strategy, min_size=1, max_size=5), entry_pick=st.integers(0, 4),
       params=st.sampled_from(PARAMETER_SETS[1:3]))
def test_random_layouts_agree(tool, tmp_path, raw, entry_pick, params) -> None:
    segments = [(f, o, 0x10000 + v, min(fs, len(BODY) - o), ms) for f, o, v, fs, ms in raw]
    entry = segments[entry_pick % len(segments)][2]
    path = tmp_path / "random"
    path.write_bytes(synthetic_elf(segments, entry, BODY))
    try:
        expected = python_measure(path, *params)
    except PYTHON_REFUSALS:
        assert_both_refuse(tool, path, params)
        return
    result = c_measure(tool, path, *params)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
