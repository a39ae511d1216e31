"""Code selection that follows the interpreter (``sconify.conversion.codepaths``), on images shaped like the
ones teams ship, built from real software only: the Debian python3/nodejs demo images, Debian's
dash and coreutils, a venv made by CPython's ``venv`` module, PyPI wheels (C extensions, one with
auditwheel-vendored libraries), setuptools' PEP 660 editable installs, pip's console-script
generator (distlib), npm packages and the official node image's docker-entrypoint.sh.

The oracle is the image itself: where the host allows ``chroot`` (root), the converted-to-be
image's own interpreter runs the service's exact argv, Env and WORKDIR, and reports ``sys.path``
and every module file it loaded (Node: its lookup paths, global paths and ``require.cache``);
the derived sys.path must equal it and every loaded file must be among the code files.
"""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from sconify.demo import debimage
from sconify.conversion.codepaths import (
    code_files,
    code_roots,
    find_service,
    native_code,
    node_layout,
    node_roots,
    python_layout,
    python_roots,
    python_sys_path,
    suspicious_code_dirs,
)
from sconify.errors import UsageError
from sconify.image.model import Layer
from sconify.image.mutate import append_layers
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image

EPOCH = debimage.DEFAULT_EPOCH
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV_PATH = "/opt/venv/bin:" + DEFAULT_PATH
# A real native addon (N-API prebuilds for four platforms) and the loader it needs.
ADDON_PACKAGES = (
    debimage.NpmPackage("bufferutil", "4.0.8", "sha512-4T53u4PdgsXqKaIctwF8ifXlRTTmEPJ8iEPWFdGZvcf7sbwYo6FKFEX9eNNAnzFZ7EzJAQ3CJeOtCRA4rDp7Pw==",
                        "node_modules/bufferutil"),
    debimage.NpmPackage("node-gyp-build", "4.8.4", "sha512-LA4ZjwlnUblHVgq0oBF3Jl/6h/Nvs5fzBLwdEF4nuxnFdsfajde4WfxtJr3CaiH+F6ewcIB/q4jQ4UzPyid+CQ==",
                        "node_modules/node-gyp-build"),
)
SHELL_PACKAGES = (debimage.DebPackage("dash", "0.5.12-2"), debimage.DebPackage("coreutils", "9.1-1"))
WRAPPER_PACKAGES = (debimage.DebPackage("tini", "0.19.0-1+b3"), debimage.DebPackage("gosu", "1.14-1+b10"))
# Pinned PyPI wheels for CPython 3.11 on x86-64 (file name, sha256).
WHEELS = {
    "markupsafe==3.0.4": ("markupsafe-3.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
                          "6da83a088f8ef93b2d483a8232a4dbf4d69d3d8496b568a03c56becac43e1808"),
    "pyyaml==6.0.4": ("pyyaml-6.0.4-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.manylinux_2_28_x86_64.whl",
                      "622aa875fa6533f25fedcffe23079357d65a690d462200afed5d8e9d0e01ebee"),
    "pyzmq==26.4.0": ("pyzmq-26.4.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                      "4550af385b442dc2d55ab7717837812799d3674cb12f9a3aa897611839c18e9e"),
    "setuptools==75.8.0": ("setuptools-75.8.0-py3-none-any.whl",
                           "e3982f444617239225d675215d51f6ba05f845d4eec313da4418fdbb56fb27e3"),
}
# The official node image's docker-entrypoint.sh (nodejs/docker-node), verbatim.
NODE_ENTRYPOINT = """#!/bin/sh
set -e

# Run command with node if the first argument contains a "-" or is not a system command. The last
# part inside the "{}" is a workaround for the following bug in ash/dash:
# https://bugs.debian.org/cgi-bin/bugreport.cgi?bug=874264
if [ "${1#-}" != "${1}" ] || [ -z "$(command -v "${1}")" ] || { [ -f "${1}" ] && ! [ -x "${1}" ]; }; then
  set -- node "$@"
fi

exec "$@"
"""
# What the apps print: sys.path, sys.executable, sys.prefix and the file of every module loaded.
PY_REPORT = '''\
import json
import sys


def report(*loaded):
    files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
    print(json.dumps({"sys_path": sys.path, "executable": sys.executable, "prefix": sys.prefix,
                      "files": files, "loaded": [m.__name__ for m in loaded]}))
'''
PY_MAIN = '''\
import markupsafe
import yaml

import plugins
from app import common
from app.report import report

report(markupsafe, yaml, plugins, common)
'''
PY_CLI = '''\
def main():
    import markupsafe
    import plugins
    from app.report import report

    report(markupsafe, plugins)
'''
PY_TOOL = '''\
#!/usr/bin/env python3
import json
import sys

try:
    import extra_mod
except ImportError:
    extra_mod = None
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps({"sys_path": sys.path, "executable": sys.executable, "prefix": sys.prefix, "files": files}))
'''
NODE_SERVER = '''\
"use strict";
const Module = require("module");
const ms = require("ms");
const isNumber = require("is-number");
const debug = require("debug")("svc");
const { label } = require("./lib/format");
const bufferutil = require("bufferutil");
const masked = Buffer.from("abcd");
bufferutil.unmask(masked, Buffer.from([1, 2, 3, 4]));
debug("starting");
console.log(JSON.stringify({
  paths: module.paths, globalPaths: Module.globalPaths, files: Object.keys(require.cache).sort(),
  checks: [ms("2 days"), isNumber(5), label("ok"), masked.toString("hex")],
}));
'''


# --------------------------------------------------------------------------- building blocks


def cache() -> Path:
    return debimage.cache_dir()


def fetch_wheel(spec: str) -> Path:
    """A pinned PyPI wheel, downloaded once into the cache (sha256 checked)."""
    filename, sha256 = WHEELS[spec]
    directory = cache() / "wheels"
    path = directory / filename
    if not path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                       "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                       "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64", spec, "-d", tmp]
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            fetched = Path(tmp) / filename
            if result.returncode != 0 or not fetched.is_file():
                pytest.skip(f"PyPI is unreachable or lacks {spec} ({' '.join(result.stderr.split())[-200:]})")
            os.replace(fetched, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        path.unlink()
        pytest.fail(f"{filename} does not match its pinned sha256 ({digest}); the cached copy was removed")
    return path


def wheel_entries(wheel: Path, site: str, rewrite: dict[str, str] | None = None) -> list[debimage.LayerEntry]:
    """A wheel unpacked as pip does, into ``site`` (a path in the image)."""
    entries = []
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            data = archive.read(info)
            for old, new in (rewrite or {}).items():
                data = data.replace(old.encode(), new.encode())
            mode = (info.external_attr >> 16) & 0o777 or 0o644
            entries.append(debimage.regular_file(f"{site.strip('/')}/{info.filename}", data, mode))
    return entries


def tree_entries(source: Path, target: str, rewrite: dict[str, str]) -> list[debimage.LayerEntry]:
    """A host directory tree as layer entries under ``target``, text rewritten with ``rewrite``."""
    entries = []
    for directory, dirs, files in os.walk(source):
        for name in dirs + files:
            path = Path(directory) / name
            image_path = f"{target.strip('/')}/{path.relative_to(source)}"
            if path.is_symlink():
                link = os.readlink(path)
                for old, new in rewrite.items():
                    link = link.replace(old, new)
                entries.append(debimage.symlink(image_path, link))
            elif path.is_dir():
                entries.append(debimage.directory(image_path))
            else:
                data = path.read_bytes()
                for old, new in rewrite.items():
                    data = data.replace(old.encode(), new.encode())
                entries.append(debimage.regular_file(image_path, data, path.stat().st_mode & 0o777))
    return entries


def deb_entries(packages) -> list[debimage.LayerEntry]:
    debs = debimage.download_debs(packages, cache() / "debs")
    return [entry for deb in debs for entry in debimage.read_deb(deb, EPOCH)]


def layered(base: Path, entries: list[debimage.LayerEntry], tmp: Path) -> RootFS:
    """The demo image at ``base`` with one more layer holding ``entries``, as a RootFS."""
    tar = tmp / "layer.tar"
    with tar.open("wb") as out:
        debimage.write_layer_tar(entries, out, EPOCH)
    image = append_layers(read_image(f"oci:{base}:latest"), [Layer.from_tar_file(tar, compression="none")])
    return RootFS.from_image(image, cache_layers=True)


def config(cmd=None, entrypoint=None, workdir="/", env=None, user="") -> dict:
    path = (env or {}).get("PATH", DEFAULT_PATH)
    settings = {"PATH": path, "LANG": "C.UTF-8", **(env or {})}
    return {"config": {"Cmd": cmd, "Entrypoint": entrypoint, "WorkingDir": workdir, "User": user,
                       "Env": [f"{k}={v}" for k, v in settings.items()]}}


def host_venv(tmp: Path) -> Path:
    """A venv made by CPython 3.11's venv module (the host's python3.11), without pip; on a host
    without 3.11, the same layout as that module writes it."""
    venv = tmp / "venv"
    python = shutil.which("python3.11")
    if python is not None:
        subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
        return venv
    for directory in ("bin", "include/python3.11", "lib/python3.11/site-packages"):
        (venv / directory).mkdir(parents=True)
    os.symlink("lib", venv / "lib64")
    os.symlink("/usr/bin/python3.11", venv / "bin" / "python3.11")
    os.symlink("python3.11", venv / "bin" / "python3")
    os.symlink("python3.11", venv / "bin" / "python")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n")
    return venv


def editable_wheel(project: Path, out: Path) -> Path:
    """A PEP 660 editable wheel of ``project``, built by setuptools' own backend."""
    setuptools = cache() / "wheels" / "setuptools-75.8.0"
    if not (setuptools / "setuptools").is_dir():
        with zipfile.ZipFile(fetch_wheel("setuptools==75.8.0")) as archive:
            staging = Path(tempfile.mkdtemp(dir=cache() / "wheels", prefix=".setuptools-"))
            archive.extractall(staging)
            os.replace(staging, setuptools) if not setuptools.exists() else shutil.rmtree(staging)
    out.mkdir(parents=True, exist_ok=True)
    code = f"import setuptools.build_meta as b; print(b.build_editable({str(out)!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(setuptools)}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / result.stdout.strip().splitlines()[-1]


def console_script(name: str, entry: str, python: str, tmp: Path) -> bytes:
    """The console script pip writes for entry point ``name = entry`` (pip's distlib maker)."""
    from pip._vendor.distlib.scripts import ScriptMaker

    target = tmp / "scripts"
    target.mkdir(exist_ok=True)
    maker = ScriptMaker(None, str(target))
    maker.clobber = True
    maker.variants = {""}
    maker.set_mode = True
    maker.executable = python
    maker.make(f"{name} = {entry}")
    return (target / name).read_bytes()


def pyc_of(source: str, image_path: str, tmp: Path) -> bytes:
    """What ``pip install`` (compileall) writes in __pycache__ for ``source``: a timestamp pyc
    matching the file the layer holds (mtime clamped to the epoch)."""
    path = tmp / "pyc-source.py"
    path.write_text(source)
    os.utime(path, (EPOCH, EPOCH))
    compiled = py_compile.compile(str(path), cfile=str(tmp / "out.pyc"), dfile=image_path, doraise=True)
    return Path(compiled).read_bytes()


# --------------------------------------------------------------------------- the images


@pytest.fixture(scope="module")
def py_shapes(python_image, tmp_path_factory) -> RootFS:
    """The Debian python3 image plus: dash, coreutils, tini and gosu; a venv at /opt/venv with markupsafe,
    PyYAML and pyzmq wheels; the app project at /srv installed editable into the venv (setuptools'
    finder maps ``app`` to /srv/app) with its console script app-cli; a src-layout project at
    /opt/plugins-src installed editable (a path .pth); a module reached through a symlink
    (/srv/app/common.py -> /opt/common/common.py); an env-shebang tool in /srv/tools; a
    PYTHONPATH directory /opt/lib/py; stray code in /opt/orphan; an ambiguous start script."""
    tmp = tmp_path_factory.mktemp("py-shapes")
    venv = host_venv(tmp)
    cfg = (venv / "pyvenv.cfg").read_text()
    host_home = re.search(r"^home = (.*)$", cfg, re.M).group(1)
    rewrite = {str(venv): "/opt/venv", host_home: "/usr/bin"}
    entries = deb_entries(SHELL_PACKAGES + WRAPPER_PACKAGES) + tree_entries(venv, "opt/venv", rewrite)
    entries = [e for e in entries if e.path != "opt/venv/pyvenv.cfg"]
    entries.append(debimage.regular_file("opt/venv/pyvenv.cfg", "home = /usr/bin\ninclude-system-site-packages = false\n"
                                         "version = 3.11.2\nexecutable = /usr/bin/python3.11\n"
                                         "command = /usr/bin/python3.11 -m venv /opt/venv\n"))
    site = "opt/venv/lib/python3.11/site-packages"
    for spec in ("markupsafe==3.0.4", "pyyaml==6.0.4", "pyzmq==26.4.0"):
        entries += wheel_entries(fetch_wheel(spec), site)
    # the app project, installed editable (pip install -e /srv)
    project = tmp / "srv"
    (project / "app").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "svc-app"\nversion = "1.0"\n[project.scripts]\napp-cli = "app.cli:main"\n'
        '[tool.setuptools]\npackages = ["app"]\n')
    sources = {"__init__.py": '"""The service."""\n', "__main__.py": PY_MAIN, "cli.py": PY_CLI, "report.py": PY_REPORT}
    for name, text in sources.items():
        (project / "app" / name).write_text(text)
    entries += wheel_entries(editable_wheel(project, tmp / "wheel-app"), site, {str(project): "/srv"})
    entries.append(debimage.regular_file("srv/pyproject.toml", (project / "pyproject.toml").read_text()))
    for name, text in sources.items():
        entries.append(debimage.regular_file(f"srv/app/{name}", text))
    entries.append(debimage.regular_file("srv/app/__pycache__/__init__.cpython-311.pyc",
                                         pyc_of(sources["__init__.py"], "/srv/app/__init__.py", tmp)))
    entries.append(debimage.regular_file("srv/app/__pycache__/stale.cpython-311.pyc",
                                         pyc_of("X = 1\n", "/srv/app/stale.py", tmp)))
    entries.append(debimage.regular_file("opt/venv/bin/app-cli", console_script("app-cli", "app.cli:main",
                                                                                 "/opt/venv/bin/python", tmp), 0o755))
    entries += [debimage.symlink("srv/app/common.py", "/opt/common/common.py"),
                debimage.regular_file("opt/common/common.py", "SHARED = True\n")]
    # a src-layout project installed editable: a path .pth
    plugins = tmp / "plugins-src"
    (plugins / "src" / "plugins").mkdir(parents=True)
    (plugins / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "svc-plugins"\nversion = "1.0"\n[tool.setuptools.packages.find]\nwhere = ["src"]\n')
    (plugins / "src" / "plugins" / "__init__.py").write_text("NAME = 'plugins'\n")
    entries += wheel_entries(editable_wheel(plugins, tmp / "wheel-plugins"), site, {str(plugins): "/opt/plugins-src"})
    entries.append(debimage.regular_file("opt/plugins-src/src/plugins/__init__.py", "NAME = 'plugins'\n"))
    entries += [
        debimage.regular_file("srv/tools/report.py", PY_TOOL, 0o755),
        debimage.regular_file("opt/lib/py/extra_mod.py", "VALUE = 1\n"),
        debimage.regular_file("opt/orphan/stray.py", "print('never imported')\n"),
        debimage.regular_file("srv/start.sh", "#!/bin/sh\nset -e\nif [ \"$MODE\" = cli ]; then\n"
                              "  exec /opt/venv/bin/app-cli\nelse\n  exec python -m app\nfi\n", 0o755),
    ]
    fs = layered(python_image, entries, tmp)
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def py_local(python_image, tmp_path_factory) -> RootFS:
    """CPython under /usr/local, as the official python images have it: the Debian build's
    interpreter and standard library moved there (no /usr/bin/python3 left), markupsafe in the
    dist-packages its (Debian) site module computes for that prefix, a decoy site-packages the
    interpreter never reads, the app in /usr/src/app."""
    tmp = tmp_path_factory.mktemp("py-local")
    base = RootFS.from_image(read_image(f"oci:{python_image}:latest"), cache_layers=True)
    moved = [p for p in base.entries
             if p.startswith("usr/lib/python3.11/") or p in ("usr/bin/python3.11", "usr/bin/python3")]
    entries = []
    for entry, stream in base.iter_files([p for p in moved if base.entries[p].is_regular]):
        target = entry.path.replace("usr/lib/", "usr/local/lib/", 1).replace("usr/bin/", "usr/local/bin/", 1)
        entries.append(debimage.regular_file(target, stream.read(), entry.mode))
    entries += [debimage.whiteout("usr/lib/python3.11"), debimage.whiteout("usr/bin/python3.11"),
                debimage.whiteout("usr/bin/python3")]
    base.close()
    entries += [
        debimage.symlink("usr/local/bin/python3", "python3.11"),
        debimage.symlink("usr/local/bin/python", "python3"),
        *wheel_entries(fetch_wheel("markupsafe==3.0.4"), "usr/local/lib/python3/dist-packages"),
        debimage.regular_file("usr/local/lib/python3.11/site-packages/decoy.py", "DECOY = True\n"),
        debimage.regular_file("usr/src/app/app.py", PY_TOOL.replace("#!/usr/bin/env python3\n", "import markupsafe\n")),
    ]
    fs = layered(python_image, entries, tmp)
    yield fs
    fs.close()


@pytest.fixture(scope="module")
def node_shapes(node_image, tmp_path_factory) -> RootFS:
    """The Debian nodejs image plus dash, the official docker-entrypoint.sh in /usr/local/bin,
    the service package in /srv/app (main src/server.js) with its node_modules in the parent
    /srv (among them bufferutil, a native addon with prebuilds for four platforms), is-number in
    /opt/shared/node_modules (NODE_PATH), stray JavaScript in /opt/tools, a CLI installed in /opt."""
    tmp = tmp_path_factory.mktemp("node-shapes")
    packages = debimage.NODE_MODULES + ADDON_PACKAGES
    tarballs = debimage.fetch_npm(packages, cache() / "npm")
    entries = deb_entries(SHELL_PACKAGES[:1])
    for package, tarball in zip(packages, tarballs):
        root = "opt/shared" if package.name == "is-number" else "srv"
        entries += debimage.npm_entries(package, tarball, app_root=root)
    entries += [
        debimage.regular_file("usr/local/bin/docker-entrypoint.sh", NODE_ENTRYPOINT, 0o755),
        debimage.regular_file("srv/app/package.json", json.dumps(
            {"name": "svc", "version": "1.0.0", "private": True, "main": "src/server.js"}, indent=2)),
        debimage.regular_file("srv/app/src/server.js", NODE_SERVER),
        debimage.regular_file("srv/app/src/lib/format.js", 'exports.label = (s) => `[${s}]`;\n'),
        debimage.regular_file("opt/tools/cli.js", "console.log('not the service');\n"),
        # a CLI installed the way the node images install yarn: /opt/NAME, linked into PATH
        *debimage.npm_entries(replace(ADDON_PACKAGES[1], install_path="node-gyp-build-4.8.4"), tarballs[-1], "opt"),
        debimage.symlink("usr/local/bin/node-gyp-build", "/opt/node-gyp-build-4.8.4/bin.js"),
    ]
    fs = layered(node_image, entries, tmp)
    yield fs
    fs.close()


# --------------------------------------------------------------------------- the oracle


def extract(fs: RootFS, dest: Path) -> None:
    """Write the merged filesystem to ``dest`` (a test's private directory, our own image)."""
    regular = []
    for path in sorted(fs.entries):
        entry = fs.entries[path]
        target = dest / path
        if not path:
            continue
        if entry.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif entry.kind == "symlink":
            os.symlink(entry.linkname, target)
        elif entry.is_regular:
            regular.append(path)
    for entry, stream in fs.iter_files(regular):
        target = dest / entry.path
        target.write_bytes(stream.read())
        os.chmod(target, entry.mode & 0o777)
    (dest / "proc").mkdir(exist_ok=True)
    for path, entry in fs.entries.items():
        if entry.kind == "dir":
            os.chmod(dest / path, entry.mode & 0o7777)


# Runs inside the new mount and pid namespaces: chroot, cd WORKDIR, exec the command through
# the image's PATH (as runc does), with the image's Env.
LAUNCH = ("import json, os, sys; os.chroot(sys.argv[1]); os.chdir(sys.argv[2]); argv = json.loads(sys.argv[3]); "
          "os.execvpe(argv[0], argv, os.environ)")


def can_run_image() -> str:
    """Why the image's own programs cannot run here ("" when they can): a chroot with /proc
    (node reads /proc/self/exe for process.execPath) in private namespaces needs root."""
    if not hasattr(os, "chroot") or os.geteuid() != 0:
        return "running the image's own interpreter needs root (chroot)"
    if shutil.which("unshare") is None:
        return "running the image's own interpreter needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    return "" if probe.returncode == 0 else "unshare --mount --pid --mount-proc is not permitted here"


def run_in_root(root: Path, service_config: dict) -> dict:
    """Run the image's ENTRYPOINT+CMD as ``docker run`` would, in ``root`` (with its own /proc):
    its Env (plus HOME), from WORKDIR; the JSON it prints."""
    settings = service_config["config"]
    argv = list(settings.get("Entrypoint") or []) + list(settings.get("Cmd") or [])
    env = dict(item.split("=", 1) for item in settings["Env"])
    env.setdefault("HOME", "/root")
    command = ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root}/proc", "--",
               sys.executable, "-c", LAUNCH, str(root), settings.get("WorkingDir") or "/", json.dumps(argv)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{argv} failed in the image: {result.stderr[-2000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def extracted(fs: RootFS, tmp_path_factory, name: str) -> Path:
    """The merged filesystem of ``fs`` written out to run in (skips where that cannot be done)."""
    if why := can_run_image():
        pytest.skip(why)
    root = tmp_path_factory.mktemp(name)
    extract(fs, root)
    return root


@pytest.fixture(scope="module")
def py_root(py_shapes, tmp_path_factory):
    return extracted(py_shapes, tmp_path_factory, "py-root")


@pytest.fixture(scope="module")
def node_root(node_shapes, tmp_path_factory):
    return extracted(node_shapes, tmp_path_factory, "node-root")


def real(fs: RootFS, path: str) -> str:
    return fs.resolve(path.lstrip("/"))


# --------------------------------------------------------------------------- Python shapes

VENV_SYS_PATH = ["/srv", "/usr/lib/python311.zip", "/usr/lib/python3.11", "/usr/lib/python3.11/lib-dynload",
                 "/opt/venv/lib/python3.11/site-packages", "/opt/plugins-src/src"]
VENV_M_APP = config(["python", "-m", "app"], workdir="/srv", env={"PATH": VENV_PATH})


def test_venv_module_in_srv_from_workdir(py_shapes):
    """The issue's first shape: venv at /opt/venv on PATH, C-extension wheels in its
    site-packages, the app package in /srv run as ``python -m app`` from WORKDIR /srv."""
    fs = py_shapes
    service = find_service(fs, VENV_M_APP)
    assert service.executable == "/usr/bin/python3.11"
    assert service.invoked == "/opt/venv/bin/python"
    assert service.argv == ["python", "-m", "app"] and service.kind == "python" and service.scripts == []
    assert service.reasons[0] == ("CMD python -> /opt/venv/bin/python (PATH) -> /opt/venv/bin/python3.11 -> "
                                  "/usr/bin/python3.11 (symlinks)")
    layout = python_layout(fs, service)
    assert layout.sys_path == VENV_SYS_PATH
    assert layout.venv == "/opt/venv" and layout.prefix == "/opt/venv" and layout.base_prefix == "/usr"
    assert layout.main == "/srv/app/__main__.py"
    roots = python_roots(fs, service)
    kinds = {root.path: root.kind for root in roots.roots}
    assert kinds["/srv"] == "main" and kinds["/usr/lib/python3.11"] == "stdlib"
    assert kinds["/opt/venv/lib/python3.11/site-packages"] == "venv-site"
    assert kinds["/opt/plugins-src/src"] == "pth" and kinds["/srv/app"] == "pth-import"
    assert "/usr/lib/python3/dist-packages" not in kinds  # include-system-site-packages = false
    text = "\n".join(roots.reasons)
    assert "python: /opt/venv/pyvenv.cfg (found from the invoked /opt/venv/bin/python): home = /usr/bin" in text
    assert "python: sys.path[0] = /srv (-m app: the working directory)" in text
    assert "python: -m app is /srv/app/__main__.py" in text
    assert "__editable___svc_app_1_0_finder.py" in text and "pyzmq.libs" in text
    files = set(code_files(fs, roots))
    site = "opt/venv/lib/python3.11/site-packages"
    assert {"srv/app/__main__.py", "srv/app/__init__.py", f"{site}/markupsafe/_speedups.cpython-311-x86_64-linux-gnu.so",
            f"{site}/yaml/_yaml.cpython-311-x86_64-linux-gnu.so", f"{site}/zmq/backend/cython/_zmq.cpython-311-x86_64-linux-gnu.so",
            f"{site}/__editable__.svc_app-1.0.pth", "usr/lib/python3.11/json/__init__.py"} <= files
    assert any(f.startswith(f"{site}/pyzmq.libs/libzmq-") for f in files)  # vendored by auditwheel
    assert {f for f in native_code(files) if "pyzmq.libs" in f}
    # a pip-compiled .pyc pairs with its source; one without a source is not code
    assert "srv/app/__pycache__/__init__.cpython-311.pyc" in files
    assert "srv/app/__pycache__/stale.cpython-311.pyc" not in files
    # a module reached through a symlink brings its target; Debian's sitecustomize too
    assert {"srv/app/common.py", "opt/common/common.py"} <= files
    assert {"usr/lib/python3.11/sitecustomize.py", "etc/python3.11/sitecustomize.py"} <= files
    assert not any("/test/" in f or f.endswith(".pyi") for f in files)
    # no silent misses: stray code and the unused PYTHONPATH dir are reported, taken code is not
    suspicious = suspicious_code_dirs(fs, roots, service.workdir, covered=["/" + f for f in files])
    # (/app: the base demo image's own app, which this CMD does not run)
    assert [s.path for s in suspicious] == ["/app", "/opt/lib/py", "/opt/orphan"]
    assert str(suspicious[2]) == "/opt/orphan (1 code-looking file, e.g. /opt/orphan/stray.py)"


def test_console_script_with_venv_shebang(py_shapes):
    """``CMD ["/opt/venv/bin/app-cli"]``: pip's console script, ``#!/opt/venv/bin/python``."""
    fs = py_shapes
    service = find_service(fs, config(["/opt/venv/bin/app-cli"]))
    assert service.executable == "/usr/bin/python3.11"
    assert service.invoked == "/opt/venv/bin/python"
    assert service.argv == ["/opt/venv/bin/python", "/opt/venv/bin/app-cli"]
    assert service.scripts == ["/opt/venv/bin/app-cli"]
    assert "/opt/venv/bin/app-cli is a script for #!/opt/venv/bin/python (code: embedded)" in service.reasons
    roots = python_roots(fs, service)
    assert roots.search_path == ["/opt/venv/bin", *VENV_SYS_PATH[1:]]
    kinds = {root.path: root.kind for root in roots.roots}
    assert kinds["/opt/venv/bin/app-cli"] == "script" and kinds["/opt/venv/bin"] == "main"
    assert kinds["/srv/app"] == "pth-import"  # only the editable finder says where app lives
    files = set(code_files(fs, roots))
    assert {"opt/venv/bin/app-cli", "srv/app/cli.py", "srv/app/report.py", "opt/plugins-src/src/plugins/__init__.py"} <= files
    assert not any(f.startswith("srv/tools/") for f in files)
    # from WORKDIR /srv (gunicorn's shape: the server imports the app from its cwd), /srv is code
    service = find_service(fs, config(["/opt/venv/bin/app-cli"], workdir="/srv"))
    cwd_root = [r for r in python_roots(fs, service).roots if r.kind == "cwd"]
    assert [r.path for r in cwd_root] == ["/srv"] and "gunicorn" in cwd_root[0].reason


def test_shell_form_cmd(py_shapes):
    """``CMD cd /srv && exec python -m app`` (shell form): dash reads it, the cd moves the cwd."""
    fs = py_shapes
    service = find_service(fs, config(["/bin/sh", "-c", "cd /srv && exec python -m app"], env={"PATH": VENV_PATH}))
    assert service.executable == "/usr/bin/python3.11" and service.workdir == "/srv"
    assert service.argv == ["python", "-m", "app"]
    assert service.reasons[:3] == [
        "CMD /bin/sh -> /bin/dash (symlink)",
        "sh -c 'cd /srv && exec python -m app': cd /srv",
        "sh -c 'cd /srv && exec python -m app' ends in 'exec python -m app': runs python -m app",
    ]
    assert python_sys_path(fs, service) == VENV_SYS_PATH
    # without exec, and with an assignment in front
    service = find_service(fs, config(["/bin/sh", "-c", "PYTHONPATH=/opt/lib/py python3 /srv/tools/report.py"]))
    assert service.argv == ["python3", "/srv/tools/report.py"] and service.env["PYTHONPATH"] == "/opt/lib/py"
    assert any("no exec: the shell stays its parent" in r for r in service.reasons)
    assert python_sys_path(fs, service)[:2] == ["/srv/tools", "/opt/lib/py"]


def test_env_shebang_goes_through_the_image_path(py_shapes):
    """``#!/usr/bin/env python3`` finds python3 on the image's PATH: the venv's."""
    fs = py_shapes
    service = find_service(fs, config(["/srv/tools/report.py"], env={"PATH": VENV_PATH}))
    assert service.executable == "/usr/bin/python3.11" and service.invoked == "/opt/venv/bin/python3"
    assert service.argv == ["python3", "/srv/tools/report.py"] and service.scripts == ["/srv/tools/report.py"]
    assert service.reasons[1:3] == [
        "/srv/tools/report.py is a script for #!/usr/bin/env python3 (code: embedded)",
        "#! of /srv/tools/report.py: /usr/bin/env",
    ]
    assert service.reasons[3] == ("env: python3 -> /opt/venv/bin/python3 (PATH) -> /opt/venv/bin/python3.11 -> "
                                  "/usr/bin/python3.11 (symlinks)")
    assert python_sys_path(fs, service) == ["/srv/tools", *VENV_SYS_PATH[1:]]


def test_pythonpath_and_debian_site(py_shapes):
    """PYTHONPATH comes after sys.path[0]; Debian's python3 has dist-packages, no venv."""
    fs = py_shapes
    service = find_service(fs, config(["python3", "/srv/tools/report.py"], workdir="/srv",
                                      env={"PYTHONPATH": "/opt/lib/py"}))
    assert service.executable == "/usr/bin/python3.11" and service.invoked == "/usr/bin/python3"
    layout = python_layout(fs, service)
    assert layout.sys_path == ["/srv/tools", "/opt/lib/py", "/usr/lib/python311.zip", "/usr/lib/python3.11",
                               "/usr/lib/python3.11/lib-dynload", "/usr/lib/python3/dist-packages"]
    assert layout.site_flavour == "debian" and layout.venv is None
    roots = python_roots(fs, service)
    assert {r.path: r.kind for r in roots.roots}["/opt/lib/py"] == "pythonpath"
    assert "python: PYTHONPATH=/opt/lib/py" in roots.reasons
    assert "opt/lib/py/extra_mod.py" in code_files(fs, roots)
    # -E ignores it, -I also drops sys.path[0]
    service.argv = ["python3", "-E", "/srv/tools/report.py"]
    assert "/opt/lib/py" not in python_sys_path(fs, service)
    service.argv = ["python3", "-I", "/srv/tools/report.py"]
    assert python_sys_path(fs, service)[0] == "/usr/lib/python311.zip"


def test_usr_local_prefix_of_the_official_images(py_local):
    """CPython under /usr/local: the landmark search from the executable finds the prefix; the
    site directories are those of the interpreter's own (frozen) site module."""
    fs = py_local
    service = find_service(fs, config(["python3", "app.py"], workdir="/usr/src/app"))
    assert service.executable == "/usr/local/bin/python3.11" and service.invoked == "/usr/local/bin/python3"
    layout = python_layout(fs, service)
    assert layout.prefix == layout.exec_prefix == "/usr/local" and layout.site_flavour == "debian"
    assert layout.sys_path == ["/usr/src/app", "/usr/local/lib/python311.zip", "/usr/local/lib/python3.11",
                               "/usr/local/lib/python3.11/lib-dynload", "/usr/local/lib/python3/dist-packages"]
    assert ("python: prefix /usr/local, exec_prefix /usr/local (landmark lib/python3.11/os.py searched up "
            "from /usr/local/bin)") in layout.reasons
    assert ("python: site directories of a debian build (the site module frozen into /usr/local/bin/python3.11 "
            "uses dist-packages)") in layout.reasons
    files = set(code_files(fs, python_roots(fs, service)))
    assert {"usr/src/app/app.py", "usr/local/lib/python3/dist-packages/markupsafe/__init__.py",
            "usr/local/lib/python3.11/os.py", "usr/local/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"} <= files
    assert "usr/local/lib/python3.11/site-packages/decoy.py" not in files
    assert not any(f.startswith("usr/lib/python3") for f in files)


def test_dash_m_takes_the_whole_package_it_runs_even_one_the_recipe_leaves_out():
    """``python3 -m test``: Debian's CPython test suite lives in the stdlib's ``test/``, which the
    recipe leaves out of the stdlib (a service does not import it); the command runs it, so the
    package is a root of its own and its modules are code (sealed code roots hide the rest)."""
    from sconify.image.rootfs import RootFS
    from sconify.image.transports import read_image
    from sconify.conversion.select import recipe_for

    with RootFS.from_image(read_image(f"oci:{debimage.build_image('python-tests')}:latest")) as fs:
        service = find_service(fs, config(["python3", "-m", "test", "-j2", "test_os"], workdir="/app"))
        roots = python_roots(fs, service)
        assert ("/usr/lib/python3.11/test", "main") in [(root.path, root.kind) for root in roots.roots]
        files = set(code_files(fs, roots))
        assert {"usr/lib/python3.11/test/__main__.py", "usr/lib/python3.11/test/support/os_helper.py",
                "usr/lib/python3.11/test/test_importlib/test_api.py"} <= files
        stdlib_rule = recipe_for("usr/bin/python3.11").code[0]
        assert "test" in stdlib_rule.exclude  # what the recipe alone would leave out
        service = find_service(fs, config(["python3", "-m", "json.tool"], workdir="/app"))
        assert not [root for root in python_roots(fs, service).roots if root.path.endswith("/json")]  # a module of a package already whole


def test_binary_option_and_errors(py_shapes):
    fs = py_shapes
    service = find_service(fs, VENV_M_APP, binary="/usr/bin/python3.11")
    assert service.argv == ["python", "-m", "app"] and service.requested == "--binary /usr/bin/python3.11"
    assert service.reasons[-1] == "--binary /usr/bin/python3.11 is the program ENTRYPOINT/CMD runs"
    # a start script with two exec branches: one line naming them, and the --binary to pass
    with pytest.raises(UsageError) as error:
        find_service(fs, config(["/srv/start.sh"], env={"PATH": VENV_PATH}))
    message = str(error.value)
    assert "\n" not in message
    assert "'exec /opt/venv/bin/app-cli'" in message and "'exec python -m app'" in message
    assert message.endswith("--binary /usr/bin/python3.11")
    # --binary then still keeps the script as code
    service = find_service(fs, config(["/srv/start.sh"], env={"PATH": VENV_PATH}), binary="python3")
    assert service.executable == "/usr/bin/python3.11" and service.scripts == ["/srv/start.sh"]
    assert "/srv/start.sh" in code_roots(fs, service).paths
    with pytest.raises(UsageError, match="not an executable file in the image on PATH"):
        find_service(fs, config(["gunicorn", "app:app"]))
    with pytest.raises(UsageError, match="no ENTRYPOINT or CMD"):
        find_service(fs, config())


TINI_GOSU = config(["python", "-m", "app"], entrypoint=["tini", "--", "gosu", "nobody"], workdir="/srv",
                   env={"PATH": VENV_PATH})


def test_init_and_user_switch_wrappers(py_shapes):
    """``ENTRYPOINT ["tini", "--", "gosu", "nobody"]``: both are stepped over (Debian's own)."""
    fs = py_shapes
    service = find_service(fs, TINI_GOSU)
    assert service.executable == "/usr/bin/python3.11" and service.argv == ["python", "-m", "app"]
    assert service.user == "nobody"
    assert service.reasons[:4] == ["ENTRYPOINT tini -> /usr/bin/tini (PATH)", "tini: gosu -> /usr/sbin/gosu (PATH)",
                                   "gosu: runs as user nobody",
                                   "gosu: python -> /opt/venv/bin/python (PATH) -> /opt/venv/bin/python3.11 -> "
                                   "/usr/bin/python3.11 (symlinks)"]
    assert python_sys_path(fs, service) == VENV_SYS_PATH


@pytest.mark.parametrize("shape", ["venv -m", "console script", "shell form", "env shebang", "PYTHONPATH",
                                   "tini + gosu"])
def test_python_shapes_match_a_real_run(py_shapes, py_root, shape):
    """The oracle: the image's own python, run as the container would, reports the same
    sys.path, and every module file it loaded is a code file."""
    fs = py_shapes
    service_config = {
        "venv -m": VENV_M_APP,
        "console script": config(["/opt/venv/bin/app-cli"]),
        "shell form": config(["/bin/sh", "-c", "cd /srv && exec python -m app"], env={"PATH": VENV_PATH}),
        "env shebang": config(["/srv/tools/report.py"], env={"PATH": VENV_PATH}),
        "PYTHONPATH": config(["python3", "/srv/tools/report.py"], workdir="/srv", env={"PYTHONPATH": "/opt/lib/py"}),
        "tini + gosu": TINI_GOSU,
    }[shape]
    seen = run_in_root(py_root, service_config)
    service = find_service(fs, service_config)
    layout = python_layout(fs, service)
    assert [p or service.workdir for p in seen["sys_path"]] == layout.sys_path
    assert seen["executable"] == layout.executable and seen["prefix"] == layout.prefix
    files = set(code_files(fs, code_roots(fs, service)))
    loaded = {real(fs, f) for f in seen["files"]}
    assert loaded and not loaded - files, f"loaded but not selected: {sorted(loaded - files)}"


def test_usr_local_prefix_matches_a_real_run(py_local, tmp_path):
    if why := can_run_image():
        pytest.skip(why)
    extract(py_local, tmp_path)
    service_config = config(["python3", "app.py"], workdir="/usr/src/app")
    seen = run_in_root(tmp_path, service_config)
    service = find_service(py_local, service_config)
    assert [p or service.workdir for p in seen["sys_path"]] == python_sys_path(py_local, service)
    files = set(code_files(py_local, code_roots(py_local, service)))
    assert not {real(py_local, f) for f in seen["files"]} - files


# --------------------------------------------------------------------------- Node shapes

NODE_SERVICE = config(["node", "src/server.js"], entrypoint=["docker-entrypoint.sh"], workdir="/srv/app",
                      env={"NODE_PATH": "/opt/shared/node_modules"})


def test_node_behind_docker_entrypoint_with_parent_node_modules(node_shapes):
    """The official node layout: ENTRYPOINT docker-entrypoint.sh, CMD node src/server.js,
    node_modules in the parent of the package, NODE_PATH for one more."""
    fs = node_shapes
    service = find_service(fs, NODE_SERVICE)
    assert service.executable == "/usr/bin/node" and service.kind == "node"
    assert service.argv == ["node", "src/server.js"] and service.workdir == "/srv/app"
    assert service.scripts == ["/usr/local/bin/docker-entrypoint.sh"]
    assert service.reasons == [
        "ENTRYPOINT docker-entrypoint.sh -> /usr/local/bin/docker-entrypoint.sh (PATH)",
        "/usr/local/bin/docker-entrypoint.sh is a sh script (code: embedded)",
        "docker-entrypoint.sh prepends 'node' when its first argument is an option or not a command: "
        "'node' is a command, the arguments stay as they are",
        "docker-entrypoint.sh ends in 'exec $@': runs node src/server.js",
        "docker-entrypoint.sh: node -> /usr/bin/node (PATH)",
    ]
    layout = node_layout(fs, service)
    assert layout.main == "/srv/app/src/server.js" and layout.package_dir == "/srv/app"
    assert layout.lookup_paths == ["/srv/app/src/node_modules", "/srv/app/node_modules", "/srv/node_modules",
                                   "/node_modules"]
    assert layout.global_paths == ["/opt/shared/node_modules", "/root/.node_modules", "/root/.node_libraries",
                                   "/usr/lib/x86_64-linux-gnu/nodejs", "/usr/share/nodejs"]
    roots = node_roots(fs, service)
    kinds = {root.path: root.kind for root in roots.roots}
    assert kinds == {
        "/usr/local/bin/docker-entrypoint.sh": "script", "/srv/app/src/server.js": "main", "/srv/app": "package",
        "/srv/node_modules": "node_modules", "/opt/shared/node_modules": "global",
        "/usr/lib/x86_64-linux-gnu/nodejs": "global", "/usr/share/nodejs": "global",
    }
    assert 'node: package /srv/app/package.json (main "src/server.js")' in roots.reasons
    files = set(code_files(fs, roots))
    assert {"usr/local/bin/docker-entrypoint.sh", "srv/app/src/server.js", "srv/app/src/lib/format.js",
            "srv/app/package.json", "srv/node_modules/ms/index.js", "srv/node_modules/debug/node_modules/ms/index.js",
            "opt/shared/node_modules/is-number/index.js"} <= files
    assert not any(f.endswith(".md") for f in files)
    # the addon Node loads here is code; the macOS and Windows prebuilds are not
    addons = [f for f in native_code(files) if f.endswith(".node")]
    assert addons == ["srv/node_modules/bufferutil/prebuilds/linux-x64/node.napi.node"]
    # /app: the base demo image's own app, which this image does not run; the CLI installed in
    # /opt/node-gyp-build-4.8.4 and linked into PATH is a program of its own, not reported
    assert [s.path for s in suspicious_code_dirs(fs, roots, service.workdir)] == ["/app", "/opt/tools"]


def test_docker_entrypoint_prepends_node_for_a_script_argument(node_shapes):
    """``docker run image src/server.js``: not a command, so the entrypoint runs node with it."""
    fs = node_shapes
    service = find_service(fs, config(["src/server.js"], entrypoint=["docker-entrypoint.sh"], workdir="/srv/app"))
    assert service.executable == "/usr/bin/node" and service.argv == ["node", "src/server.js"]
    assert ("docker-entrypoint.sh prepends 'node' (the first argument 'src/server.js' is not a command): "
            "now node src/server.js") in service.reasons
    service = find_service(fs, config(["--version"], entrypoint=["docker-entrypoint.sh"]))
    assert service.argv == ["node", "--version"]
    assert node_layout(fs, service).main is None


def test_node_shape_matches_a_real_run(node_shapes, node_root):
    """The oracle: the image's node, started through the entrypoint, resolves and loads only
    what the derived roots hold."""
    fs = node_shapes
    seen = run_in_root(node_root, NODE_SERVICE)
    assert seen["checks"] == [172800000, True, "[ok]", "60606060"]
    service = find_service(fs, NODE_SERVICE)
    layout = node_layout(fs, service)
    assert seen["paths"] == layout.lookup_paths and seen["globalPaths"] == layout.global_paths
    files = set(code_files(fs, code_roots(fs, service)))
    loaded = {real(fs, f) for f in seen["files"]}
    assert loaded and not loaded - files, f"loaded but not selected: {sorted(loaded - files)}"


# --------------------------------------------------------------------------- the shell reader


def test_shell_reader_follows_functions_redirections_and_exports():
    """Entrypoints in the style of the postgres/redis images: a main function called with
    "$@", exports, cd, a heredoc, redirections, a conditional set --."""
    from sconify.conversion.codepaths import shell

    script = """#!/usr/bin/env bash
set -Eeo pipefail
cat > /tmp/banner <<-'END'
	exec not-this
	END
_main() {
  if [ "${1:0:1}" = '-' ]; then
    set -- gunicorn "$@"
  fi
  export APP_ENV=production
  cd /srv  # the app
  exec "$@" 2>&1
}
_main "$@"
"""
    commands = {"gunicorn": True, "python": True}
    outcome = shell.analyse(script, ["--workers", "2"], "/", {"PATH": DEFAULT_PATH}, "entry.sh",
                            lambda name, cwd, env: commands.get(name, False))
    assert outcome.argv == ["gunicorn", "--workers", "2"] and outcome.cwd == "/srv"
    assert outcome.env["APP_ENV"] == "production"
    assert outcome.reasons[0] == "entry.sh: calls its function _main()"
    with pytest.raises(shell.ShellUnreadable, match="ends in a conditional"):
        shell.analyse('if [ -n "$X" ]; then exec a; else exec b; fi\n', [], "/", {}, "x.sh", lambda *a: True)
    with pytest.raises(shell.ShellUnreadable, match="comes from a command substitution"):
        shell.analyse("exec $(which python) app.py\n", [], "/", {}, "x.sh", lambda *a: True)
