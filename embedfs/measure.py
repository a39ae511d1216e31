"""SGX-style measurement (MRENCLAVE) of an executable with its embedfs archive.

Two levels:

- ``mrenclave_of_pages(pages, enclave_size, ssa_frame_size)``: the SGX record stream
  (ECREATE, then EADD and 16 EEXTENDs per measured page, in the given order) and its SHA-256.
- ``measure_elf(path, heap_size=..., stack_size=..., threads=...)``: lays the executable out as
  an enclave (docs/measurement.md) and measures it.

``Measurement.write_sgxs`` writes the same record stream to a file: its SHA-256 is the MRENCLAVE.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

from embedfs.elf import PT_LOAD, find_embedded, open_readonly, read_elf_header, read_program_headers
from embedfs.errors import InputError

PAGE_SIZE = 4096
EEXTEND_CHUNK = 256

# SECINFO.FLAGS (SDM vol. 3D, 38.11): permissions in bits 2:0, page type in bits 15:8
SECINFO_R = 0x1
SECINFO_W = 0x2
SECINFO_X = 0x4
PT_SECS = 0x000
PT_TCS = 0x100
PT_REG = 0x200

ECREATE_RECORD = struct.Struct("<8sIQ44x")
EADD_RECORD = struct.Struct("<8sQQ40x")
EEXTEND_HEADER = struct.Struct("<8sQ48x")

# Defaults, in the spirit of SCONE's SCONE_HEAP / SCONE_STACK / thread count; reused by the
# pipeline and written into the manifest.
DEFAULT_HEAP_SIZE = 64 * 1024 * 1024
DEFAULT_STACK_SIZE = 2 * 1024 * 1024
DEFAULT_THREADS = 8
DEFAULT_SSA_FRAME_SIZE = 1
SSA_FRAMES_PER_THREAD = 2  # TCS.NSSA
LAYOUT_VERSION = 1

ZERO_PAGE = bytes(PAGE_SIZE)


@dataclass(frozen=True)
class Page:
    """One enclave page: offset from the enclave base, SECINFO flags, 4 KiB content (None =
    zeros) and whether its content is measured (EEXTEND) or only added (EADD)."""

    offset: int
    flags: int
    data: bytes | memoryview | None = None
    measured: bool = True


@dataclass(frozen=True)
class Region:
    """A named part of the enclave layout, for humans and the manifest."""

    name: str
    offset: int
    size: int
    flags: int
    measured: bool


@dataclass
class Measurement:
    """The MRENCLAVE of an executable laid out as an enclave, with the layout that produced it."""

    mrenclave: str
    enclave_size: int
    ssa_frame_size: int
    parameters: dict
    regions: list[Region]
    page_count: int
    measured_pages: int
    embedfs: dict | None
    pages_factory: Callable[[], Iterator[Page]] = field(repr=False)

    def write_sgxs(self, target: str | os.PathLike | BinaryIO) -> str:
        """Write the record stream as an .sgxs file; return its SHA-256 (equal to mrenclave)."""
        digest = hashlib.sha256()

        def emit(handle: BinaryIO) -> None:
            for chunk in record_stream(self.pages_factory(), self.enclave_size, self.ssa_frame_size):
                digest.update(chunk)
                handle.write(chunk)

        if hasattr(target, "write"):
            emit(target)  # type: ignore[arg-type]
        else:
            from embedfs.elf import AtomicOutput

            with AtomicOutput(target, 0o644) as handle:
                emit(handle)
        return digest.hexdigest()

    def as_dict(self) -> dict:
        """A JSON-ready summary (sorted keys when dumped) for --json and manifests."""
        return {
            "mrenclave": self.mrenclave,
            "enclave_size": self.enclave_size,
            "ssa_frame_size": self.ssa_frame_size,
            "parameters": dict(self.parameters),
            "page_count": self.page_count,
            "measured_pages": self.measured_pages,
            "embedfs": None if self.embedfs is None else dict(self.embedfs),
            "regions": [
                {"name": r.name, "offset": r.offset, "size": r.size, "flags": r.flags, "measured": r.measured}
                for r in self.regions
            ],
        }


# ---------------------------------------------------------------------------------------------
# the record stream


def check_enclave_size(enclave_size: int) -> None:
    if enclave_size < 2 * PAGE_SIZE or enclave_size & (enclave_size - 1):
        raise InputError(f"enclave size {enclave_size} is not a power of two of at least 8 KiB; round it up")


def ecreate_record(enclave_size: int, ssa_frame_size: int) -> bytes:
    return ECREATE_RECORD.pack(b"ECREATE\x00", ssa_frame_size, enclave_size)


def eadd_record(offset: int, flags: int) -> bytes:
    return EADD_RECORD.pack(b"EADD\x00\x00\x00\x00", offset, flags)


def eextend_records(offset: int, data: bytes | memoryview) -> bytes:
    """The 16 EEXTEND records (64-byte header + 256 data bytes each) of one 4 KiB page."""
    parts = []
    for at in range(0, PAGE_SIZE, EEXTEND_CHUNK):
        parts.append(EEXTEND_HEADER.pack(b"EEXTEND\x00", offset + at))
        parts.append(data[at:at + EEXTEND_CHUNK])
    return b"".join(parts)


def record_stream(pages: Iterable[Page], enclave_size: int, ssa_frame_size: int) -> Iterator[bytes]:
    """Yield the ECREATE/EADD/EEXTEND record stream for ``pages`` in order, in ~1 MiB pieces."""
    check_enclave_size(enclave_size)
    if ssa_frame_size < 1:
        raise InputError(f"SSA frame size {ssa_frame_size} must be at least 1 page")
    seen: set[int] = set()
    buffer = [ecreate_record(enclave_size, ssa_frame_size)]
    buffered = 0
    for page in pages:
        if page.offset % PAGE_SIZE or not 0 <= page.offset < enclave_size:
            raise InputError(f"page offset {page.offset:#x} is not a page-aligned offset inside the "
                             f"{enclave_size:#x}-byte enclave; fix the page list")
        if page.offset in seen:
            raise InputError(f"page offset {page.offset:#x} is added twice; EADD each page once")
        seen.add(page.offset)
        buffer.append(eadd_record(page.offset, page.flags))
        if page.measured:
            data = ZERO_PAGE if page.data is None else page.data
            if len(data) != PAGE_SIZE:
                raise InputError(f"page {page.offset:#x} has {len(data)} bytes; give exactly 4096")
            buffer.append(eextend_records(page.offset, data))
            buffered += PAGE_SIZE
        if buffered >= 1 << 20:
            yield b"".join(buffer)
            buffer, buffered = [], 0
    yield b"".join(buffer)


def mrenclave_of_pages(pages: Iterable[Page], enclave_size: int, ssa_frame_size: int = 1) -> str:
    """MRENCLAVE (hex) of an enclave built by ECREATE and EADD/EEXTEND of ``pages`` in order."""
    digest = hashlib.sha256()
    for chunk in record_stream(pages, enclave_size, ssa_frame_size):
        digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the enclave layout of an executable (docs/measurement.md)


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD as the layout needs it: file range, address range, SECINFO permissions."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    perms: int


def secinfo_perms(p_flags: int) -> int:
    """ELF PF_X=1, PF_W=2, PF_R=4 -> SECINFO X=4, W=2, R=1."""
    return (SECINFO_R if p_flags & 4 else 0) | (SECINFO_W if p_flags & 2 else 0) | (SECINFO_X if p_flags & 1 else 0)


def parse_size(text: str) -> int:
    """'64M' -> 67108864; accepts K, M, G, T suffixes (powers of 1024) and optional 'B'/'iB'."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = 1
    if value and value[-1] in "KMGT":
        factor = 1024 ** ("KMGT".index(value[-1]) + 1)
        value = value[:-1]
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"size {text!r} is not a number with an optional K/M/G/T suffix, e.g. 64M") from None
    if number < 0:
        raise InputError(f"size {text!r} is negative; give a positive size")
    return number * factor


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def tcs_page(ossa: int, nssa: int, oentry: int, thread_area: int) -> bytes:
    """A TCS (SDM vol. 3D, 38.8): FLAGS 0, OSSA, CSSA 0, NSSA, OENTRY, OFS/GSBASE, limits."""
    head = struct.pack("<QQQIIQQQQII", 0, 0, ossa, 0, nssa, oentry, 0, thread_area, thread_area,
                       0xFFF, 0xFFF)
    return head + bytes(PAGE_SIZE - len(head))


def plan_enclave(segments: list[Segment], entry: int, *, heap_size: int, stack_size: int,
                 threads: int, ssa_frame_size: int) -> tuple[list[Region], int, int]:
    """Regions of the enclave layout, the image base vaddr and the enclave size."""
    if threads < 1:
        raise InputError(f"thread count {threads} must be at least 1")
    for name, value in (("heap", heap_size), ("stack", stack_size)):
        if value <= 0 or value % PAGE_SIZE:
            raise InputError(f"{name} size {value} must be a positive multiple of 4 KiB, e.g. 64M")
    base = min(s.vaddr for s in segments) // PAGE_SIZE * PAGE_SIZE
    image_end = align_up(max(s.vaddr + s.memsz for s in segments), PAGE_SIZE) - base
    regions = [Region("image", 0, image_end, PT_REG, True)]
    cursor = image_end + PAGE_SIZE  # guard page
    regions.append(Region("heap", cursor, heap_size, PT_REG | SECINFO_R | SECINFO_W, False))
    cursor += heap_size
    ssa_size = SSA_FRAMES_PER_THREAD * ssa_frame_size * PAGE_SIZE
    for thread in range(threads):
        cursor += PAGE_SIZE  # guard page below each stack
        regions.append(Region(f"stack[{thread}]", cursor, stack_size, PT_REG | SECINFO_R | SECINFO_W, False))
        cursor += stack_size
        regions.append(Region(f"tcs[{thread}]", cursor, PAGE_SIZE, PT_TCS, True))
        cursor += PAGE_SIZE
        regions.append(Region(f"ssa[{thread}]", cursor, ssa_size, PT_REG | SECINFO_R | SECINFO_W, False))
        cursor += ssa_size
    enclave_size = max(2 * PAGE_SIZE, 1 << (cursor - 1).bit_length())
    if not 0 <= entry - base < image_end:
        raise InputError(f"entry point {entry:#x} lies outside the loaded segments; give a linked executable")
    return regions, base, enclave_size


def image_pages(segments: list[Segment], base: int, mapped: bytes | memoryview | mmap.mmap) -> Iterator[Page]:
    """Pages of the loaded ELF image: each page's content is what the loader maps there
    (file bytes, zeros past p_filesz); permissions are the union of segments sharing a page."""
    spans: dict[int, int] = {}
    for s in segments:
        first = (s.vaddr - base) // PAGE_SIZE
        last = (s.vaddr - base + s.memsz + PAGE_SIZE - 1) // PAGE_SIZE
        for index in range(first, last):
            spans[index] = spans.get(index, 0) | s.perms
    for index in sorted(spans):
        page_start = base + index * PAGE_SIZE
        content = bytearray(PAGE_SIZE)
        for s in segments:
            lo = max(page_start, s.vaddr)
            hi = min(page_start + PAGE_SIZE, s.vaddr + s.filesz)
            if lo < hi:
                at = s.offset + lo - s.vaddr
                content[lo - page_start:hi - page_start] = mapped[at:at + hi - lo]
        yield Page(index * PAGE_SIZE, PT_REG | spans[index], bytes(content), True)


def layout_pages(segments: list[Segment], base: int, regions: list[Region], entry: int,
                 mapped: bytes | memoryview | mmap.mmap, ssa_frame_size: int) -> Iterator[Page]:
    """Every page of the layout, in offset order."""
    yield from image_pages(segments, base, mapped)
    for region in regions[1:]:
        if region.name.startswith("tcs["):
            ssa = next(r for r in regions if r.offset == region.offset + PAGE_SIZE)
            data = tcs_page(ssa.offset, SSA_FRAMES_PER_THREAD, entry - base, region.offset)
            yield Page(region.offset, region.flags, data, True)
            continue
        for at in range(region.offset, region.offset + region.size, PAGE_SIZE):
            yield Page(at, region.flags, None, region.measured)


def read_segments(path: str | os.PathLike) -> tuple[list[Segment], int, int]:
    """The PT_LOAD segments, entry point and file size of an x86_64 executable."""
    fd = open_readonly(path)
    try:
        size = os.fstat(fd).st_size
        header = read_elf_header(fd, str(path))
        phdrs = read_program_headers(fd, header, size, str(path))
    finally:
        os.close(fd)
    segments = [Segment(ph.p_offset, ph.p_vaddr, ph.p_filesz, ph.p_memsz, secinfo_perms(ph.p_flags))
                for ph in phdrs if ph.p_type == PT_LOAD and ph.p_memsz]
    return segments, header.e_entry, size


def measure_elf(path: str | os.PathLike, *, heap_size: int = DEFAULT_HEAP_SIZE,
                stack_size: int = DEFAULT_STACK_SIZE, threads: int = DEFAULT_THREADS,
                ssa_frame_size: int = DEFAULT_SSA_FRAME_SIZE) -> Measurement:
    """Lay ``path`` out as an enclave (every PT_LOAD incl. the embedfs one, heap, per-thread
    stack/TCS/SSA) and compute its MRENCLAVE."""
    segments, entry, _size = read_segments(path)
    regions, base, enclave_size = plan_enclave(segments, entry, heap_size=heap_size,
                                               stack_size=stack_size, threads=threads,
                                               ssa_frame_size=ssa_frame_size)

    def pages() -> Iterator[Page]:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield from layout_pages(segments, base, regions, entry, mapped, ssa_frame_size)

    digest = hashlib.sha256()
    count = measured = 0

    def counted() -> Iterator[Page]:
        nonlocal count, measured
        for page in pages():
            count += 1
            measured += page.measured
            yield page

    for chunk in record_stream(counted(), enclave_size, ssa_frame_size):
        digest.update(chunk)
    parameters = {
        "heap_size": heap_size,
        "stack_size": stack_size,
        "threads": threads,
        "ssa_frame_size": ssa_frame_size,
        "layout_version": LAYOUT_VERSION,
    }
    descriptor = find_embedded(path)
    embedded = None if descriptor is None else {
        "offset": descriptor.archive_vaddr - base,  # enclave offset; inside the "image" region
        "size": descriptor.archive_size,
        "root_hash": descriptor.root_hash,
    }
    return Measurement(digest.hexdigest(), enclave_size, ssa_frame_size, parameters, regions,
                       count, measured, embedded, pages)
