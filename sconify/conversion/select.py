"""Choosing what to convert: the service's executable, its code files and its data files.

Works on the merged root filesystem of the input image (``sconify.image.rootfs.RootFS``), whose
paths are relative to the root without a leading '/'. Paths shown to users are absolute.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Iterator

from sconify.errors import UsageError
from sconify.image.rootfs import PathNotFound
from sconify.conversion.recipe import Placeholders, Recipe, builtin_recipes, excluded, has_extension

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ELF_MAGIC = b"\x7fELF"
# Directories that are never an application directory, even if WORKDIR names them.
NOT_APP_DIRS = {
    "",
    "bin",
    "sbin",
    "usr",
    "usr/bin",
    "usr/sbin",
    "usr/local",
    "usr/local/bin",
    "usr/lib",
    "lib",
    "etc",
    "var",
    "tmp",
    "root",
    "opt",
    "srv",
    "home",
}


def rel(path: str) -> str:
    """An image path as RootFS keys it: normalised, relative to the root."""
    normal = posixpath.normpath("/" + path.lstrip("/"))
    return normal.lstrip("/")


def absolute(path: str) -> str:
    return "/" + path.lstrip("/")


@dataclass(frozen=True)
class Executable:
    path: str  # resolved image path (relative), a regular ELF file
    requested: str  # what named it: --binary, ENTRYPOINT/CMD or the recipe
    recipe: Recipe


def is_regular(entry) -> bool:
    return entry.kind in ("file", "hardlink")


def try_resolve(fs, path: str, follow_final: bool = True) -> str | None:
    """The resolved image path, or None when it does not exist."""
    try:
        return fs.resolve(path, follow_final=follow_final)
    except PathNotFound:
        return None


def iter_tree(fs, root: str) -> Iterator[tuple[str, object]]:
    """(path, entry) of every non-directory entry under the directory ``root``, sorted."""
    for directory, _dirs, names in fs.walk(root):
        for name in names:
            path = f"{directory}/{name}" if directory else name
            yield path, fs.entries[path]


def read_head(fs, path: str, size: int = 256) -> bytes:
    for _entry, stream in fs.iter_files([path]):
        return stream.read(size)
    return b""


def command_of(config: dict) -> list[str]:
    inner = config.get("config") or {}
    return list(inner.get("Entrypoint") or []) + list(inner.get("Cmd") or [])


def env_of(config: dict) -> dict[str, str]:
    env = {}
    for item in (config.get("config") or {}).get("Env") or []:
        name, _, value = item.partition("=")
        env[name] = value
    return env


def lookup_in_path(fs, name: str, path_var: str, workdir: str = "/") -> str | None:
    """The image path of command ``name`` as execvp would find it from ``workdir``, resolved."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [posixpath.join(d or ".", name) for d in path_var.split(":")]
    for candidate in candidates:
        target = try_resolve(fs, posixpath.join(workdir, candidate))
        entry = fs.entries.get(target) if target is not None else None
        if entry is not None and is_regular(entry):
            return target
    return None


def find_binary(fs, config: dict, binary: str) -> str:
    """The resolved image path of ``--binary`` (through PATH and WORKDIR), an ELF file."""
    found = lookup_in_path(fs, binary, env_of(config).get("PATH", DEFAULT_PATH), workdir_of(config))
    if found is None:
        raise UsageError(
            f"--binary {binary} does not exist in the image (or is not a regular file); "
            "pass the path of the interpreter inside the image, e.g. /usr/bin/python3.11"
        )
    check_elf(fs, found, f"--binary {binary}")
    return found


def workdir_of(config: dict) -> str:
    return (config.get("config") or {}).get("WorkingDir") or "/"


def check_elf(fs, path: str, requested: str) -> None:
    head = read_head(fs, path)
    if head.startswith(ELF_MAGIC):
        return
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        interpreter = line.split()[0] if line else "?"
        if posixpath.basename(interpreter) == "env" and len(line.split()) > 1:
            interpreter = line.split()[1]
        raise UsageError(
            f"{requested} resolves to {absolute(path)}, a script run by {interpreter!r}, not an ELF "
            f"executable; pass --binary with the interpreter itself (e.g. --binary {interpreter})"
        )
    raise UsageError(
        f"{requested} resolves to {absolute(path)}, which is not an ELF executable; pass --binary "
        "with the service's interpreter or program"
    )


def recipe_for(executable: str) -> Recipe:
    for recipe in builtin_recipes():
        if recipe.matches_executable(executable):
            return recipe
    raise UsageError(
        f"no built-in recipe knows the executable {absolute(executable)}; pass --recipe "
        "python|node or --recipe FILE.toml (see docs/recipes.md)"
    )


def interpreter_version(executable: str, fs) -> str | None:
    """X.Y of a CPython executable, from its name or from the stdlib directories present."""
    match = re.search(r"python(\d+\.\d+)", posixpath.basename(executable))
    if match:
        return match.group(1)
    versions = sorted(
        match.group(1)
        for name in fs.entries
        if (match := re.fullmatch(r"usr/(?:local/)?lib/python(\d+\.\d+)", name))
    )
    versions.sort(key=lambda version: tuple(int(part) for part in version.split(".")))
    return versions[-1] if versions else None


def app_dir(config: dict, fs) -> str | None:
    """The application directory: the dir of a script named in CMD, else WORKDIR."""
    command = command_of(config)
    workdir = (config.get("config") or {}).get("WorkingDir") or "/"
    for arg in command[1:]:
        if arg.startswith("-"):
            continue
        candidate = rel(arg if arg.startswith("/") else posixpath.join(workdir, arg))
        entry = fs.entries.get(candidate)
        if entry is not None and is_regular(entry):
            directory = posixpath.dirname(candidate)
            if directory not in NOT_APP_DIRS:
                return absolute(directory)
        break
    workdir_rel = rel(workdir)
    if workdir_rel not in NOT_APP_DIRS:
        return absolute(workdir_rel)
    return None


def under(path: str, root: str) -> bool:
    return root == "" or path == root or path.startswith(root + "/")


def region_of(path: str, regions: list[dict]) -> dict:
    """The fspf region (``{"path", "kind", "protection"}``) a relative image path belongs to:
    the longest whole-component prefix; '/' not-protected when no region covers it."""
    best = None
    for region in regions:
        if under(path, rel(region["path"])) and (best is None or len(region["path"]) > len(best["path"])):
            best = region
    return best or {"path": "/", "kind": "kernel", "protection": "not-protected"}


def select_code(recipe: Recipe, fs, placeholders: Placeholders, exclude_roots: list[str]) -> list[str]:
    """Image paths (relative) of regular files and symlinks the recipe calls code."""
    chosen: set[str] = set()
    excluded_roots = [rel(p) for p in exclude_roots]
    for rule in recipe.code:
        for pattern in rule.paths:
            expanded = placeholders.expand(pattern)
            if expanded is None:
                continue
            root = try_resolve(fs, expanded)
            if root is None:
                continue
            entry = fs.entries[root]
            if is_regular(entry):
                chosen.add(root)
                continue
            for path, entry in iter_tree(fs, root):
                if entry.kind not in ("file", "hardlink", "symlink"):
                    continue
                if any(under(path, ex) for ex in excluded_roots):
                    continue
                relative = path[len(root) + 1 :] if root else path
                if excluded(relative, rule.exclude) or not has_extension(path, rule.extensions):
                    continue
                chosen.add(path)
    return sorted(chosen)


def select_data(fs, directories: list[str], option: str) -> list[str]:
    """Regular files under each data directory; a directory missing from the image is an error."""
    files: set[str] = set()
    for directory in directories:
        root = try_resolve(fs, directory)
        if root is None or fs.entries[root].kind != "dir":
            raise UsageError(
                f"{option} {directory} is not a directory in the image; pass a data directory "
                "that exists in the input image"
            )
        files.update(path for path, entry in iter_tree(fs, root) if is_regular(entry))
    return sorted(files)
