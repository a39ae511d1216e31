"""Shared objects a service loads at run time, found the way the dynamic loader finds them.

Starting from the executable and every embedded shared object, follow DT_NEEDED (with
DT_RUNPATH/DT_RPATH and ``$ORIGIN``) through the image's library search path, plus the names a
recipe says are dlopen()ed. ELF parsing is LIEF's; the content comes from a callable so the
caller decides where bytes live (the conversion spool).
"""

from __future__ import annotations

import io
import os
import posixpath
from dataclasses import dataclass, field
from typing import Callable

from embedfs.elf import structure_parser_config
from sconify.conversion.select import absolute, is_regular, try_resolve


@dataclass
class LibraryClosure:
    libraries: list[str] = field(default_factory=list)  # regular files (relative paths), sorted
    links: list[str] = field(default_factory=list)  # symlinks the loader follows to them, sorted
    missing: list[str] = field(default_factory=list)  # sonames nobody provides


@dataclass(frozen=True)
class DynamicInfo:
    needed: list[str]  # DT_NEEDED sonames
    runpaths: list[str]  # DT_RUNPATH and DT_RPATH directories, $ORIGIN unexpanded
    interpreter: str  # PT_INTERP (the dynamic loader), "" if none


def dynamic_dependencies(data: bytes) -> DynamicInfo:
    """What an ELF image asks the dynamic loader for; empty for non-ELF or static files."""
    import lief

    lief.logging.disable()
    binary = lief.ELF.parse(io.BytesIO(data), structure_parser_config(notes=False))
    if binary is None:
        return DynamicInfo([], [], "")
    runpaths: list[str] = []
    for entry in binary.dynamic_entries:
        if isinstance(entry, lief.ELF.DynamicEntryRunPath):
            runpaths.extend(entry.paths)
        elif isinstance(entry, lief.ELF.DynamicEntryRpath):
            runpaths.extend(entry.paths)
    interpreter = binary.interpreter if binary.has_interpreter else ""
    return DynamicInfo(list(binary.libraries), runpaths, interpreter)


def dynamic_dependencies_in(path: str, offset: int, size: int) -> DynamicInfo:
    """``dynamic_dependencies`` of the ``size`` bytes at ``offset`` of the file ``path``."""
    with open(path, "rb") as handle:
        return dynamic_dependencies(os.pread(handle.fileno(), size, offset))


def link_chain(fs, path: str) -> list[str]:
    """The symlinks from ``path`` to the file it names, then that file; [] if it is missing."""
    chain: list[str] = []
    current = path
    for _ in range(fs.limits.max_symlink_hops):
        link = try_resolve(fs, current, follow_final=False)
        if link is None:
            return []
        entry = fs.entries[link]
        chain.append(link)
        if entry.kind != "symlink":
            return chain if is_regular(entry) else []
        current = posixpath.join(posixpath.dirname(absolute(link)), entry.linkname)
    return []


def find_library(fs, soname: str, directories: list[str]) -> list[str]:
    """The link chain of the first ``directories/soname`` that leads to a regular file."""
    for directory in directories:
        chain = link_chain(fs, posixpath.join(directory, soname))
        if chain:
            return chain
    return []


def candidate_libraries(fs, search_path: tuple[str, ...]) -> list[str]:
    """Regular files named like shared objects in the search path: what the closure may read."""
    found: set[str] = set()
    for directory in search_path:
        root = try_resolve(fs, directory)
        if root is None or fs.entries[root].kind != "dir":
            continue
        for name in fs.listdir(root):
            path = f"{root}/{name}" if root else name
            entry = fs.entries[path]
            if ".so" in name and is_regular(entry):
                found.add(path)
    return sorted(found)


def library_closure(
    fs,
    start: list[str],
    dynamic_info: Callable[[str], DynamicInfo],
    search_path: tuple[str, ...],
    dlopen: tuple[str, ...],
) -> LibraryClosure:
    """Every shared object reachable from ``start`` (image paths), excluding ``start`` itself.

    ``dynamic_info(path)`` tells what the ELF file at an image path asks the loader for, e.g.
    ``dynamic_dependencies`` of its bytes (the pipeline has lief's helper process read them)."""
    closure = LibraryClosure()
    seen = set(start)
    links: set[str] = set()
    queue = list(start)

    def add(chain: list[str], soname: str) -> None:
        if not chain:
            if soname not in closure.missing:
                closure.missing.append(soname)
            return
        links.update(chain[:-1])
        if chain[-1] not in seen:
            seen.add(chain[-1])
            queue.append(chain[-1])

    for soname in dlopen:
        add(find_library(fs, soname, list(search_path)), soname)
    while queue:
        path = queue.pop()
        info = dynamic_info(path)
        origin = posixpath.dirname(absolute(path))
        directories = [
            p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for p in info.runpaths
        ] + list(search_path)
        for soname in info.needed:
            add(find_library(fs, soname, directories), soname)
        if info.interpreter:
            add(link_chain(fs, info.interpreter), info.interpreter)
    closure.libraries = sorted(seen - set(start))
    closure.links = sorted(links - seen)
    return closure
