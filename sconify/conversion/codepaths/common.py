"""What the interpreter-specific modules share: image path helpers, the result types, the walk
that turns code roots into files, and the check for code left outside every root.

Every path in this package's API is absolute, as the container sees it ("/opt/venv/bin/python");
``code_files`` alone returns RootFS keys (relative, no leading '/'), like ``select.select_code``.
The image is read only through the RootFS: symlinks resolve chroot-style, the host filesystem
is never looked at.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from sconify.image.rootfs import PathNotFound
from sconify.conversion.recipe import excluded, has_extension

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ELF_MAGIC = b"\x7fELF"
MAX_TEXT = 1 << 20  # bytes read of a script, .pth, pyvenv.cfg or package.json

# Directories that are never walked whole when they show up as a module search path entry (a
# script in /usr/bin, WORKDIR /): only the modules directly in them (and, for Python, regular
# packages) are taken.
SYSTEM_DIRS = frozenset({
    "/", "/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/usr/local", "/usr/local/bin",
    "/usr/local/sbin", "/usr/lib", "/usr/local/lib", "/usr/share", "/lib", "/lib64", "/etc", "/var",
    "/tmp", "/root", "/dev", "/proc", "/sys", "/run", "/boot", "/mnt", "/media",
})
# Ordinary application places: code found there outside every root is reported.
APP_PLACES = ("/srv", "/opt", "/home", "/usr/src/app", "/workspace", "/app")
# File names that look like code to the "no silent misses" check.
CODE_LOOKING = (".py", ".pyc", ".so", ".js", ".mjs", ".cjs", ".node")

NOT_FOUND_NOTE = ": not in the image"
PYTHON_EXTENSIONS = (".py", ".pyc", ".pth", ".so")
NODE_EXTENSIONS = (".js", ".mjs", ".cjs", ".json", ".node")
PYTHON_EXCLUDE = ("test", "tests", "__pycache__", "idlelib", "turtledemo", "tkinter", "ensurepip", "*.exe")
NODE_EXCLUDE = ("test", "tests", "__tests__", ".git", ".bin", "*.md", "*.map", "*.d.ts")


# --------------------------------------------------------------------------- image paths


def rel(path: str) -> str:
    """An image path as RootFS keys it: normalised, relative to the root."""
    return posixpath.normpath("/" + path.lstrip("/")).lstrip("/")


def absolute(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/"))


def join(directory: str, path: str) -> str:
    """``path`` made absolute against ``directory`` (lexically, like os.path.abspath)."""
    return posixpath.normpath(posixpath.join(directory or "/", path))


def resolve(fs, path: str) -> str | None:
    """The absolute path ``path`` leads to after every symlink, or None when it is missing."""
    try:
        return absolute(fs.resolve(rel(path)))
    except PathNotFound:
        return None


def entry_of(fs, path: str):
    """The Entry ``path`` leads to (symlinks followed), or None."""
    target = resolve(fs, path)
    return None if target is None else fs.entries[rel(target)]


def is_dir(fs, path: str) -> bool:
    entry = entry_of(fs, path)
    return entry is not None and entry.kind == "dir"


def is_file(fs, path: str) -> bool:
    entry = entry_of(fs, path)
    return entry is not None and entry.is_regular


def is_executable(fs, path: str) -> bool:
    entry = entry_of(fs, path)
    return entry is not None and entry.is_regular and bool(entry.mode & 0o111)


def exists(fs, path: str) -> bool:
    return resolve(fs, path) is not None


def listdir(fs, path: str) -> list[str]:
    try:
        return fs.listdir(rel(path))
    except PathNotFound:
        return []


def read_bytes(fs, path: str, limit: int = MAX_TEXT) -> bytes | None:
    """Up to ``limit`` bytes of the regular file ``path``, or None."""
    if not is_file(fs, path):
        return None
    for _entry, stream in fs.iter_files([rel(path)]):
        return stream.read(limit)
    return None


def read_text(fs, path: str, limit: int = MAX_TEXT) -> str | None:
    data = read_bytes(fs, path, limit)
    return None if data is None else data.decode("utf-8", "replace")


def link_hops(fs, path: str) -> list[str]:
    """The absolute paths ``path`` goes through, symlink by symlink, up to the file it names
    (``[path, target, ...]``); the last item is the resolved path. [path] if it is no link."""
    hops = [absolute(path)]
    current = absolute(path)
    for _ in range(fs.limits.max_symlink_hops):
        try:
            parent = absolute(fs.resolve(rel(posixpath.dirname(current))))
        except PathNotFound:
            return hops
        here = rel(posixpath.join(parent, posixpath.basename(current)))
        entry = fs.entries.get(here)
        if entry is None or entry.kind != "symlink":
            final = resolve(fs, current)
            if final is not None and final != hops[-1]:
                hops.append(final)
            return hops
        current = join(parent, entry.linkname)
        hops.append(current)
    return hops


def describe_hops(hops: list[str]) -> str:
    """"/opt/venv/bin/python -> /usr/bin/python3 -> /usr/bin/python3.11 (symlinks)"."""
    if len(hops) == 1:
        return hops[0]
    return " -> ".join(hops) + " (symlink)" if len(hops) == 2 else " -> ".join(hops) + " (symlinks)"


def which(fs, name: str, path_var: str, cwd: str) -> str | None:
    """Where execvp finds command ``name`` (absolute, symlinks kept), or None. Like the kernel
    and ``command -v``, the file must be a regular file with an execute bit."""
    if "/" in name:
        candidate = join(cwd, name)
        return candidate if is_executable(fs, candidate) else None
    for directory in path_var.split(":"):
        candidate = join(join(cwd, directory or "."), name)
        if is_executable(fs, candidate):
            return candidate
    return None


def home_of(fs, env: dict[str, str], user: str = "") -> str:
    """$HOME as the container gets it: the image's Env, else the passwd entry of USER (Docker
    sets it from /etc/passwd), else /root."""
    if env.get("HOME"):
        return env["HOME"]
    name = (user or "root").split(":", 1)[0]
    text = read_text(fs, "/etc/passwd") or ""
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 6 and (fields[0] == name or fields[2] == name):
            return fields[5] or "/"
    return "/root" if name in ("root", "0") else "/"


def under(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or inside it (whole components)."""
    return root == "/" or path == root or path.startswith(root + "/")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CodeRoot:
    """A place the interpreter loads code from.

    ``path`` is absolute with symlinks resolved: a directory (every code file below it is code)
    or one file (a script, a zip on sys.path). ``shallow``: a system directory that is a search
    path entry only because of where a script sits or of WORKDIR (``/``, ``/usr/bin``): only the
    modules directly in it (and Python's regular packages) are code, not the whole tree.
    """

    path: str
    kind: str  # "main", "stdlib", "lib-dynload", "site", "user-site", "pythonpath", "pth", "script", ...
    reason: str
    shallow: bool = False
    prune: tuple[str, ...] = ()  # absolute directories below ``path`` that are not part of it

    def covers(self, fs, path: str) -> bool:
        """Whether the absolute, resolved ``path`` lies in this root."""
        if self.path == path:
            return True
        if not under(path, self.path) or any(under(path, p) for p in self.prune):
            return False
        if not self.shallow:
            return True
        parent = posixpath.dirname(path)
        while parent != self.path:  # inside a regular package all the way down
            if not is_file(fs, posixpath.join(parent, "__init__.py")):
                return False
            parent = posixpath.dirname(parent)
        return True


@dataclass
class CodeRoots:
    """What ``python_roots``/``node_roots``/``code_roots`` derive: the roots, in the order the
    interpreter searches them, and why (``reasons``: one human-readable line per step, for the
    plan and the manifest). ``search_path``: sys.path (Python) or the main module's lookup
    paths then the global folders (Node), as the interpreter would hold them (symlinks kept).
    ``missing``: what the interpreter will look for and the image lacks (a main script that a
    volume brings at run time...): code sconify cannot measure, to warn about."""

    language: str
    roots: list[CodeRoot] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    search_path: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extensions: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    pyc_tag: str | None = None  # "cpython-311": __pycache__ files of this tag pair with sources
    machine: int | None = None  # the executable's ELF e_machine: addons for others are not code
    # Every place the interpreter looks for code at start, present in the image or not (sys.path
    # and the site directories site.py tests; Node's node_modules and global folders): absolute,
    # symlinks kept. A module planted in a missing one would be loaded: the runtime seals them.
    searched: list[str] = field(default_factory=list)

    def add(self, root: CodeRoot) -> bool:
        """Add ``root`` unless a root with its path is there already; whether it was added."""
        for index, existing in enumerate(self.roots):
            if existing.path == root.path:
                if existing.shallow and not root.shallow:
                    self.roots[index] = root
                return False
        self.roots.append(root)
        return True

    @property
    def paths(self) -> list[str]:
        return [root.path for root in self.roots]

    def covers(self, fs, path: str) -> bool:
        return any(root.covers(fs, path) for root in self.roots)


@dataclass(frozen=True)
class SuspiciousDir:
    """A directory of code-looking files that no root covers."""

    path: str
    files: int
    example: str

    def __str__(self) -> str:
        return f"{self.path} ({self.files} code-looking file{'s' if self.files != 1 else ''}, e.g. {self.example})"


# --------------------------------------------------------------------------- roots -> files


def code_files(fs, roots: CodeRoots | Iterable[CodeRoot], *, extensions: tuple[str, ...] | None = None,
               exclude: tuple[str, ...] | None = None, pyc_tag: str | None = None,
               exclude_roots: Iterable[str] = (), machine: int | None = None) -> list[str]:
    """RootFS keys (relative) of the code files under ``roots``, sorted: regular files and
    symlinks whose names end in one of ``extensions`` (".so" also matches ``libfoo.so.1``, so
    wheels' vendored ``<pkg>.libs/`` libraries are taken), minus paths with a component matching
    an ``exclude`` glob (relative to the root), plus:

    - for a symlink taken, the links and the file it leads to (``common.py ->
      /opt/common/common.py``, Debian's ``sitecustomize.py -> /etc/python3.11/sitecustomize.py``):
      a link embedded without its target would dangle; a directory symlink inside a root
      (``vendor -> /usr/lib/...``) is walked like a directory of the root;
    - with ``pyc_tag`` ("cpython-311"), the ``__pycache__/NAME.<tag>[.opt-N].pyc`` files whose
      ``NAME.py`` is taken, even when ``__pycache__`` is excluded: CPython runs such a .pyc
      instead of its source when the source's size and mtime match, so it is code too.

    ``exclude_roots``: absolute directories never taken (the data regions).
    Node addons (``.node``) built for another platform are left out: prebuilt packages ship
    Mach-O and PE files, and ELF files for other machines, beside the one Node loads here
    (``machine``: the executable's ELF e_machine, e.g. 62 for x86-64; None: any ELF).
    Defaults (None) come from ``roots`` when it is a CodeRoots, else take every file.
    """
    if isinstance(roots, CodeRoots):
        extensions = roots.extensions if extensions is None else extensions
        exclude = roots.exclude if exclude is None else exclude
        pyc_tag = roots.pyc_tag if pyc_tag is None else pyc_tag
        machine = roots.machine if machine is None else machine
        roots = roots.roots
    walker = _Walker(fs, tuple(extensions or ()), tuple(exclude or ()), pyc_tag)
    for root in roots:
        walker.take_root(root)
    dropped = [rel(resolve(fs, p) or p) for p in exclude_roots]
    chosen = {p for p in walker.chosen if not any(p == d or p.startswith(d + "/") for d in dropped)}
    return sorted(chosen - foreign_addons(fs, chosen, machine))


class _Walker:
    def __init__(self, fs, extensions, exclude, pyc_tag) -> None:
        self.fs = fs
        self.extensions = extensions
        self.exclude = tuple(p for p in exclude if p != "__pycache__") if pyc_tag else exclude
        self.drop_pycache = "__pycache__" in exclude
        self.pyc = re.compile(rf"(.+)\.{re.escape(pyc_tag)}(?:\.opt-[12])?\.pyc") if pyc_tag else None
        self.chosen: set[str] = set()
        self.walked: set[str] = set()

    def take_root(self, root: CodeRoot) -> None:
        target = resolve(self.fs, root.path)
        if target is None:
            return
        entry = self.fs.entries[rel(target)]
        if entry.is_regular:
            self.chosen.add(rel(target))
        elif entry.kind == "dir":
            self.walk(rel(target), "", root.shallow, {rel(p) for p in root.prune})

    def walk(self, top: str, shown: str, shallow: bool, prune: set[str] = frozenset()) -> None:
        """Take the code under directory ``top`` (a RootFS key); ``shown`` is its path relative
        to the root it belongs to (what the excludes are matched against). Top-down: a
        directory's sources are taken before its ``__pycache__`` is looked at."""
        if top in self.walked:
            return
        self.walked.add(top)
        fs = self.fs
        for directory, dirs, files in fs.walk(top):
            inner = directory[len(top):].lstrip("/") if top else directory
            relative = posixpath.join(shown, inner) if inner else shown
            if (relative and excluded(relative, self.exclude)) or directory in prune:
                dirs[:] = []
                continue
            if shallow and not inner:  # only regular packages below a shallow root
                dirs[:] = [d for d in dirs if f"{directory}/{d}/__init__.py".lstrip("/") in fs.entries]
            pycache = self.pyc is not None and posixpath.basename(directory) == "__pycache__"
            for name in files:
                path = f"{directory}/{name}" if directory else name
                entry = fs.entries[path]
                if pycache:
                    match = self.pyc.fullmatch(name)
                    if match and f"{posixpath.dirname(directory)}/{match.group(1)}.py" in self.chosen:
                        self.chosen.add(path)
                    elif not self.drop_pycache and self.wanted(relative, name):
                        self.take(path, entry, relative, name)
                elif self.wanted(relative, name):
                    self.take(path, entry, relative, name)
                elif entry.kind == "symlink" and not shallow:
                    self.follow_dir_link(path, posixpath.join(relative, name))

    def wanted(self, relative: str, name: str) -> bool:
        if not has_extension(name, self.extensions):
            return False
        return not excluded(posixpath.join(relative, name), self.exclude)

    def take(self, path: str, entry, relative: str, name: str) -> None:
        if entry.kind in ("file", "hardlink"):
            self.chosen.add(path)
            return
        if entry.kind != "symlink":
            return
        hops = link_hops(self.fs, "/" + path)
        target = resolve(self.fs, "/" + path)
        if target is None:
            return  # dangling: nothing to load there, and embedding the link adds nothing
        target_entry = self.fs.entries[rel(target)]
        if target_entry.is_regular:
            self.chosen.add(path)
            for hop in hops[1:]:
                key = rel(hop)
                if key in self.fs.entries and self.fs.entries[key].kind in ("symlink", "file", "hardlink"):
                    self.chosen.add(key)
        elif target_entry.kind == "dir":
            self.chosen.add(path)
            self.walk(rel(target), posixpath.join(relative, name), False)

    def follow_dir_link(self, path: str, shown: str) -> None:
        target = resolve(self.fs, "/" + path)
        if target is None:
            return
        if self.fs.entries[rel(target)].kind == "dir" and not excluded(shown, self.exclude):
            self.chosen.add(path)
            self.walk(rel(target), shown, False)


def elf_machine(head: bytes) -> int | None:
    """e_machine of an ELF header (little-endian files), or None for anything else."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC):
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def foreign_addons(fs, files: Iterable[str], machine: int | None) -> set[str]:
    """The ``.node`` files among ``files`` (RootFS keys) that this platform's Node cannot load:
    not ELF, or ELF for another ``machine``. Read in one pass over their layers."""
    addons = [f for f in files if f.endswith(".node") and fs.entries[f].is_regular]
    foreign = set()
    for entry, stream in fs.iter_files(addons):
        found = elf_machine(stream.read(20))
        if found is None or (machine is not None and found != machine):
            foreign.add(entry.path)
    return foreign


def native_code(files: Iterable[str]) -> list[str]:
    """The shared objects among ``files``: C extensions (``.so``, ``.so.N``), Node addons
    (``.node``). The pipeline starts the DT_NEEDED closure from these."""
    return sorted(f for f in files if f.endswith(".node") or has_extension(f, (".so",)))


# --------------------------------------------------------------------------- no silent misses


def suspicious_code_dirs(fs, roots: CodeRoots | Iterable[CodeRoot], workdir: str | None = None,
                         covered: Iterable[str] = (), path_var: str = DEFAULT_PATH) -> list[SuspiciousDir]:
    """Directories in the ordinary application places (/srv, /opt, /home/*, /usr/src/app,
    /workspace, /app, and WORKDIR unless it is a system directory) that hold code-looking files
    (.py, .pyc outside __pycache__, .so, .js/.mjs/.cjs, .node) which no root covers.

    ``covered``: more absolute paths (files or directories) that are accounted for, e.g. the
    library closure, ``--fs-dir``/``--fs-file`` and the data regions. A tool installed under
    /opt and linked into a ``path_var`` directory (the node images' ``/opt/yarn-v1.22.19``,
    reached by ``/usr/local/bin/yarn``) is a program of its own, not the service's code: not
    reported. Each result is the highest directory holding such files (children folded into
    it), sorted by path. The pipeline warns about each one (with ``--strict``: fails)."""
    if isinstance(roots, CodeRoots):
        roots = roots.roots
    roots = list(roots)
    covered_files: set[str] = set()
    covered_dirs: list[str] = []
    for path in covered:
        target = resolve(fs, path) or absolute(path)
        if is_dir(fs, target):
            covered_dirs.append(target)
        else:
            covered_files.add(target)
    covered_dirs.extend(installed_tools(fs, path_var))
    places = list(APP_PLACES)
    if workdir and absolute(workdir) not in SYSTEM_DIRS:
        places.append(absolute(workdir))
    found: dict[str, list[str]] = {}
    seen_places: set[str] = set()
    for place in places:
        top = resolve(fs, place)
        if top is None or top in SYSTEM_DIRS or top in seen_places or not is_dir(fs, top):
            continue
        seen_places.add(top)
        for path in _code_looking(fs, top):
            if path in covered_files or any(under(path, d) for d in covered_dirs):
                continue
            if any(root.covers(fs, path) for root in roots):
                continue
            found.setdefault(posixpath.dirname(path), []).append(path)
    folded: dict[str, list[str]] = {}
    for directory in sorted(found):
        parent = next((d for d in folded if under(directory, d)), None)
        folded.setdefault(parent or directory, []).extend(found[directory])
    return [SuspiciousDir(d, len(files), sorted(files)[0]) for d, files in sorted(folded.items())]


def installed_tools(fs, path_var: str = DEFAULT_PATH) -> list[str]:
    """The /opt/NAME directories that a symlink in a ``path_var`` directory leads into."""
    tools: set[str] = set()
    for directory in path_var.split(":"):
        where = resolve(fs, directory) if directory.startswith("/") else None
        if where is None or not is_dir(fs, where):
            continue
        for name in listdir(fs, where):
            entry = fs.entries.get(rel(posixpath.join(where, name)))
            if entry is None or entry.kind != "symlink":
                continue
            target = resolve(fs, posixpath.join(where, name))
            if target is not None and target.startswith("/opt/") and target.count("/") >= 3:
                tools.add("/opt/" + target.split("/")[2])
    return sorted(tools)


def _code_looking(fs, top: str) -> Iterator[str]:
    for directory, _dirs, files in fs.walk(rel(top)):
        in_pycache = posixpath.basename(directory) == "__pycache__"
        for name in files:
            path = f"{directory}/{name}" if directory else name
            if fs.entries[path].kind not in ("file", "hardlink"):
                continue
            if name.endswith(".pyc") and in_pycache:
                continue
            if name.endswith(CODE_LOOKING) or ".so." in name:
                yield absolute(path)
