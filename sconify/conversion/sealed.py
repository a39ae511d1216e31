"""Sealed code roots: the directories the measured interpreter loads code from, which the
runtime serves from the embedfs only (runtime.json ``code_roots`` and ``code_left``).

Inside the measured process a path under a code root is what the embedfs holds there, and
nothing else: a module, ``.pth``, ``sitecustomize.py``, ``.pyc`` or ``.js`` planted on disk
(a derived image's layer, a bind mount) is not there for the interpreter. Two kinds of paths
under a code root stay visible from the disk: the volumes and ephemeral regions nested in it
(data, with the directories leading to them), and the files the conversion left there because
they are not code (``code_left``: templates, static assets, READMEs; their names have none of
the interpreter's code extensions). docs/runtime.md, "What can load code in the measured
process", has the rules.
"""

from __future__ import annotations

import posixpath

from sconify.conversion.codepaths import CodeRoots
from sconify.conversion.codepaths.common import SYSTEM_DIRS, absolute, rel, resolve
from sconify.conversion.recipe import has_extension

# Mounted at run time, never sealed (the shield's run_time_mount).
RUN_TIME_MOUNTS = ("/proc", "/dev", "/sys", "/run", "/.sconify")


def _mounted_at_run_time(path: str) -> bool:
    return any(path == m or path.startswith(m + "/") for m in RUN_TIME_MOUNTS)


def _sealable(path: str) -> bool:
    return path not in SYSTEM_DIRS and not _mounted_at_run_time(path)


def sealed_roots(fs, roots: CodeRoots | None) -> list[str]:
    """The code roots to seal, absolute and sorted: every directory root that is walked whole
    (not a ``shallow`` system directory such as ``/usr/bin``), and every place the interpreter
    searches that the image lacks or holds as a directory (``python311.zip``, a missing
    ``/usr/local/lib/python3.11/dist-packages`` or user site, ``/node_modules``), both as the
    interpreter names it and symlinks resolved."""
    if roots is None:
        return []
    chosen: set[str] = set()
    for root in roots.roots:
        entry = fs.entries.get(rel(root.path))
        if not root.shallow and entry is not None and entry.kind == "dir":
            chosen.add(absolute(root.path))
    for place in roots.searched:
        place = absolute(place)
        target = resolve(fs, place)
        if target is None:
            chosen.add(place)
        elif fs.entries[rel(target)].kind == "dir" and roots.covers(fs, target):
            chosen.update((place, target))
    return sorted(p for p in chosen if _sealable(p))


def shallow_roots(roots: CodeRoots | None) -> list[str]:
    """The shallow code roots, sorted: system directories that are on the search path only
    because of where a script sits or of WORKDIR (``/usr/local/bin`` for a console script, ``/``).
    The runtime seals the code names directly in them (``roots.extensions``, ``__pycache__``,
    a package's ``__init__``) and the packages the conversion embedded there, not the rest."""
    if roots is None:
        return []
    return sorted({absolute(r.path) for r in roots.roots if r.shallow and not _mounted_at_run_time(absolute(r.path))})


def embedded_packages(shallow: list[str], embedded: list[str]) -> list[str]:
    """The packages directly in the shallow roots whose ``__init__.py`` is embedded: sealed whole
    by the runtime, so their files left as not code are listed as for a root."""
    found = set()
    for root in shallow:
        prefix = rel(root) + "/" if rel(root) else ""
        for path in embedded:
            rest = path[len(prefix):] if path.startswith(prefix) else None
            if rest is not None and rest.count("/") == 1 and rest.endswith("/__init__.py"):
                found.add(absolute(prefix + rest.split("/")[0]))
    return sorted(found)


def left_files(fs, sealed: list[str], embedded: list[str], extensions: tuple[str, ...],
               regions: list[str] = ()) -> list[str]:
    """The files and symlinks under the sealed roots that the embedfs does not hold and whose
    names are not code (none of ``extensions``, not in a ``__pycache__``), outside the
    ``regions`` (data: visible anyway): absolute, sorted. The runtime shows them from the
    disk; everything else there that is not embedded is sealed. ``embedded``: RootFS keys of
    the embedfs members."""
    inside = set(embedded)
    data = [rel(r) for r in regions]
    left: set[str] = set()
    for root in sealed:
        key = rel(root)
        if key not in fs.entries or fs.entries[key].kind != "dir":
            continue
        for directory, _dirs, files in fs.walk(key):
            for name in files:
                path = posixpath.join(directory, name)
                if (path in inside or has_extension(name, extensions) or "__pycache__" in path.split("/")
                        or any(path.startswith(d + "/") for d in data)):
                    continue
                left.add(absolute(path))
    return sorted(left)
