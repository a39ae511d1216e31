"""Node.js module resolution for a service, from the image alone.

``node_layout`` follows ``lib/internal/modules/cjs/loader.js``: the main module
(``path.resolve(cwd, argv[1])``, tried as a file, with ``.js``/``.json``/``.node``, as a
directory through its ``package.json`` ``main`` or ``index.js``; then its realpath unless
``--preserve-symlinks-main``); ``Module._nodeModulePaths`` (``node_modules`` in every ancestor
of the main module's directory); ``Module._initPaths`` (``NODE_PATH``, ``$HOME/.node_modules``,
``$HOME/.node_libraries``, ``$PREFIX/lib/node`` where ``$PREFIX`` is the executable's ``../``,
or the build's ``node_relative_path``: Debian's ``lib/<multiarch>/nodejs:share/nodejs``);
``--require``/``--import`` preloads from the argv and ``NODE_OPTIONS``.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from dataclasses import dataclass, field

from sconify.conversion.codepaths.common import (
    NODE_EXCLUDE,
    NODE_EXTENSIONS,
    NOT_FOUND_NOTE,
    SYSTEM_DIRS,
    CodeRoot,
    CodeRoots,
    elf_machine,
    home_of,
    is_dir,
    is_file,
    join,
    listdir,
    read_bytes,
    read_text,
    resolve,
    under,
)
from sconify.conversion.codepaths.service import Service

VALUE_OPTIONS = {
    "-r", "--require", "--import", "--loader", "--experimental-loader", "-e", "--eval", "-p", "--print",
    "--input-type", "--title", "-C", "--conditions", "--env-file", "--inspect-port", "--debug-port",
    "--experimental-policy", "--policy-integrity", "--redirect-warnings", "--icu-data-dir",
    "--openssl-config", "--tls-cipher-list", "--unhandled-rejections", "--disable-warning",
    "--heapsnapshot-signal", "--diagnostic-dir", "--report-dir", "--report-directory",
    "--report-filename", "--report-signal", "--secure-heap", "--secure-heap-min", "--stack-trace-limit",
    "--max-http-header-size", "--dns-result-order", "--watch-path", "--experimental-default-type",
}
# Global folders relative to $PREFIX: upstream's lib/node, unless the build sets
# process.config.variables.node_relative_path, as Debian's does (bookworm:
# "lib/x86_64-linux-gnu/nodejs:share/nodejs"; older releases also lib/nodejs).
UPSTREAM_RELATIVE_PATHS = ("lib/node",)
DEBIAN_RELATIVE_PATHS = ("lib/x86_64-linux-gnu/nodejs", "lib/aarch64-linux-gnu/nodejs", "share/nodejs", "lib/nodejs")
EXTENSIONS = (".js", ".json", ".node")


@dataclass
class NodeInvocation:
    main: str | None  # the script argument (as given), None for -e/-p/REPL
    preloads: list[str] = field(default_factory=list)  # --require / --import values
    eval: bool = False
    preserve_symlinks_main: bool = False
    args: list[str] = field(default_factory=list)


@dataclass
class NodeLayout:
    main: str | None  # the main module's file (resolved)
    package_dir: str | None  # the directory of the main module's nearest package.json
    lookup_paths: list[str]  # Module._nodeModulePaths of the main module's directory
    global_paths: list[str]  # Module.globalPaths
    preloads: list[str]  # resolved preload files
    links: list[tuple[str, str]]  # (symlinked package in a node_modules, its target outside)
    missing: list[str]
    reasons: list[str]


def parse_node_argv(argv: list[str], node_options: str = "") -> NodeInvocation:
    """The main script and preloads of a ``node`` command line (and ``NODE_OPTIONS``)."""
    invocation = NodeInvocation(None)
    try:
        extra = shlex.split(node_options)
    except ValueError:
        extra = []
    _options(extra, invocation, main_allowed=False)
    rest = _options(list(argv[1:]), invocation, main_allowed=True)
    if invocation.main is None and rest and not invocation.eval:
        invocation.main, invocation.args = rest[0], rest[1:]
    return invocation


def _options(words: list[str], invocation: NodeInvocation, main_allowed: bool) -> list[str]:
    while words:
        word = words[0]
        if word == "--":
            return words[1:]
        if not word.startswith("-") or word == "-":
            if main_allowed:
                invocation.main, invocation.args = (None if word == "-" else word), words[1:]
            return []
        words.pop(0)
        name, has_value, value = word.partition("=")
        if name in VALUE_OPTIONS and not has_value and words:
            value = words.pop(0)
        if name in ("-r", "--require", "--import", "--loader", "--experimental-loader"):
            invocation.preloads.append(value)
        elif name in ("-e", "--eval", "-p", "--print"):
            invocation.eval = True
        elif name == "--preserve-symlinks-main":
            invocation.preserve_symlinks_main = True
    return []


def node_module_paths(directory: str) -> list[str]:
    """Module._nodeModulePaths: ``node_modules`` in ``directory`` and each ancestor (never
    ``node_modules/node_modules``), nearest first."""
    paths = []
    current = directory
    while True:
        if posixpath.basename(current) != "node_modules":
            paths.append(posixpath.join(current, "node_modules"))
        if current == "/":
            return paths
        current = posixpath.dirname(current)


def read_package(fs, directory: str) -> dict:
    text = read_text(fs, posixpath.join(directory, "package.json"))
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def resolve_file(fs, request: str) -> str | None:
    """Module._findPath for an absolute request: the file, with an extension, or a directory
    through package.json ``main`` / ``index``. The path found (symlinks kept), or None."""
    if is_file(fs, request):
        return request
    for extension in EXTENSIONS:
        if is_file(fs, request + extension):
            return request + extension
    if is_dir(fs, request):
        main = read_package(fs, request).get("main")
        if isinstance(main, str) and main:
            target = join(request, main)
            for candidate in (target, *(target + e for e in EXTENSIONS),
                              *(posixpath.join(target, "index" + e) for e in EXTENSIONS)):
                if is_file(fs, candidate):
                    return candidate
        for extension in EXTENSIONS:
            if is_file(fs, posixpath.join(request, "index" + extension)):
                return posixpath.join(request, "index" + extension)
    return None


def package_dir_of(fs, path: str) -> str | None:
    """The nearest ancestor directory of ``path`` holding a package.json (not past '/')."""
    current = posixpath.dirname(path)
    while True:
        if is_file(fs, posixpath.join(current, "package.json")):
            return current
        if current == "/":
            return None
        current = posixpath.dirname(current)


def node_layout(fs, service: Service, env: dict[str, str] | None = None, workdir: str | None = None) -> NodeLayout:
    env = dict(service.env if env is None else env)
    cwd = service.workdir if workdir is None else workdir
    reasons: list[str] = []
    missing: list[str] = []
    invocation = parse_node_argv(service.argv, env.get("NODE_OPTIONS", ""))
    main = None
    base = cwd
    if invocation.main is not None:
        request = join(cwd, invocation.main)
        found = resolve_file(fs, request)
        if found is None:
            missing.append(f"{request} (the main module{NOT_FOUND_NOTE})")
            reasons.append(f"node: main module {invocation.main} is not in the image")
        else:
            main = found if invocation.preserve_symlinks_main else resolve(fs, found)
            shown = found if main == found else f"{found} -> {main}"
            reasons.append(f"node: main module {invocation.main} from {cwd}: {shown}")
            base = posixpath.dirname(main)
    elif invocation.eval:
        reasons.append(f"node: -e/-p code, modules resolve from the working directory {cwd}")
    else:
        reasons.append(f"node: no script (REPL or stdin), modules resolve from the working directory {cwd}")
    package_dir = package_dir_of(fs, main) if main else None
    if package_dir is not None:
        package = read_package(fs, package_dir)
        fields = [f"{key} {json.dumps(package[key])[:80]}" for key in ("main", "exports") if key in package]
        reasons.append(f"node: package {package_dir}/package.json" + (f" ({', '.join(fields)})" if fields else ""))
    lookup_paths = node_module_paths(base)
    home = home_of(fs, env, service.user)
    prefix = posixpath.dirname(posixpath.dirname(service.executable))
    global_paths = [p for p in env.get("NODE_PATH", "").split(":") if p]
    global_paths = [join(cwd, p) for p in global_paths]
    if global_paths:
        reasons.append(f"node: NODE_PATH={env['NODE_PATH']}")
    global_paths += [posixpath.join(home, ".node_modules"), posixpath.join(home, ".node_libraries")]
    debian = [p for p in DEBIAN_RELATIVE_PATHS if is_dir(fs, posixpath.join(prefix, p))]
    if debian:  # a Debian build: node_relative_path replaces lib/node
        global_paths += [posixpath.join(prefix, p) for p in debian]
        reasons.append(f"node: a Debian build ({prefix}/{debian[0]} exists): global folders "
                       + ", ".join(posixpath.join(prefix, p) for p in debian))
    else:
        global_paths += [posixpath.join(prefix, p) for p in UPSTREAM_RELATIVE_PATHS]
    preloads: list[str] = []
    for request in invocation.preloads:
        if request.startswith(("./", "../", "/")):
            found = resolve_file(fs, join(cwd, request))
        else:
            found = _bare(fs, request, node_module_paths(cwd) + global_paths)
        if found is None:
            missing.append(f"{request} (preloaded with --require/--import{NOT_FOUND_NOTE})")
        else:
            preloads.append(resolve(fs, found) or found)
            reasons.append(f"node: preloads {request}: {preloads[-1]}")
    return NodeLayout(main, package_dir, lookup_paths, global_paths, preloads, [], missing, reasons)


def _bare(fs, request: str, paths: list[str]) -> str | None:
    for directory in paths:
        found = resolve_file(fs, posixpath.join(directory, request))
        if found:
            return found
    return None


def node_roots(fs, service: Service, env: dict[str, str] | None = None, workdir: str | None = None) -> CodeRoots:
    """The code roots of a Node.js service: the main module's package (or its directory), the
    ``node_modules`` of every ancestor, NODE_PATH, the global folders, preloads, packages
    symlinked into those node_modules from elsewhere (workspaces, ``npm link``, pnpm), and the
    scripts crossed. Native addons (``.node``) under them are code (``code_files`` takes them;
    the pipeline follows their DT_NEEDED)."""
    layout = node_layout(fs, service, env, workdir)
    cwd = service.workdir if workdir is None else workdir
    roots = CodeRoots(language="node", reasons=list(service.reasons) + layout.reasons,
                      search_path=layout.lookup_paths + layout.global_paths, missing=list(layout.missing),
                      searched=layout.lookup_paths + layout.global_paths,
                      extensions=NODE_EXTENSIONS, exclude=NODE_EXCLUDE,
                      machine=elf_machine(read_bytes(fs, service.executable, 20) or b""))
    for script in service.scripts:
        roots.add(CodeRoot(script, "script", f"{script}: crossed to start the service"))
    if layout.main is not None:
        roots.add(CodeRoot(layout.main, "main", f"{layout.main}: the main module"))
        if layout.package_dir is not None:
            target = resolve(fs, layout.package_dir)
            roots.add(CodeRoot(target, "package", f"{layout.package_dir}: the main module's package",
                               shallow=target in SYSTEM_DIRS))
        else:
            directory = posixpath.dirname(layout.main)
            roots.add(CodeRoot(directory, "main-dir", f"{directory}: the main module's directory (no package.json)",
                               shallow=directory in SYSTEM_DIRS))
    elif cwd not in SYSTEM_DIRS and is_dir(fs, cwd):
        roots.add(CodeRoot(resolve(fs, cwd), "cwd", f"{cwd}: the working directory (no main module)"))
    for preload in layout.preloads:
        roots.add(CodeRoot(preload, "preload", f"{preload}: preloaded"))
    node_modules: list[str] = []
    for path in layout.lookup_paths:
        target = resolve(fs, path)
        if target is not None and is_dir(fs, target):
            node_modules.append(target)
            roots.add(CodeRoot(target, "node_modules", f"{path}: node_modules of an ancestor of the main module"))
    for path in layout.global_paths:
        target = resolve(fs, path)
        if target is not None and is_dir(fs, target):
            node_modules.append(target)
            roots.add(CodeRoot(target, "global", f"{path}: a global folder (NODE_PATH, $HOME, $PREFIX)"))
    npm_global = "/usr/local/lib/node_modules"
    if is_dir(fs, npm_global) and under(service.executable, "/usr/local"):
        roots.add(CodeRoot(resolve(fs, npm_global), "npm-global",
                           f"{npm_global}: packages installed with npm -g (their CLIs run from there)"))
    _linked_packages(fs, roots, node_modules)
    return roots


def _linked_packages(fs, roots: CodeRoots, node_modules: list[str]) -> None:
    """Packages symlinked into a node_modules from a directory outside every root: Node loads
    them from their realpath, whose own ancestors' node_modules then count too."""
    queue = list(node_modules)
    seen: set[str] = set()
    while queue:
        directory = queue.pop(0)
        if directory in seen:
            continue
        seen.add(directory)
        names = listdir(fs, directory)
        entries = []
        for name in names:
            if name.startswith("@"):
                entries.extend(posixpath.join(directory, name, n) for n in listdir(fs, posixpath.join(directory, name)))
            else:
                entries.append(posixpath.join(directory, name))
        for path in entries:
            entry = fs.entries.get(path.lstrip("/"))
            if entry is None or entry.kind != "symlink":
                continue
            target = resolve(fs, path)
            if target is None or not is_dir(fs, target) or roots.covers(fs, target):
                continue
            roots.add(CodeRoot(target, "linked-package", f"{path} -> {target}: a package linked into node_modules"))
            for lookup in node_module_paths(target):
                found = resolve(fs, lookup)
                if found is not None and is_dir(fs, found) and not roots.covers(fs, found):
                    roots.add(CodeRoot(found, "node_modules", f"{lookup}: node_modules of the linked package {target}"))
                    queue.append(found)
