"""CPython's module search path for a service, computed as the interpreter would at start,
from the image alone.

``python_layout`` follows CPython 3.x's ``Modules/getpath.py`` (executable from argv[0] and
PATH; ``pyvenv.cfg`` one level above or next to the executable *as invoked*, its ``home``;
``PYTHONHOME``; ``<exe>._pth``; the ``lib/pythonX.Y/os.py`` and ``lib-dynload`` landmark
searches up from the executable's directory; ``PYTHONPATH``; ``pythonXY.zip``) and then
``Lib/site.py`` (the venv's prefix and ``include-system-site-packages``, the user site, the
site directories of the image's own ``site.py`` flavour: upstream ``site-packages`` or Debian's
``dist-packages``, and every ``.pth`` file in them), with ``sys.path[0]`` as ``-c``/``-m``/a
script set it. ``python_roots`` turns that into code roots.
"""

from __future__ import annotations

import ast
import posixpath
import re
from dataclasses import dataclass, field

from sconify.conversion.codepaths.common import (
    DEFAULT_PATH,
    NOT_FOUND_NOTE,
    PYTHON_EXCLUDE,
    PYTHON_EXTENSIONS,
    SYSTEM_DIRS,
    CodeRoot,
    CodeRoots,
    describe_hops,
    exists,
    home_of,
    is_dir,
    is_file,
    join,
    link_hops,
    listdir,
    read_bytes,
    read_text,
    resolve,
    under,
    which,
)
from sconify.conversion.codepaths.service import Service
from sconify.conversion.recipe import excluded
from sconify.conversion.select import rel

MAX_BINARY = 256 << 20  # bytes of an interpreter or libpython read to find its frozen site module
VERSION_NAME = re.compile(r"python(\d+)\.(\d+)")
FLAGS_WITHOUT_VALUE = set("bBdEhiIOPqsSuvVx?")


@dataclass
class Invocation:
    """What CPython's command line asks for: ``mode`` is "script", "module", "command",
    "stdin" or "interactive"; ``target`` the script path, module name or command."""

    mode: str
    target: str = ""
    flags: set[str] = field(default_factory=set)  # single-letter options: E, I, s, S, P...
    args: list[str] = field(default_factory=list)  # what follows (sys.argv[1:])


@dataclass
class PythonLayout:
    """sys.path and how it came about. Paths absolute, as the interpreter holds them."""

    version: str  # "3.11"
    executable: str  # sys.executable: the invoked path (symlinks kept)
    real_executable: str  # the ELF
    invocation: Invocation
    venv: str | None  # the venv prefix (dir holding pyvenv.cfg's parent), if any
    home: str | None  # PYTHONHOME or pyvenv.cfg's home
    prefix: str  # sys.prefix (the venv for a venv)
    base_prefix: str
    exec_prefix: str
    stdlib: str
    platstdlib: str
    site_flavour: str  # "debian" | "upstream" | "none" (-S)
    site_dirs: list[str]  # site directories that exist, in the order added
    pth_roots: list[tuple[str, str]]  # (path, why) from .pth import lines: editable finders...
    sys_path: list[str]
    origins: dict[str, str]  # sys.path entry -> "main", "pythonpath", "stdlib", "site", "pth"...
    main: str | None  # the file run as __main__ (script, or the -m module's file)
    missing: list[str]
    reasons: list[str]
    site_candidates: list[str] = field(default_factory=list)  # site dirs site.py checks, present or not


def parse_python_argv(argv: list[str]) -> Invocation:
    """The interpreter options of ``argv`` (argv[0] is the interpreter), as CPython reads them:
    single-letter flags may be grouped (``-Bu``), ``-X``/``-W`` take a value (attached or
    next), ``-c``/``-m`` end the options (``-mpkg`` too)."""
    flags: set[str] = set()
    rest = list(argv[1:])
    while rest:
        word = rest.pop(0)
        if word == "--":
            break
        if word == "-":
            return Invocation("stdin", "-", flags, rest)
        if word.startswith("--"):
            if word == "--check-hash-based-pycs" and rest:
                rest.pop(0)
            continue
        if not word.startswith("-"):
            return Invocation("script", word, flags, rest)
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in ("c", "m"):
                value = letters or (rest.pop(0) if rest else "")
                return Invocation("command" if letter == "c" else "module", value, flags, rest)
            if letter in ("X", "W"):
                if not letters and rest:
                    rest.pop(0)
                letters = ""
                continue
            flags.add(letter)
    if rest:
        return Invocation("script", rest[0], flags, rest[1:])
    return Invocation("interactive", "", flags, [])


def python_version(fs, real_executable: str, search_from: list[str], hint: str = "") -> tuple[str, str]:
    """X.Y of the interpreter and how it was told: its file name (python3.11), else the one
    ``lib/pythonX.Y/os.py`` found up from ``search_from``, else ``hint`` (pyvenv.cfg)."""
    match = VERSION_NAME.fullmatch(posixpath.basename(real_executable))
    if match:
        return f"{match.group(1)}.{match.group(2)}", f"from its name {posixpath.basename(real_executable)}"
    found: list[str] = []
    for start in search_from:
        directory = start
        while True:
            for libdir in ("lib", "lib64"):
                for name in listdir(fs, posixpath.join(directory, libdir)):
                    match = VERSION_NAME.fullmatch(name)
                    if match and is_file(fs, posixpath.join(directory, libdir, name, "os.py")):
                        found.append(f"{match.group(1)}.{match.group(2)}")
            if found or directory == "/":
                break
            directory = posixpath.dirname(directory)
        if found:
            break
    if found:
        found.sort(key=lambda v: tuple(int(p) for p in v.split(".")))
        return found[-1], f"from the standard library lib/python{found[-1]} found up from {search_from[0]}"
    if hint:
        match = re.match(r"(\d+)\.(\d+)", hint)
        if match:
            return f"{match.group(1)}.{match.group(2)}", "from pyvenv.cfg's version"
    return "3", "unknown: no pythonX.Y name nor lib/pythonX.Y/os.py"


def read_cfg(fs, path: str) -> dict[str, str]:
    """pyvenv.cfg as getpath and site read it: ``key = value`` lines, keys lower-cased."""
    values: dict[str, str] = {}
    for line in (read_text(fs, path) or "").splitlines():
        key, had_equal, value = line.partition("=")
        if had_equal:
            values.setdefault(key.strip().lower(), value.strip())
    return values


SCAN_CHUNK = 1 << 20


def scan_for(fs, path: str, needles: tuple[bytes, ...], limit: int = MAX_BINARY) -> set[bytes]:
    """Which of ``needles`` occur in the first ``limit`` bytes of the file ``path``, read in
    1 MiB chunks (an interpreter or libpython can be large; memory stays small)."""
    found: set[bytes] = set()
    overlap = max(len(n) for n in needles) - 1
    for _entry, stream in fs.iter_files([rel(path)]):
        tail, read = b"", 0
        while read < limit and len(found) < len(needles):
            chunk = stream.read(min(SCAN_CHUNK, limit - read))
            if not chunk:
                break
            read += len(chunk)
            window = tail + chunk
            found.update(n for n in needles if n in window)
            tail = window[-overlap:]
    return found


def site_flavour(fs, real_executable: str, stdlib: str, version: str) -> tuple[str, str]:
    """Which ``site.getsitepackages`` the interpreter runs, and how that was told: Debian's
    (``dist-packages``) or upstream's (``site-packages``).

    CPython 3.11+ runs the ``site`` module frozen into its binary (or libpython), not the
    stdlib's site.py, so the binary is read first: its frozen site names ``dist-packages`` in a
    Debian build. The stdlib's site.py (same build in any sane image) is the fallback."""
    candidates = [real_executable] + [
        posixpath.join(directory, f"libpython{version}.so.1.0")
        for directory in (posixpath.join(posixpath.dirname(posixpath.dirname(real_executable)), "lib"),
                          "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
    ]
    seen: set[str] = set()
    for candidate in candidates:
        target = resolve(fs, candidate)
        if target is None or target in seen or not is_file(fs, target):
            continue
        seen.add(target)
        found = scan_for(fs, target, (b"dist-packages", b"getsitepackages", b"site-packages"))
        if b"dist-packages" in found:
            return "debian", f"the site module frozen into {target} uses dist-packages"
        if {b"getsitepackages", b"site-packages"} <= found:
            return "upstream", f"the site module frozen into {target} uses site-packages"
    text = read_text(fs, posixpath.join(stdlib, "site.py")) or ""
    if '"dist-packages"' in text or "'dist-packages'" in text:
        return "debian", f"{stdlib}/site.py uses dist-packages"
    return "upstream", f"{stdlib}/site.py" + (" uses site-packages" if text else " is missing: upstream assumed")


def python_layout(fs, service: Service, env: dict[str, str] | None = None,
                  workdir: str | None = None) -> PythonLayout:
    """sys.path of ``service`` (a CPython executable) as CPython would compute it."""
    env = dict(service.env if env is None else env)
    cwd = service.workdir if workdir is None else workdir
    reasons: list[str] = []
    missing: list[str] = []
    invocation = parse_python_argv(service.argv)
    flags = invocation.flags
    isolated = "I" in flags
    use_env = not ("E" in flags or isolated)

    def getenv(name: str) -> str:
        return env.get(name, "") if use_env else ""

    # --- getpath: executable --------------------------------------------------------------
    program = service.argv[0] if service.argv else service.invoked
    if "/" in program:
        executable = join(cwd, program)
    else:
        executable = which(fs, program, env.get("PATH", DEFAULT_PATH), cwd) or service.invoked
    hops = link_hops(fs, executable)
    real_executable = hops[-1]
    reasons.append(f"python: sys.executable {executable}" + (f", real {describe_hops(hops)}" if len(hops) > 1 else ""))

    # --- getpath: home, pyvenv.cfg --------------------------------------------------------
    home = getenv("PYTHONHOME") or None
    venv_cfg: dict[str, str] = {}
    executable_dir = None
    if home:
        reasons.append(f"python: PYTHONHOME={home}")
    else:
        for directory in (posixpath.dirname(posixpath.dirname(executable)), posixpath.dirname(executable)):
            cfg = posixpath.join(directory, "pyvenv.cfg")
            if is_file(fs, cfg):
                venv_cfg = read_cfg(fs, cfg)
                if "home" in venv_cfg:
                    executable_dir = venv_cfg["home"]
                    reasons.append(f"python: {cfg} (found from the invoked {executable}): home = {executable_dir}")
                break
    if executable_dir is None:
        executable_dir = posixpath.dirname(real_executable)
    version, how = python_version(fs, real_executable, [executable_dir, posixpath.dirname(real_executable)],
                                  venv_cfg.get("version", ""))
    reasons.append(f"python: version {version} ({how})")
    platlibdir = getenv("PYTHONPLATLIBDIR") or "lib"
    stdlib_sub = f"{platlibdir}/python{version}"
    zip_name = f"{platlibdir}/python{version.replace('.', '')}.zip"

    # --- getpath: ._pth -------------------------------------------------------------------
    pth_file = None
    if not home:
        for candidate in (executable + "._pth", real_executable + "._pth"):
            if is_file(fs, candidate):
                pth_file = candidate
                break

    # --- getpath: prefix / exec_prefix ----------------------------------------------------
    def search_up(start: str, *landmarks: str, test=is_file) -> str | None:
        directory = start
        while directory:
            if any(test(fs, posixpath.join(directory, mark)) for mark in landmarks):
                return directory
            if directory == "/":
                return None
            directory = posixpath.dirname(directory)
        return None

    if home:
        prefix, had_delimiter, exec_prefix = home.partition(":")
        exec_prefix = exec_prefix if had_delimiter else prefix
        how = "from PYTHONHOME"
    else:
        prefix = search_up(executable_dir, zip_name) or search_up(
            executable_dir, f"{stdlib_sub}/os.py", f"{stdlib_sub}/os.pyc")
        if prefix is None and platlibdir == "lib":
            alternative = search_up(executable_dir, f"lib64/python{version}/os.py")
            if alternative:
                platlibdir, stdlib_sub, prefix = "lib64", f"lib64/python{version}", alternative
        how = f"landmark {stdlib_sub}/os.py searched up from {executable_dir}"
        if prefix is None:
            prefix = "/usr/local" if under(real_executable, "/usr/local") else "/usr"
            how = f"no {stdlib_sub}/os.py up from {executable_dir}: the compiled-in default, likely {prefix}"
            missing.append(f"{prefix}/{stdlib_sub} (the standard library)")
        exec_prefix = search_up(executable_dir, f"{stdlib_sub}/lib-dynload", test=is_dir) or prefix
    stdlib = posixpath.join(prefix, stdlib_sub)
    platstdlib = posixpath.join(exec_prefix, stdlib_sub, "lib-dynload")
    reasons.append(f"python: prefix {prefix}, exec_prefix {exec_prefix} ({how})")

    # --- getpath: module_search_paths -----------------------------------------------------
    sys_path: list[str] = []
    origins: dict[str, str] = {}
    pythonpath = getenv("PYTHONPATH")
    pth_site = False
    if pth_file:
        lines = [line.partition("#")[0].strip() for line in (read_text(fs, pth_file) or "").splitlines()]
        sys_path = [join(posixpath.dirname(pth_file), line) for line in lines if line and not line.startswith("import ")]
        pth_site = "import site" in lines
        isolated = True
        use_env = False
        reasons.append(f"python: {pth_file} sets sys.path and isolates the interpreter")
    else:
        if pythonpath:
            for entry in pythonpath.split(":"):
                sys_path.append(join(cwd, entry))
                origins.setdefault(sys_path[-1], "pythonpath")
            reasons.append(f"python: PYTHONPATH={pythonpath}")
        sys_path += [posixpath.join(prefix, zip_name), stdlib, platstdlib]
        origins.setdefault(sys_path[-3], "stdlib-zip")
        origins.setdefault(stdlib, "stdlib")
        origins.setdefault(platstdlib, "lib-dynload")

    # --- sys.path[0] ----------------------------------------------------------------------
    safe_path = "P" in flags or isolated or bool(getenv("PYTHONSAFEPATH"))
    main = None
    if invocation.mode == "script":
        script = join(cwd, invocation.target)
        real_script = resolve(fs, script)
        if real_script is None:
            missing.append(f"{script} (the script {service.argv[0]} runs{NOT_FOUND_NOTE})")
            path0 = posixpath.dirname(script)
        elif is_dir(fs, real_script) or _is_zip(fs, real_script):
            path0 = script  # a directory or zip with __main__.py: it is sys.path[0] itself
            main = posixpath.join(real_script, "__main__.py") if is_dir(fs, real_script) else real_script
        else:
            path0 = posixpath.dirname(real_script)
            main = real_script
        how = f"the directory of the script {invocation.target}"
        if real_script and real_script != script:
            how += f" ({script} -> {real_script})"
    else:
        path0 = cwd
        how = {"module": f"-m {invocation.target}: the working directory",
               "command": "-c: the working directory"}.get(invocation.mode, "the working directory")
    if not safe_path:
        sys_path.insert(0, path0)
        origins[path0] = "main"
        reasons.append(f"python: sys.path[0] = {path0} ({how})")
    else:
        reasons.append("python: no sys.path[0] (-P, -I or PYTHONSAFEPATH)")

    # --- site -----------------------------------------------------------------------------
    flavour = "none"
    site_dirs: list[str] = []
    site_candidates: list[str] = []  # every directory site.py tests with isdir (a planted one would count)
    pth_roots: list[tuple[str, str]] = []
    site_prefix = prefix
    venv = None
    if "S" in flags or (pth_file and not pth_site):
        reasons.append("python: site is not imported (-S, or a ._pth without 'import site'): no site directories")
    else:
        flavour, how = site_flavour(fs, real_executable, stdlib, version)
        reasons.append(f"python: site directories of a {flavour} build ({how})")
        known: set[str] = set()
        deduplicated = []
        for entry in sys_path:  # site.removeduppaths()
            if posixpath.normpath(entry) not in known:
                known.add(posixpath.normpath(entry))
                deduplicated.append(entry)
        sys_path[:] = deduplicated

        def addsitedir(sitedir: str, kind: str) -> None:
            key = posixpath.normpath(sitedir)
            if sitedir in site_dirs:
                return  # site reads it again (the venv's, once more through PREFIXES): nothing new
            if key not in known:
                sys_path.append(sitedir)
                known.add(key)
                origins.setdefault(sitedir, kind)
            site_dirs.append(sitedir)
            reasons.append(f"python: {kind} {sitedir}")
            names = sorted(n for n in listdir(fs, sitedir) if n.endswith(".pth") and not n.startswith("."))
            for name in names:
                _process_pth(fs, sitedir, name, sys_path, known, origins, pth_roots, reasons)

        # site.venv(): from sys.executable (the invoked path), pyvenv.cfg next to it first
        exe_dir = posixpath.dirname(executable)
        prefixes = [prefix, exec_prefix]
        enable_user_site = not ("s" in flags or isolated or getenv("PYTHONNOUSERSITE"))
        for cfg in (posixpath.join(exe_dir, "pyvenv.cfg"), posixpath.join(posixpath.dirname(exe_dir), "pyvenv.cfg")):
            if is_file(fs, cfg):
                venv = posixpath.dirname(exe_dir)
                settings = read_cfg(fs, cfg)
                system_site = settings.get("include-system-site-packages", "true").lower() == "true"
                site_prefix = venv
                reasons.append(f"python: venv {venv} (sys.prefix), include-system-site-packages = "
                               f"{'true' if system_site else 'false'}")
                for sitedir in _site_packages(flavour, [venv], platlibdir, version, True):
                    site_candidates.append(sitedir)
                    if is_dir(fs, sitedir):
                        addsitedir(sitedir, "venv-site")
                if system_site:
                    prefixes.insert(0, venv)
                else:
                    prefixes = [venv]
                    enable_user_site = False
                break
        if enable_user_site:
            user_base = getenv("PYTHONUSERBASE") or posixpath.join(home_of(fs, env, service.user), ".local")
            user_site = f"{user_base}/lib/python{version}/site-packages"
            site_candidates.append(user_site)
            if is_dir(fs, user_site):
                addsitedir(user_site, "user-site")
        virtual = site_prefix != prefix
        for sitedir in _site_packages(flavour, prefixes, platlibdir, version, virtual):
            site_candidates.append(sitedir)
            if is_dir(fs, sitedir):
                addsitedir(sitedir, "site")

    # --- the main module ------------------------------------------------------------------
    if invocation.mode == "module":
        main = find_module(fs, invocation.target, sys_path)
        if main is None:
            missing.append(f"module {invocation.target} (-m), on no entry of sys.path{NOT_FOUND_NOTE}")
        else:
            reasons.append(f"python: -m {invocation.target} is {main}")
    elif main is not None:
        reasons.append(f"python: __main__ is {main}")
    return PythonLayout(
        version=version, executable=executable, real_executable=real_executable, invocation=invocation,
        venv=venv, home=home or venv_cfg.get("home"), prefix=site_prefix, base_prefix=prefix,
        exec_prefix=exec_prefix, stdlib=stdlib, platstdlib=platstdlib, site_flavour=flavour,
        site_dirs=site_dirs, site_candidates=site_candidates, pth_roots=pth_roots, sys_path=sys_path, origins=origins, main=main, missing=missing,
        reasons=reasons,
    )


def python_sys_path(fs, service: Service, env: dict[str, str] | None = None, workdir: str | None = None) -> list[str]:
    """``sys.path`` of the service as CPython would compute it (``python_layout(...).sys_path``)."""
    return python_layout(fs, service, env, workdir).sys_path


def _site_packages(flavour: str, prefixes: list[str], platlibdir: str, version: str, virtual: bool) -> list[str]:
    """site.getsitepackages() of the image's site.py flavour."""
    paths: list[str] = []
    seen: set[str] = set()
    libdirs = [platlibdir] + (["lib"] if platlibdir != "lib" else [])
    for prefix in prefixes:
        if not prefix or prefix in seen:
            continue
        seen.add(prefix)
        if flavour == "debian":
            if virtual:
                paths.append(posixpath.join(prefix, "lib", f"python{version}", "site-packages"))
            paths.append(posixpath.join(prefix, "local/lib", f"python{version}", "dist-packages"))
            paths.append(posixpath.join(prefix, "lib", "python3", "dist-packages"))
            paths.extend(posixpath.join(prefix, libdir, f"python{version}", "dist-packages") for libdir in libdirs)
        else:
            paths.extend(posixpath.join(prefix, libdir, f"python{version}", "site-packages") for libdir in libdirs)
    return paths


def _process_pth(fs, sitedir: str, name: str, sys_path: list[str], known: set[str], origins: dict[str, str],
                 pth_roots: list[tuple[str, str]], reasons: list[str]) -> None:
    """site.addpackage: path lines are appended when they exist; ``import`` lines run code, so
    the absolute paths their string literals (and the top-level module they import from this
    site directory, as editable installs' finders do) name are taken as code roots."""
    pth = posixpath.join(sitedir, name)
    for line in (read_text(fs, pth) or "").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith(("import ", "import\t")):
            for path, why in _import_line_paths(fs, sitedir, line):
                if path not in [p for p, _ in pth_roots]:
                    pth_roots.append((path, f"{pth}: {why}"))
                    reasons.append(f"python: {pth} imports code from {path} ({why})")
            continue
        directory = join(sitedir, line.rstrip())
        if posixpath.normpath(directory) not in known and exists(fs, directory):
            sys_path.append(directory)
            known.add(posixpath.normpath(directory))
            origins.setdefault(directory, "pth")
            reasons.append(f"python: {pth} adds {directory}")


def _string_literals(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return re.findall(r"""["'](/[^"'\n]+)["']""", source)
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def _import_line_paths(fs, sitedir: str, line: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    sources = [("the line", line)]
    try:
        tree = ast.parse(line)
        modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    except SyntaxError:
        modules = re.findall(r"import\s+([A-Za-z_][\w.]*)", line)
    for module in modules:
        path = posixpath.join(sitedir, module.split(".")[0] + ".py")
        if is_file(fs, path):
            sources.append((f"a path in {path}", read_text(fs, path) or ""))
    for why, source in sources:
        for literal in _string_literals(source):
            if not literal.startswith("/") or "\n" in literal or len(literal) > 4096:
                continue
            path = posixpath.normpath(literal)
            if path in SYSTEM_DIRS or not (is_dir(fs, path) or is_file(fs, path)):
                continue
            if (path, why) not in found:
                found.append((path, why))
    return found


def _is_zip(fs, path: str) -> bool:
    head = read_bytes(fs, path, 4) or b""
    return head.startswith(b"PK\x03\x04") or path.endswith((".zip", ".pyz", ".egg", ".whl"))


def main_package(main: str, invocation: Invocation) -> str | None:
    """The top-level package directory of the ``-m`` module whose file is ``main`` (resolved),
    or None for a top-level module or another mode: ``-m test`` -> ``.../test``, ``-m a.b``
    (``.../a/b.py`` or ``.../a/b/__main__.py``) -> ``.../a``."""
    if invocation.mode != "module":
        return None
    depth = invocation.target.count(".")  # packages above the named module
    directory = posixpath.dirname(main)
    if posixpath.basename(main) in ("__main__.py", "__init__.py"):
        depth += 1  # the named module is itself a package: its directory counts
    if depth == 0:
        return None
    for _ in range(depth - 1):
        directory = posixpath.dirname(directory)
    return directory


def walked_into(fs, roots: CodeRoots, path: str) -> bool:
    """Whether the walk of a root takes the directory ``path``: a root covers it and no
    component below that root is one the walk leaves out (``test``, ``__pycache__``...)."""
    return any(root.covers(fs, path) and not excluded(path[len(root.path):].strip("/"), roots.exclude)
               for root in roots.roots)


def find_module(fs, name: str, sys_path: list[str]) -> str | None:
    """The file ``import name`` loads first along ``sys_path`` (for ``-m``: a package's
    ``__main__.py``), or None. Regular packages, modules, C extensions, namespace packages."""
    parts = name.split(".")
    for entry in sys_path:
        directory = resolve(fs, entry)
        if directory is None or not is_dir(fs, directory):
            continue
        found = _find_in(fs, directory, parts)
        if found:
            return found
    return None


def _find_in(fs, directory: str, parts: list[str]) -> str | None:
    head, rest = parts[0], parts[1:]
    package = posixpath.join(directory, head)
    if is_dir(fs, package):
        if rest:
            return _find_in(fs, package, rest)
        for name in ("__main__.py", "__init__.py"):
            if is_file(fs, posixpath.join(package, name)):
                return posixpath.join(package, name)
        return package  # a namespace package
    if rest:
        return None
    for name in listdir(fs, directory):
        if name == head + ".py" or (name.startswith(head + ".") and name.endswith(".so")):
            return posixpath.join(directory, name)
    return None


def python_roots(fs, service: Service, env: dict[str, str] | None = None, workdir: str | None = None) -> CodeRoots:
    """The code roots of a CPython service: every existing ``sys.path`` entry (in order), the
    paths ``.pth`` import lines load code from, and the scripts crossed to get here.

    ``sys.path[0]`` and the working directory are walked whole unless they are a system
    directory (``/``, ``/usr/bin``...: shallow). The result's ``extensions``/``exclude``/
    ``pyc_tag`` are the defaults ``code_files`` applies (the recipe may pass its own)."""
    layout = python_layout(fs, service, env, workdir)
    roots = CodeRoots(
        language="python", reasons=list(service.reasons) + layout.reasons, search_path=list(layout.sys_path),
        missing=list(layout.missing), extensions=PYTHON_EXTENSIONS, exclude=PYTHON_EXCLUDE,
        searched=list(dict.fromkeys(layout.sys_path + layout.site_candidates)),
        pyc_tag=f"cpython-{layout.version.replace('.', '')}" if "." in layout.version else None,
    )
    for script in service.scripts:
        roots.add(CodeRoot(script, "script", f"{script}: crossed to start the service"))
    for index, entry in enumerate(layout.sys_path):
        target = resolve(fs, entry)
        if target is None:
            continue
        kind = layout.origins.get(entry, "pythonpath")
        shown = entry if target == entry else f"{entry} -> {target}"
        prune = ()
        if kind == "stdlib":  # its site-packages is a root of its own, or not on sys.path at all
            prune = tuple(p for p in (resolve(fs, posixpath.join(target, n)) for n in ("site-packages", "dist-packages"))
                          if p is not None)
        roots.add(CodeRoot(target, kind, f"sys.path[{index}] {shown} ({kind})",
                           shallow=target in SYSTEM_DIRS and is_dir(fs, target), prune=prune))
    if layout.main is not None:
        target = resolve(fs, layout.main)
        if target is not None and not roots.covers(fs, target):
            roots.add(CodeRoot(target, "main", f"{layout.main}: the main module"))
        package = main_package(target, layout.invocation) if target is not None else None
        if package is not None and not walked_into(fs, roots, package):  # `-m test`: the stdlib's test/
            roots.add(CodeRoot(package, "main", f"-m {layout.invocation.target}: the package {package} runs"))
    cwd = resolve(fs, service.workdir if workdir is None else workdir)
    console_script = layout.invocation.mode == "script" and layout.main in service.scripts
    if console_script and cwd is not None and cwd not in SYSTEM_DIRS and is_dir(fs, cwd) and not roots.covers(fs, cwd):
        roots.add(CodeRoot(cwd, "cwd", f"{cwd}: the working directory of the console script {layout.main} (servers "
                                       "such as gunicorn, uvicorn or celery put it on sys.path to import the app)"))
    for path, why in layout.pth_roots:
        target = resolve(fs, path)
        if target is not None:
            roots.add(CodeRoot(target, "pth-import", why))
    for root in roots.roots:
        if root.kind in ("site", "venv-site", "user-site", "pythonpath", "pth") and is_dir(fs, root.path):
            vendored = [n for n in listdir(fs, root.path) if n.endswith(".libs")]
            if vendored:
                roots.reasons.append(f"python: {root.path} holds wheels' vendored libraries "
                                     f"({', '.join(vendored[:4])}): code, with the C extensions")
    return roots
