"""Append an embedfs archive to an x86_64 ELF executable, and find it again.

The original bytes stay where they are. Only two ELF header fields change (e_phoff, e_phnum);
after the original end of file come, page-aligned: the archive, a PT_NOTE descriptor and a new
program-header table, all covered by one new read-only PT_LOAD above every existing segment.
See docs/embedfs-format.md. Finding the archive needs only the ELF header, the program headers
and the note: no lief, no scanning.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from embedfs.archive import Archive
from embedfs.errors import AlreadyEmbeddedError, FormatError, InputError, NotELFError

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
NOTE_HEADER = struct.Struct("<III")

ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC = 2
ET_DYN = 3
PT_LOAD = 1
PT_NOTE = 4
PT_PHDR = 6
PF_R = 4
PAGE_SIZE = 0x1000

NOTE_NAME = b"EMBEDFS\x00"
NT_EMBEDFS = 0x53464245  # "EBFS"
DESCRIPTOR_VERSION = 1
# version, flags, archive offset, archive vaddr, archive size, original size, original e_phoff,
# original e_phnum, reserved, root hash
DESCRIPTOR = struct.Struct("<IIQQQQQHHI32s")
NOTE_SIZE = NOTE_HEADER.size + len(NOTE_NAME) + DESCRIPTOR.size


@dataclass(frozen=True)
class ElfHeader:
    """The fields of an ELF64 header we read or change."""

    e_type: int
    e_machine: int
    e_entry: int
    e_phoff: int
    e_shoff: int
    e_phentsize: int
    e_phnum: int
    e_shentsize: int
    e_shnum: int
    raw: bytes


@dataclass(frozen=True)
class ProgramHeader:
    p_type: int
    p_flags: int
    p_offset: int
    p_vaddr: int
    p_paddr: int
    p_filesz: int
    p_memsz: int
    p_align: int

    def pack(self) -> bytes:
        return PROGRAM_HEADER.pack(self.p_type, self.p_flags, self.p_offset, self.p_vaddr,
                                   self.p_paddr, self.p_filesz, self.p_memsz, self.p_align)


@dataclass(frozen=True)
class Descriptor:
    """The PT_NOTE payload that says where the archive is and what the original file was."""

    archive_offset: int
    archive_vaddr: int
    archive_size: int
    original_size: int
    original_phoff: int
    original_phnum: int
    root_hash: str

    def pack(self) -> bytes:
        desc = DESCRIPTOR.pack(DESCRIPTOR_VERSION, 0, self.archive_offset, self.archive_vaddr,
                               self.archive_size, self.original_size, self.original_phoff,
                               self.original_phnum, 0, 0, bytes.fromhex(self.root_hash))
        return NOTE_HEADER.pack(len(NOTE_NAME), len(desc), NT_EMBEDFS) + NOTE_NAME + desc


@dataclass(frozen=True)
class InjectResult:
    """Where ``inject`` put the archive in the output executable."""

    output: str
    archive_offset: int
    archive_vaddr: int
    archive_size: int
    root_hash: str
    original_size: int
    output_size: int
    phdr_offset: int
    phnum: int


# ---------------------------------------------------------------------------------------------
# reading headers (pure Python, no lief)


def read_elf_header(fd: int, name: str) -> ElfHeader:
    """Parse and check the ELF header: ELF64, little-endian, x86_64, executable or PIE."""
    raw = os.pread(fd, ELF_HEADER.size, 0)
    if len(raw) < 4 or raw[:4] != b"\x7fELF":
        raise NotELFError(f"{name} is not an ELF file; give a Linux x86_64 executable")
    if len(raw) < ELF_HEADER.size:
        raise NotELFError(f"{name} is a truncated ELF file ({len(raw)} bytes); give a complete executable")
    if raw[4] != ELFCLASS64 or raw[5] != ELFDATA2LSB:
        raise NotELFError(f"{name} is a 32-bit or big-endian ELF; only 64-bit little-endian x86_64 executables are supported")
    header = parse_header_bytes(raw, name)
    if header.e_machine != EM_X86_64:
        raise NotELFError(f"{name} is an ELF for machine {header.e_machine}, not x86_64 (62); give an x86_64 executable")
    if header.e_type not in (ET_EXEC, ET_DYN):
        raise NotELFError(f"{name} is an ELF of type {header.e_type}, not an executable; give a program (ET_EXEC or PIE)")
    if header.e_phentsize != PROGRAM_HEADER.size or header.e_phnum == 0 or header.e_phnum >= 0xFFFF:
        raise NotELFError(f"{name} has no usable program-header table; give a linked executable")
    return header


def read_program_headers(fd: int, header: ElfHeader, file_size: int, name: str) -> list[ProgramHeader]:
    """Read the program headers and check that every table and segment lies inside the file."""
    table_end = header.e_phoff + header.e_phnum * PROGRAM_HEADER.size
    if table_end > file_size:
        raise NotELFError(f"{name} is truncated: its program headers end at {table_end}, the file at {file_size}")
    raw = os.pread(fd, table_end - header.e_phoff, header.e_phoff)
    phdrs = [ProgramHeader(*PROGRAM_HEADER.unpack_from(raw, i * PROGRAM_HEADER.size))
             for i in range(header.e_phnum)]
    for index, ph in enumerate(phdrs):
        if ph.p_filesz and ph.p_offset + ph.p_filesz > file_size:
            raise NotELFError(f"{name} is truncated: segment {index} ends at {ph.p_offset + ph.p_filesz}, "
                              f"the file at {file_size}; give a complete executable")
    if header.e_shnum and header.e_shoff and header.e_shoff + header.e_shnum * header.e_shentsize > file_size:
        raise NotELFError(f"{name} is truncated: its section headers end past the file end ({file_size}); "
                          "give a complete executable")
    if not any(ph.p_type == PT_LOAD for ph in phdrs):
        raise NotELFError(f"{name} has no PT_LOAD segment; give a linked executable")
    return phdrs


def find_descriptor_in(fd: int, phdrs: list[ProgramHeader], file_size: int) -> Descriptor | None:
    """The embedfs descriptor from the PT_NOTE segments, or None if there is none."""
    for ph in phdrs:
        if ph.p_type != PT_NOTE or ph.p_filesz > 1 << 20:
            continue
        found = parse_notes(os.pread(fd, ph.p_filesz, ph.p_offset))
        if found is not None:
            return found
    return None


def parse_notes(data: bytes | memoryview) -> Descriptor | None:
    """Walk the notes of one PT_NOTE segment (4-byte aligned) and decode ours if present."""
    pos = 0
    while pos + NOTE_HEADER.size <= len(data):
        namesz, descsz, note_type = NOTE_HEADER.unpack_from(data, pos)
        name_at = pos + NOTE_HEADER.size
        desc_at = name_at + align_up(namesz, 4)
        if bytes(data[name_at:name_at + namesz]) == NOTE_NAME and note_type == NT_EMBEDFS:
            return decode_descriptor(bytes(data[desc_at:desc_at + descsz]))
        pos = desc_at + align_up(descsz, 4)
    return None


def decode_descriptor(desc: bytes) -> Descriptor:
    if len(desc) < DESCRIPTOR.size:
        raise FormatError("embedfs descriptor note is too short; the executable is damaged, re-inject")
    (version, _flags, offset, vaddr, size, original_size, phoff, phnum, _r1, _r2,
     root) = DESCRIPTOR.unpack_from(desc)
    if version != DESCRIPTOR_VERSION:
        raise FormatError(f"embedfs descriptor version {version} is not supported (this reader knows "
                          f"{DESCRIPTOR_VERSION}); upgrade embedfs")
    return Descriptor(offset, vaddr, size, original_size, phoff, phnum, root.hex())


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def open_readonly(path: str | os.PathLike) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot open {path}: {exc.strerror}; check the path") from None
    if not os.path.isfile(path):
        os.close(fd)
        raise InputError(f"{path} is not a regular file; give an executable")
    return fd


def find_embedded(binary: str | os.PathLike) -> Descriptor | None:
    """The descriptor of the archive embedded in ``binary``, or None if it carries none."""
    fd = open_readonly(binary)
    try:
        size = os.fstat(fd).st_size
        header = read_elf_header(fd, str(binary))
        phdrs = read_program_headers(fd, header, size, str(binary))
        descriptor = find_descriptor_in(fd, phdrs, size)
    finally:
        os.close(fd)
    if descriptor is not None and descriptor.archive_offset + descriptor.archive_size > size:
        raise FormatError(f"{binary} is truncated: its embedfs archive ends past the file end; re-inject")
    return descriptor


def require_embedded(binary: str | os.PathLike) -> Descriptor:
    descriptor = find_embedded(binary)
    if descriptor is None:
        raise InputError(f"{binary} carries no embedfs archive; inject one with 'embedfs inject'")
    return descriptor


def open_embedded(binary: str | os.PathLike, code_key: bytes | None = None) -> Archive:
    """Open the archive embedded in ``binary`` for reading (offline, without lief); with
    ``code_key`` its encrypted members can be read too."""
    descriptor = require_embedded(binary)
    archive = Archive.open(binary, offset=descriptor.archive_offset, size=descriptor.archive_size,
                           code_key=code_key)
    if archive.root_hash != descriptor.root_hash:
        archive.close()
        raise FormatError(f"{binary}: the archive's root hash differs from its descriptor; re-inject")
    return archive


def extract_archive(binary: str | os.PathLike, out: str | os.PathLike) -> Descriptor:
    """Copy the archive embedded in ``binary`` to the file ``out``, byte for byte."""
    descriptor = require_embedded(binary)
    with open(binary, "rb") as src, AtomicOutput(out, 0o644) as dst:
        copy_range(src.fileno(), dst.fileno(), descriptor.archive_offset, descriptor.archive_size)
    return descriptor


# ---------------------------------------------------------------------------------------------
# writing


class AtomicOutput:
    """A temporary file beside ``path``, renamed into place only when the block succeeds."""

    def __init__(self, path: str | os.PathLike, mode: int):
        self.path = Path(path)
        self.mode = mode

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, self.mode)
        self.handle = os.fdopen(fd, "wb")
        return self.handle

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)


def copy_range(src_fd: int, dst_fd: int, offset: int, length: int) -> None:
    """Append ``length`` bytes at ``offset`` of src to dst without passing them through Python."""
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src_fd, dst_fd, length - done, offset + done)
        except OSError:
            n = os.sendfile(dst_fd, src_fd, offset + done, length - done)
        if n == 0:
            raise InputError(f"input ended {length - done} bytes early while copying; the file changed during the copy")
        done += n


def structure_parser_config(*, notes: bool = True):
    """A lief ParserConfig for the ELF structure only: no symbols, relocations or overlay
    (and no notes unless asked). lief is imported here, on first use: it costs about a second."""
    import lief

    config = lief.ELF.ParserConfig()
    config.parse_symtab_symbols = False
    config.parse_dyn_symbols = False
    config.parse_relocations = False
    config.parse_symbol_versions = False
    config.parse_overlay = False
    config.parse_notes = notes
    return config


def validate_with_lief(path: str | os.PathLike, name: str) -> None:
    """Have lief parse the ELF structure (without symbols or relocations); refuse what it rejects."""
    import lief

    config = structure_parser_config()
    lief.logging.disable()
    try:
        binary = lief.ELF.parse(str(path), config)
    finally:
        lief.logging.enable()
    if binary is None:
        raise NotELFError(f"{name} is not an ELF file lief can parse; give a Linux x86_64 executable")


def archive_offset_after(original_size: int) -> int:
    """Where the archive starts: on the first page boundary after the original file."""
    return align_up(original_size, PAGE_SIZE)


def plan_layout(header: ElfHeader, phdrs: list[ProgramHeader], original_size: int,
                archive_size: int, root_hash: str) -> tuple[bytes, bytes, Descriptor, int]:
    """Compute the new ELF header, the bytes to append after the archive, the descriptor and
    the archive offset, for an archive appended to the first ``original_size`` bytes."""
    archive_offset = archive_offset_after(original_size)
    note_offset = align_up(archive_offset + archive_size, 8)
    phdr_offset = align_up(note_offset + NOTE_SIZE, 8)
    phnum = len(phdrs) + 2
    end = phdr_offset + phnum * PROGRAM_HEADER.size
    top = max(ph.p_vaddr + ph.p_memsz for ph in phdrs if ph.p_type == PT_LOAD)
    base_vaddr = align_up(top, PAGE_SIZE)

    def vaddr(offset: int) -> int:
        return base_vaddr + offset - archive_offset

    descriptor = Descriptor(archive_offset, base_vaddr, archive_size, original_size,
                            header.e_phoff, header.e_phnum, root_hash)
    new_load = ProgramHeader(PT_LOAD, PF_R, archive_offset, base_vaddr, base_vaddr,
                             end - archive_offset, end - archive_offset, PAGE_SIZE)
    new_note = ProgramHeader(PT_NOTE, PF_R, note_offset, vaddr(note_offset), vaddr(note_offset),
                             NOTE_SIZE, NOTE_SIZE, 4)
    table: list[ProgramHeader] = []
    last_load = max(i for i, ph in enumerate(phdrs) if ph.p_type == PT_LOAD)
    for index, ph in enumerate(phdrs):
        if ph.p_type == PT_PHDR:
            size = phnum * PROGRAM_HEADER.size
            ph = ProgramHeader(PT_PHDR, ph.p_flags, phdr_offset, vaddr(phdr_offset), vaddr(phdr_offset),
                               size, size, ph.p_align)
        table.append(ph)
        if index == last_load:
            table.append(new_load)
    table.append(new_note)
    new_header = bytearray(header.raw)
    struct.pack_into("<Q", new_header, 32, phdr_offset)  # e_phoff
    struct.pack_into("<H", new_header, 56, phnum)  # e_phnum
    tail = bytearray(descriptor.pack())
    tail = bytes(note_offset - (archive_offset + archive_size)) + tail
    tail += bytes(phdr_offset - note_offset - NOTE_SIZE)
    tail += b"".join(ph.pack() for ph in table)
    return bytes(new_header), bytes(tail), descriptor, phdr_offset


def inject(binary: str | os.PathLike, archive: str | os.PathLike, out: str | os.PathLike, *,
           replace: bool = False, validate: bool = True) -> InjectResult:
    """Write ``out``: ``binary`` with ``archive`` appended as a new read-only PT_LOAD.

    Refuses non-ELF, truncated, non-x86_64 input and input that already carries an archive
    (unless ``replace``, which first restores the original file from the descriptor). The input
    is never changed; ``out`` appears only when complete.
    """
    with Archive.open(archive) as arc:  # a valid archive, before anything is written
        root_hash = arc.root_hash
    archive_size = os.stat(archive).st_size

    def append(dst: BinaryIO) -> tuple[int, str]:
        with open(archive, "rb") as arc_file:
            copy_range(arc_file.fileno(), dst.fileno(), 0, archive_size)
        return archive_size, root_hash

    return inject_with(binary, append, out, replace=replace, validate=validate)


def inject_with(binary: str | os.PathLike, append_archive: Callable[[BinaryIO], tuple[int, str]],
                out: str | os.PathLike, *, replace: bool = False, validate: bool = True) -> InjectResult:
    """``inject`` for an archive written straight into ``out``: ``append_archive(dst)`` writes the
    archive at dst's position (the page after the original bytes) and returns its size and root
    hash, e.g. ``embedfs.archive.pack``'s. The same bytes as packing to a file and injecting that,
    without writing the archive twice."""
    name = str(binary)
    if Path(out).resolve() == Path(binary).resolve():
        raise InputError(f"output {out} is the input executable; write to another path")
    fd = open_readonly(binary)
    try:
        size = os.fstat(fd).st_size
        header = read_elf_header(fd, name)
        phdrs = read_program_headers(fd, header, size, name)
        existing = find_descriptor_in(fd, phdrs, size)
        original_size = size
        if existing is not None:
            if not replace:
                raise AlreadyEmbeddedError(f"{name} already carries an embedfs archive; pass --replace "
                                           "(replace=True) to swap it")
            header, phdrs, original_size = original_of(fd, existing, size, name)
        if validate:
            validate_with_lief(binary, name)
        mode = os.fstat(fd).st_mode & 0o7777
        with AtomicOutput(out, mode) as dst:
            copy_range(fd, dst.fileno(), 0, original_size)
            os.lseek(dst.fileno(), 0, os.SEEK_END)
            dst.write(bytes(archive_offset_after(original_size) - original_size))
            dst.flush()
            archive_size, root_hash = append_archive(dst)
            dst.flush()
            new_header, tail, descriptor, phdr_offset = plan_layout(header, phdrs, original_size,
                                                                    archive_size, root_hash)
            os.pwrite(dst.fileno(), new_header, 0)
            os.lseek(dst.fileno(), 0, os.SEEK_END)
            if dst.tell() != descriptor.archive_offset + archive_size:
                raise InputError(f"the archive written into {out} is not the {archive_size} bytes it was said to be")
            dst.write(tail)
            dst.flush()
            output_size = dst.tell()
    finally:
        os.close(fd)
    phnum = len(phdrs) + 2
    return InjectResult(str(out), descriptor.archive_offset, descriptor.archive_vaddr, archive_size,
                        root_hash, original_size, output_size, phdr_offset, phnum)


def original_of(fd: int, descriptor: Descriptor, size: int, name: str) -> tuple[ElfHeader, list[ProgramHeader], int]:
    """The header, program headers and size of the file before its archive was injected."""
    if descriptor.original_size > size:
        raise FormatError(f"{name}: embedfs descriptor names an original size past the file end; the file is damaged")
    raw = bytearray(os.pread(fd, ELF_HEADER.size, 0))
    struct.pack_into("<Q", raw, 32, descriptor.original_phoff)
    struct.pack_into("<H", raw, 56, descriptor.original_phnum)
    header = parse_header_bytes(bytes(raw), name)
    phdrs = read_program_headers(fd, header, descriptor.original_size, name)
    return header, phdrs, descriptor.original_size


def parse_header_bytes(raw: bytes, name: str) -> ElfHeader:
    """Decode the 64-byte ELF header (no checks; see read_elf_header)."""
    (_ident, e_type, e_machine, _v, e_entry, e_phoff, e_shoff, _f, _eh, e_phentsize, e_phnum,
     e_shentsize, e_shnum, _x) = ELF_HEADER.unpack(raw)
    return ElfHeader(e_type, e_machine, e_entry, e_phoff, e_shoff, e_phentsize, e_phnum,
                     e_shentsize, e_shnum, raw)


def restore_original(binary: str | os.PathLike, out: str | os.PathLike) -> Descriptor:
    """Write ``out``: ``binary`` as it was before its archive was injected, byte for byte."""
    name = str(binary)
    fd = open_readonly(binary)
    try:
        size = os.fstat(fd).st_size
        header = read_elf_header(fd, name)
        descriptor = find_descriptor_in(fd, read_program_headers(fd, header, size, name), size)
        if descriptor is None:
            raise InputError(f"{name} carries no embedfs archive; nothing to remove")
        original_header, _phdrs, original_size = original_of(fd, descriptor, size, name)
        with AtomicOutput(out, os.fstat(fd).st_mode & 0o7777) as dst:
            copy_range(fd, dst.fileno(), 0, original_size)
            os.pwrite(dst.fileno(), original_header.raw, 0)
    finally:
        os.close(fd)
    return descriptor
