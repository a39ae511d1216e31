"""Open the embedfs archive of the running process from memory.

The kernel tells a process where its program headers are (getauxval(AT_PHDR), AT_PHNUM); from
them we compute the load bias, find our PT_NOTE, and read the archive where its PT_LOAD is
mapped: no file access, no scanning, no copy.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from embedfs.archive import Archive
from embedfs.elf import PROGRAM_HEADER, PT_LOAD, PT_NOTE, PT_PHDR, Descriptor, ProgramHeader, parse_notes
from embedfs.errors import InputError

AT_PHDR = 3
AT_PHENT = 4
AT_PHNUM = 5


@dataclass(frozen=True)
class LoadedImage:
    """The program headers of the running executable and its load bias."""

    phdr_address: int
    phdrs: tuple[ProgramHeader, ...]
    load_bias: int


def getauxval(kind: int) -> int:
    """libc's getauxval through ctypes (glibc and musl both provide it)."""
    libc = ctypes.CDLL(None)
    function = libc.getauxval
    function.restype = ctypes.c_ulong
    function.argtypes = [ctypes.c_ulong]
    return int(function(kind))


def loaded_image() -> LoadedImage:
    """Read the running executable's program headers from memory and compute its load bias.

    With a PT_PHDR the bias is AT_PHDR - p_vaddr. Without one (static binaries), the injector's
    layout places the program-header table at the very end of the highest PT_LOAD.
    """
    address, entsize, count = getauxval(AT_PHDR), getauxval(AT_PHENT), getauxval(AT_PHNUM)
    if not address or entsize != PROGRAM_HEADER.size or not count:
        raise InputError("this process exposes no usable program headers (AT_PHDR); run an injected executable")
    raw = ctypes.string_at(address, entsize * count)
    phdrs = tuple(ProgramHeader(*PROGRAM_HEADER.unpack_from(raw, i * entsize)) for i in range(count))
    for ph in phdrs:
        if ph.p_type == PT_PHDR:
            return LoadedImage(address, phdrs, address - ph.p_vaddr)
    top = max((ph for ph in phdrs if ph.p_type == PT_LOAD), key=lambda ph: ph.p_vaddr)
    return LoadedImage(address, phdrs, address + entsize * count - (top.p_vaddr + top.p_filesz))


def find_self_descriptor(image: LoadedImage | None = None) -> Descriptor | None:
    """The embedfs descriptor of the running executable, read from its mapped PT_NOTE."""
    image = image or loaded_image()
    for ph in image.phdrs:
        if ph.p_type == PT_NOTE:
            found = parse_notes(ctypes.string_at(image.load_bias + ph.p_vaddr, ph.p_filesz))
            if found is not None:
                return found
    return None


def open_self() -> Archive:
    """The archive embedded in the running executable, read in place from its mapping."""
    image = loaded_image()
    descriptor = find_self_descriptor(image)
    if descriptor is None:
        raise InputError("the running executable carries no embedfs archive; inject one with 'embedfs inject'")
    mapped = (ctypes.c_char * descriptor.archive_size).from_address(image.load_bias + descriptor.archive_vaddr)
    return Archive.open(memoryview(mapped))
