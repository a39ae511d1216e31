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
import os
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, pairwise, repeat
from typing import BinaryIO

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

ECREATE_TAG = b"ECREATE\x00"
EADD_TAG = b"EADD\x00\x00\x00\x00"
EEXTEND_TAG = b"EEXTEND\x00"
ECREATE_RECORD = struct.Struct("<8sIQ44x")
EADD_RECORD = struct.Struct("<8sQQ40x")
EEXTEND_HEADER = struct.Struct("<8sQ48x")
EEXTENDS_PER_PAGE = PAGE_SIZE // EEXTEND_CHUNK  # 16
# Everything one measured page adds to the stream, packed in one call: its EADD, then 16 times
# an EEXTEND header and the 256 data bytes it covers (5184 bytes in all).
MEASURED_PAGE_RECORDS = struct.Struct(EADD_RECORD.format + (EEXTEND_HEADER.format[1:] + "256s") * EEXTENDS_PER_PAGE)
PAGE_CHUNKS = struct.Struct("256s" * EEXTENDS_PER_PAGE)  # a page cut into its EEXTEND chunks

# Defaults, in the spirit of SCONE's SCONE_HEAP / SCONE_STACK / thread count; reused by the
# pipeline and written into the manifest.
DEFAULT_HEAP_SIZE = 64 * 1024 * 1024
DEFAULT_STACK_SIZE = 2 * 1024 * 1024
DEFAULT_THREADS = 8
DEFAULT_SSA_FRAME_SIZE = 1
SSA_FRAMES_PER_THREAD = 2  # TCS.NSSA
LAYOUT_VERSION = 1

ZERO_PAGE = bytes(PAGE_SIZE)
BLOCK_PAGES = 32  # pages of file content per os.preadv: 512 data slots, half of Linux's IOV_MAX
PIECE_PAGES = 256  # other runs are yielded in pieces of at most this many pages


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
    records_factory: Callable[[], Iterator[bytes | memoryview]] = field(repr=False)

    def write_sgxs(self, target: str | os.PathLike | BinaryIO) -> str:
        """Write the record stream as an .sgxs file; return its SHA-256 (equal to mrenclave)."""
        digest = hashlib.sha256()

        def emit(handle: BinaryIO) -> None:
            for chunk in self.records_factory():
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
    return ECREATE_RECORD.pack(ECREATE_TAG, ssa_frame_size, enclave_size)


def eadd_record(offset: int, flags: int) -> bytes:
    return EADD_RECORD.pack(EADD_TAG, offset, flags)


def measured_page_records(offset: int, flags: int, data: bytes | memoryview) -> bytes:
    """The EADD and the 16 EEXTEND records (64-byte header + 256 data bytes each) of one page."""
    chunk_offsets = range(offset, offset + PAGE_SIZE, EEXTEND_CHUNK)
    eextends = chain.from_iterable(zip(repeat(EEXTEND_TAG), chunk_offsets, PAGE_CHUNKS.unpack(data)))
    return MEASURED_PAGE_RECORDS.pack(EADD_TAG, offset, flags, *eextends)


def check_stream_parameters(enclave_size: int, ssa_frame_size: int) -> None:
    check_enclave_size(enclave_size)
    if ssa_frame_size < 1:
        raise InputError(f"SSA frame size {ssa_frame_size} must be at least 1 page")


def record_stream(pages: Iterable[Page], enclave_size: int, ssa_frame_size: int) -> Iterator[bytes]:
    """Yield the ECREATE/EADD/EEXTEND record stream for ``pages`` in order, in ~1 MiB pieces."""
    check_stream_parameters(enclave_size, ssa_frame_size)
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
        if page.measured:
            data = ZERO_PAGE if page.data is None else page.data
            if len(data) != PAGE_SIZE:
                raise InputError(f"page {page.offset:#x} has {len(data)} bytes; give exactly 4096")
            buffer.append(measured_page_records(page.offset, page.flags, data))
            buffered += PAGE_SIZE
        else:
            buffer.append(eadd_record(page.offset, page.flags))
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


@dataclass(frozen=True)
class PageRun:
    """``count`` consecutive enclave pages from ``offset`` with the same SECINFO flags and the
    same kind of content: pages of the executable from ``file_offset``, or the single page
    ``data``, or zeros (neither given). Unmeasured pages have no content."""

    offset: int
    count: int
    flags: int
    measured: bool
    file_offset: int | None = None
    data: bytes | None = None


def image_runs(segments: list[Segment], base: int, fd: int) -> list[PageRun]:
    """Pages of the loaded ELF image: each page's content is what the loader maps there
    (file bytes, zeros past p_filesz); permissions are the union of segments sharing a page.

    The image is cut at every page where a segment's memory or file bytes begin or end and
    where its file bytes begin and stop covering whole pages. Between two cuts all pages are
    alike, so a run that lies inside one segment's file bytes is read straight from the file;
    pages that hold the edge of a segment's file bytes, or bytes of several, are composed."""
    cuts: set[int] = set()
    for s in segments:
        start = s.vaddr - base
        cuts.update((start // PAGE_SIZE, -(-(start + s.memsz) // PAGE_SIZE)))
        if s.filesz:
            end = start + s.filesz
            cuts.update((-(-start // PAGE_SIZE), end // PAGE_SIZE, -(-end // PAGE_SIZE)))
    runs = []
    for first, last in pairwise(sorted(cuts)):
        lo = base + first * PAGE_SIZE  # the vaddr range of the first page of the run
        hi = lo + PAGE_SIZE
        mapped = [s for s in segments if s.vaddr < hi and lo < s.vaddr + s.memsz]
        if not mapped:
            continue  # a gap between segments: not part of the enclave
        flags = PT_REG
        for s in mapped:
            flags |= s.perms
        offset, count = first * PAGE_SIZE, last - first
        loaded = [s for s in segments if s.vaddr < hi and lo < s.vaddr + s.filesz]
        if not loaded:
            runs.append(PageRun(offset, count, flags, True))
        elif len(loaded) == 1 and loaded[0].vaddr <= lo and hi <= loaded[0].vaddr + loaded[0].filesz:
            runs.append(PageRun(offset, count, flags, True, file_offset=loaded[0].offset + lo - loaded[0].vaddr))
        else:
            for index in range(first, last):
                data = composed_page(segments, base + index * PAGE_SIZE, fd)
                runs.append(PageRun(index * PAGE_SIZE, 1, flags, True, data=data))
    return runs


def composed_page(segments: list[Segment], page_start: int, fd: int) -> bytes:
    """The content of the page at vaddr ``page_start``: each segment's file bytes in turn
    (later segments win), zeros elsewhere."""
    content = bytearray(PAGE_SIZE)
    for s in segments:
        lo = max(page_start, s.vaddr)
        hi = min(page_start + PAGE_SIZE, s.vaddr + s.filesz)
        if lo < hi:
            data = os.pread(fd, hi - lo, s.offset + lo - s.vaddr)
            if len(data) != hi - lo:
                raise InputError("the executable was truncated while being measured; measure it again")
            content[lo - page_start:hi - page_start] = data
    return bytes(content)


def layout_runs(segments: list[Segment], base: int, regions: list[Region], entry: int,
                fd: int) -> list[PageRun]:
    """Every page of the layout, in offset order, as runs."""
    runs = image_runs(segments, base, fd)
    for region in regions[1:]:
        if region.name.startswith("tcs["):
            ssa = next(r for r in regions if r.offset == region.offset + PAGE_SIZE)
            data = tcs_page(ssa.offset, SSA_FRAMES_PER_THREAD, entry - base, region.offset)
            runs.append(PageRun(region.offset, 1, region.flags, True, data=data))
        else:
            runs.append(PageRun(region.offset, region.size // PAGE_SIZE, region.flags, region.measured))
    return runs


def le_words(values: Iterable[int]) -> array:
    """64-bit little-endian words, as an array that can be copied into a buffer's words."""
    words = array("Q", values)
    if sys.byteorder == "big":
        words.byteswap()
    return words


class FilePageRecords:
    """Builds the records of measured pages read from a file, BLOCK_PAGES pages at a time, in
    one reusable buffer (5184 bytes a page).

    Done page by page, Python work per 256-byte EEXTEND chunk dominates measuring. Here the
    tags and zero fields are written once; for each block one ``os.preadv`` scatters the file
    bytes straight into the 16 data slots of every page, and the page offsets, flags and
    chunk offsets are set as strided columns of 64-bit words, one slice assignment each."""

    WORDS_PER_PAGE = MEASURED_PAGE_RECORDS.size // 8
    EADD_OFFSET_WORD = 1
    EADD_FLAGS_WORD = 2
    # where each EEXTEND (320 bytes) of a page starts in its records: after the EADD (64 bytes)
    EEXTEND_STARTS = tuple(range(EADD_RECORD.size, MEASURED_PAGE_RECORDS.size, EEXTEND_HEADER.size + EEXTEND_CHUNK))
    EEXTEND_OFFSET_WORDS = tuple((start + 8) // 8 for start in EEXTEND_STARTS)  # after the tag

    def __init__(self) -> None:
        self.buffer = bytearray(measured_page_records(0, 0, ZERO_PAGE) * BLOCK_PAGES)
        self.view = memoryview(self.buffer)
        self.words = self.view.cast("Q")
        # the 256 data bytes of every EEXTEND, in stream order: the targets of os.preadv
        self.data_slots = []
        for page in range(BLOCK_PAGES):
            for start in self.EEXTEND_STARTS:
                at = page * MEASURED_PAGE_RECORDS.size + start + EEXTEND_HEADER.size
                self.data_slots.append(self.view[at:at + EEXTEND_CHUNK])

    def records(self, fd: int, run: PageRun) -> Iterator[memoryview]:
        """The records of ``run``, a block at a time. Each block is a view of the one buffer:
        use it before asking for the next."""
        assert run.file_offset is not None
        stride = self.WORDS_PER_PAGE
        for first in range(0, run.count, BLOCK_PAGES):
            pages = min(BLOCK_PAGES, run.count - first)
            size = pages * PAGE_SIZE
            if os.preadv(fd, self.data_slots[:pages * EEXTENDS_PER_PAGE], run.file_offset + first * PAGE_SIZE) != size:
                raise InputError("the executable was truncated while being measured; measure it again")
            at = run.offset + first * PAGE_SIZE
            words = self.words[:pages * stride]
            words[self.EADD_OFFSET_WORD::stride] = le_words(range(at, at + size, PAGE_SIZE))
            words[self.EADD_FLAGS_WORD::stride] = le_words(repeat(run.flags, pages))
            for k, word in enumerate(self.EEXTEND_OFFSET_WORDS):
                chunk_at = at + k * EEXTEND_CHUNK
                words[word::stride] = le_words(range(chunk_at, chunk_at + size, PAGE_SIZE))
            yield self.view[:pages * MEASURED_PAGE_RECORDS.size]


def run_records(runs: list[PageRun], fd: int, enclave_size: int,
                ssa_frame_size: int) -> Iterator[bytes | memoryview]:
    """The record stream of ``runs`` (in offset order; file content read from ``fd``): the same
    bytes ``record_stream`` gives for the same pages one by one. Use each piece before asking
    for the next (some are views of a reused buffer)."""
    check_stream_parameters(enclave_size, ssa_frame_size)
    yield ecreate_record(enclave_size, ssa_frame_size)
    from_file = FilePageRecords()
    end = 0
    for run in runs:
        if run.offset % PAGE_SIZE or run.offset < end or run.offset + run.count * PAGE_SIZE > enclave_size:
            raise InputError(f"pages at {run.offset:#x} overlap others or lie outside the enclave; fix the layout")
        end = run.offset + run.count * PAGE_SIZE
        if run.measured and run.file_offset is not None:
            yield from from_file.records(fd, run)
            continue
        for piece in range(run.offset, end, PIECE_PAGES * PAGE_SIZE):  # bounded memory per piece
            offsets = range(piece, min(end, piece + PIECE_PAGES * PAGE_SIZE), PAGE_SIZE)
            if not run.measured:
                yield b"".join(map(EADD_RECORD.pack, repeat(EADD_TAG), offsets, repeat(run.flags)))
            else:
                data = ZERO_PAGE if run.data is None else run.data
                yield b"".join(measured_page_records(at, run.flags, data) for at in offsets)


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

    fd = open_readonly(path)
    try:
        runs = layout_runs(segments, base, regions, entry, fd)
    finally:
        os.close(fd)

    def records() -> Iterator[bytes | memoryview]:
        fd = open_readonly(path)
        try:
            yield from run_records(runs, fd, enclave_size, ssa_frame_size)
        finally:
            os.close(fd)

    digest = hashlib.sha256()
    for chunk in records():
        digest.update(chunk)
    count = sum(run.count for run in runs)
    measured = sum(run.count for run in runs if run.measured)
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
                       count, measured, embedded, records)
