"""Build small, real container images from pinned Debian packages and npm packages.

These are sconify's bundled default inputs (``sconify demo``) and the fixtures every test runs
on: a Python image (the Debian ``python3`` closure plus an app under ``/app``) and a Node.js image
(the Debian ``nodejs`` closure plus an app with a ``node_modules`` tree). Each is an OCI layout
with two layers: the base layer (package closure, minimal ``/etc``, ``/tmp``) and the app layer,
which carries symlinks, a hardlink, a whiteout of a base file and an opaque directory, so that
later steps meet real layer semantics. A third, one-layer image ``tool-base`` (the Python closure
plus venv) is a registry-free base for sconify's own Dockerfile.

Steps, one function each: ``download_debs`` (``apt-get download`` of pinned versions into the
cache), ``read_deb`` (the .deb's data tar streamed through ``dpkg-deb --fsys-tarfile``, nothing
extracted to disk), ``fetch_npm`` (``npm pack`` of pinned versions, integrity checked),
``write_layer_tars`` (the base layer and the app layer, each with ``write_layer_tar``: sorted
entries, clamped mtimes, uid/gid 0) and ``build_image``. What a layer entry is lives in
``sconify.demo.layerentries``; what the demo apps are (their sources and data) in ``sconify.demo.apps``.
Their public names are importable from here too.

Builds are deterministic and cached under ``cache_dir()`` (``$SCONIFY_CACHE`` or
``~/.cache/sconify``), keyed by the pins, the epoch, the compression and the source text of this
module, ``sconify.demo.layerentries`` and ``sconify.demo.apps`` (``BUILDER_SOURCES``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Iterable

from sconify.demo.apps import (  # noqa: F401  (re-exported: the demo apps were defined here)
    DEMO_DEFAULTS_APP,
    DEMO_DEFAULTS_BASE,
    NODE_INDEX,
    NODE_PACKAGE_JSON,
    PYTHON_MAIN,
    PYTHON_SERVICE,
    base_extras,
    CPYTHON_ORACLE_TESTS,
    common_app_entries,
    demo_bytes,
    node_app_entries,
    python_app_entries,
    python_tests_app_entries,
    readings_csv,
)
from sconify.errors import EnvironmentProblem, UsageError
from sconify.demo.layerentries import (  # noqa: F401  (re-exported: layer entries were defined here)
    LayerEntry,
    directory,
    hardlinks,
    normalise_member_name,
    opaque,
    regular_file,
    symlink,
    whiteout,
    with_parent_dirs,
    write_layer_tar,
)

# Bookworm's release day; SOURCE_DATE_EPOCH overrides it.
DEFAULT_EPOCH = 1686355200
DEBIAN_ARCH = "amd64"
DEFAULT_COMPRESSION = "gzip"  # every consumer here (docker load, skopeo, umoci) accepts gzip
IMAGE_TAG = "latest"
# The modules whose source text shapes the images' bytes; each one's digest is in every build key.
BUILDER_SOURCES = ("debimage.py", "layerentries.py", "apps.py")


@dataclass(frozen=True)
class DebPackage:
    """A Debian binary package pinned to one version."""

    name: str
    version: str

    def find_in(self, folder: Path) -> Path | None:
        """The downloaded file in ``folder`` (``apt-get download`` writes an epoch's ':' as
        '%3a'; the architecture is ours or ``all``)."""
        stem = f"{self.name}_{self.version.replace(':', '%3a')}"
        for arch in (DEBIAN_ARCH, "all"):
            path = folder / f"{stem}_{arch}.deb"
            if path.is_file():
                return path
        return None


@dataclass(frozen=True)
class NpmPackage:
    """An npm package pinned to a version and its registry integrity, placed at ``install_path``."""

    name: str
    version: str
    integrity: str
    install_path: str  # relative to /app, e.g. "node_modules/debug/node_modules/ms"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"


def _pins(table: str) -> tuple[DebPackage, ...]:
    return tuple(DebPackage(*line.split()) for line in table.strip().splitlines())


# Closures of `python3` and `nodejs` in Debian bookworm (+ bookworm-security), resolved with
# resolve_closure() and pinned. nodejs is pinned to Debian's build: hosts with the nodesource
# repository would otherwise pick a different nodejs.
PYTHON_PACKAGES = _pins("""
dpkg 1.21.23
gcc-12-base 12.2.0-14+deb12u1
install-info 6.8-6+b1
libacl1 2.3.1-3
libbz2-1.0 1.0.8-5+b1
libc6 2.36-9+deb12u14
libcom-err2 1.47.0-2+b2
libcrypt1 1:4.4.33-2
libdb5.3 5.3.28+dfsg2-1
libexpat1 2.5.0-1+deb12u5
libffi8 3.4.4-1
libgcc-s1 12.2.0-14+deb12u1
libgdbm-compat4 1.23-3
libgdbm6 1.23-3
libgssapi-krb5-2 1.20.1-2+deb12u5
libk5crypto3 1.20.1-2+deb12u5
libkeyutils1 1.6.3-2
libkrb5-3 1.20.1-2+deb12u5
libkrb5support0 1.20.1-2+deb12u5
liblzma5 5.4.1-1+deb12u2
libmd0 1.0.4-2
libncursesw6 6.4-4
libnsl2 1.3.0-2
libpcre2-8-0 10.42-1+deb12u2
libperl5.36 5.36.0-7+deb12u4
libpython3-stdlib 3.11.2-1+b1
libpython3.11-minimal 3.11.2-6+deb12u9
libpython3.11-stdlib 3.11.2-6+deb12u9
libreadline8 8.2-1.3
libselinux1 3.4-1+b6
libsqlite3-0 3.40.1-2+deb12u2
libssl3 3.0.22-1~deb12u2
libtinfo6 6.4-4
libtirpc-common 1.3.3+ds-1
libtirpc3 1.3.3+ds-1
libuuid1 2.38.1-5+deb12u3
libzstd1 1.5.4+dfsg2-5
mailcap 3.70+nmu1
media-types 10.0.0
mime-support 3.66
perl 5.36.0-7+deb12u4
perl-base 5.36.0-7+deb12u4
perl-modules-5.36 5.36.0-7+deb12u4
python3 3.11.2-1+b1
python3-minimal 3.11.2-1+b1
python3.11 3.11.2-6+deb12u9
python3.11-minimal 3.11.2-6+deb12u9
readline-common 8.2-1.3
tar 1.34+dfsg-1.2+deb12u1
zlib1g 1:1.2.13.dfsg-1
""")

NODE_PACKAGES = _pins("""
gcc-12-base 12.2.0-14+deb12u1
libbrotli1 1.0.9-2+deb12u1
libc-ares2 1.18.1-3
libc6 2.36-9+deb12u14
libgcc-s1 12.2.0-14+deb12u1
libicu72 72.1-3+deb12u1
libnghttp2-14 1.52.0-1+deb12u3
libnode108 18.20.4+dfsg-1~deb12u3
libssl3 3.0.22-1~deb12u2
libstdc++6 12.2.0-14+deb12u1
libuv1 1.44.2-1+deb12u1
node-acorn 8.8.1+ds+~cs25.17.7-2
node-busboy 1.6.0+~cs2.6.0-2
node-cjs-module-lexer 1.2.2+dfsg-5
node-undici 5.15.0+dfsg1+~cs20.10.9.3-1+deb12u4
node-xtend 4.0.2-3
nodejs 18.20.4+dfsg-1~deb12u3
zlib1g 1:1.2.13.dfsg-1
""")

# The Python closure plus venv/ensurepip and libstdc++ (lief's extension needs it): a base image
# for sconify's own Dockerfile. ca-certificates is left out (it pulls debconf; the build is offline).
TOOL_BASE_PACKAGES = tuple(sorted(PYTHON_PACKAGES + _pins("""
libstdc++6 12.2.0-14+deb12u1
python3-distutils 3.11.2-3
python3-lib2to3 3.11.2-3
python3-pip-whl 23.0.1+dfsg-1
python3-setuptools-whl 66.1.1-1+deb12u2
python3-venv 3.11.2-1+b1
python3.11-venv 3.11.2-6+deb12u9
"""), key=lambda p: p.name))

# CPython's own regression tests (issue 23's oracle for the runtime's file semantics): the Python
# closure plus Debian's test suite, for the same python3.11 build.
PYTHON_TESTS_PACKAGES = tuple(sorted(PYTHON_PACKAGES + _pins("""
libpython3.11-testsuite 3.11.2-6+deb12u9
net-tools 2.10-0.1+deb12u2
"""), key=lambda p: p.name))

NODE_MODULES = (
    NpmPackage("debug", "4.3.4", "sha512-PRWFHuSU3eDtQJPvnNY7Jcket1j0t5OuOsFzPPzsekD52Zl8qUfFIPEiswXqIvHWGVHOgX+7G/vCNNhehwxfkQ==", "node_modules/debug"),
    NpmPackage("ms", "2.1.2", "sha512-sGkPx+VjMtmA6MX27oA4FBFELFCZZ4S4XqeGOXCv68tT+jb3vk/RyaKWP0PTKyWtmLSM0b+adUTEvbs1PEaH2w==", "node_modules/debug/node_modules/ms"),
    NpmPackage("ms", "2.1.3", "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==", "node_modules/ms"),
    NpmPackage("is-number", "7.0.0", "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==", "node_modules/is-number"),
)

# Debian paths left out of the base layer: documentation only (copyright files are kept).
SKIPPED_PREFIXES = ("usr/share/man/", "usr/share/info/", "usr/share/locale/", "usr/share/lintian/")


# --------------------------------------------------------------------------- Debian packages


def cache_dir() -> Path:
    """Where downloads and built images are kept: ``$SCONIFY_CACHE`` or ``~/.cache/sconify``."""
    configured = os.environ.get("SCONIFY_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "sconify"


def source_date_epoch() -> int:
    """``$SOURCE_DATE_EPOCH`` if set, else the fixed DEFAULT_EPOCH."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_EPOCH
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds; set it to an integer such as 1686355200 or unset it")
    return int(value)


def require_tool(name: str, purpose: str) -> str:
    """Path of the executable ``name``, or EnvironmentProblem naming how to get it."""
    found = shutil.which(name)
    if not found:
        raise EnvironmentProblem(f"{name} is not installed; {purpose}")
    return found


def run_tool(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)


def resolve_closure(root: DebPackage) -> tuple[DebPackage, ...]:
    """Resolve the Depends/Pre-Depends closure of ``root`` with apt (to regenerate the pins).

    Every package but the root is pinned to its current candidate version.
    """
    apt_cache = require_tool("apt-cache", "resolving Debian closures needs a Debian host with apt")
    result = run_tool([
        apt_cache, "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
        "--no-breaks", "--no-replaces", "--no-enhances", f"{root.name}={root.version}",
    ])
    if result.returncode != 0:
        raise EnvironmentProblem(f"apt-cache cannot resolve {root.name}={root.version}: {result.stderr.strip()}; run `apt-get update`")
    names = sorted({line for line in result.stdout.splitlines() if line and not line.startswith((" ", "<"))} - {root.name})
    packages = [root]
    for name in names:
        policy = run_tool([apt_cache, "policy", name]).stdout
        candidate = next(line.split()[1] for line in policy.splitlines() if "Candidate:" in line)
        packages.append(DebPackage(name, candidate))
    return tuple(sorted(packages, key=lambda p: p.name))


def download_debs(packages: Iterable[DebPackage], dest: Path) -> list[Path]:
    """``apt-get download`` each pinned package into ``dest`` unless it is already there."""
    packages = list(packages)
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if p.find_in(dest) is None]
    if missing:
        apt_get = require_tool("apt-get", "building the demo images needs a Debian host with apt (or run sconify in its container image)")
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            result = run_tool([apt_get, "download", "-q", *(f"{p.name}={p.version}" for p in missing)], cwd=Path(tmp))
            if result.returncode != 0:
                raise EnvironmentProblem(unavailable_message(missing, result.stderr))
            for package in missing:
                fetched = package.find_in(Path(tmp))
                if fetched is None:
                    raise EnvironmentProblem(unavailable_message([package], result.stderr))
                os.replace(fetched, dest / fetched.name)
    return [p.find_in(dest) for p in packages]  # type: ignore[misc]


def unavailable_message(packages: list[DebPackage], apt_output: str) -> str:
    """One line naming the first unavailable pin and what to do about it."""
    for package in packages:
        if f"'{package.version}' for '{package.name}'" in apt_output or f" {package.name} " in apt_output:
            break
    else:
        package = packages[0]
    return (
        f"Debian package {package.name}={package.version} cannot be downloaded with apt-get; "
        "run `apt-get update` (bookworm and bookworm-security must be in the apt sources), "
        "or if Debian dropped that version, update the pins in sconify/demo/debimage.py with resolve_closure()"
    )


def read_deb(deb_path: Path, mtime_limit: int) -> list[LayerEntry]:
    """The entries of a .deb's data tar, streamed through ``dpkg-deb --fsys-tarfile``."""
    dpkg_deb = require_tool("dpkg-deb", "building the demo images needs dpkg (apt-get install dpkg)")
    with subprocess.Popen([dpkg_deb, "--fsys-tarfile", str(deb_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        try:
            entries = data_tar_entries(proc.stdout, f"{deb_path.name}:", mtime_limit)
        except (tarfile.TarError, KeyError):
            entries = None
        proc.stdout.close()
        stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0 or entries is None:
        raise UsageError(f"{deb_path} is not a readable Debian package ({' '.join(stderr.split())}); delete it from the cache and rerun")
    return entries


def data_tar_entries(stream: IO[bytes], group_prefix: str, mtime_limit: int) -> list[LayerEntry]:
    """Layer entries of a Debian data tar; hardlinks become files sharing a ``link_group``."""
    entries: list[LayerEntry] = []
    file_data: dict[str, bytes] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            path = normalise_member_name(member.name)
            skipped = not path or path.startswith(SKIPPED_PREFIXES) or is_skipped_doc(path)
            if skipped:
                if member.isfile():  # kept only as a possible hardlink target
                    file_data[path] = tar.extractfile(member).read()  # type: ignore[union-attr]
                continue
            mtime = min(int(member.mtime), mtime_limit)
            if member.isdir():
                entries.append(LayerEntry(path, "dir", member.mode, mtime=mtime))
            elif member.issym():
                entries.append(LayerEntry(path, "symlink", 0o777, linkname=member.linkname, mtime=mtime))
            elif member.islnk():
                target = normalise_member_name(member.linkname)
                entries.append(LayerEntry(path, "file", member.mode, file_data[target], mtime=mtime,
                                          link_group=group_prefix + target))
            elif member.isfile():
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                file_data[path] = data
                entries.append(LayerEntry(path, "file", member.mode, data, mtime=mtime))
            # device nodes and fifos do not occur in these packages; they are dropped
    linked = {e.link_group for e in entries if e.link_group}
    return [replace(e, link_group=group_prefix + e.path) if group_prefix + e.path in linked and not e.link_group else e
            for e in entries]


def is_skipped_doc(path: str) -> bool:
    """Documentation under usr/share/doc is dropped, except each package's copyright file."""
    return path.startswith("usr/share/doc/") and not path.endswith("/copyright")


def base_layer_entries(debs: list[Path], epoch: int, extra: Iterable[LayerEntry]) -> list[LayerEntry]:
    """Merge the packages' entries (first package to ship a path wins) and ``extra``."""
    with ThreadPoolExecutor(max_workers=2) as pool:  # dpkg-deb decompresses in its own process
        per_package = list(pool.map(lambda deb: read_deb(deb, epoch), debs))
    merged: dict[str, LayerEntry] = {}
    for entries in per_package:
        for entry in entries:
            merged.setdefault(entry.path, entry)
    for entry in extra:
        merged[entry.path] = entry
    return list(merged.values())


# --------------------------------------------------------------------------- npm packages


def fetch_npm(packages: Iterable[NpmPackage], dest: Path) -> list[Path]:
    """``npm pack`` each pinned package into ``dest`` (cached) and check its integrity."""
    packages = list(packages)
    dest.mkdir(parents=True, exist_ok=True)
    missing = sorted({f"{p.name}@{p.version}" for p in packages if not (dest / p.filename).is_file()})
    if missing:
        npm = require_tool("npm", "the node demo image needs npm to fetch its node_modules (apt-get install npm)")
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            result = run_tool([npm, "pack", *missing, "--pack-destination", tmp, "--silent"], cwd=Path(tmp))
            if result.returncode != 0:
                raise EnvironmentProblem(
                    f"npm pack {' '.join(missing)} failed ({' '.join(result.stderr.split())[:200]}); "
                    "check that the npm registry is reachable (npm config get registry)"
                )
            for name in os.listdir(tmp):
                if name.endswith(".tgz"):
                    os.replace(Path(tmp) / name, dest / name)
    paths = []
    for package in packages:
        path = dest / package.filename
        algorithm, _, expected = package.integrity.partition("-")
        actual = base64.b64encode(hashlib.new(algorithm, path.read_bytes()).digest()).decode()
        if actual != expected:
            path.unlink()
            raise EnvironmentProblem(
                f"npm package {package.name}@{package.version} does not match its pinned integrity; "
                "the cached copy was removed, rerun to fetch it again"
            )
        paths.append(path)
    return paths


def npm_entries(package: NpmPackage, tarball: Path, app_root: str = "app") -> list[LayerEntry]:
    """The files of an npm tarball (``package/...``) placed under ``app_root/install_path``."""
    prefix = f"{app_root}/{package.install_path}"
    entries = []
    with tarfile.open(tarball, mode="r:gz") as tar:
        for member in tar:
            parts = normalise_member_name(member.name).split("/", 1)
            if len(parts) < 2 or not member.isfile():
                continue  # npm tarballs hold regular files; the parent dirs are added later
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            entries.append(regular_file(f"{prefix}/{parts[1]}", data, 0o755 if member.mode & 0o111 else 0o644))
    return entries


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one demo image."""

    name: str
    packages: tuple[DebPackage, ...]
    npm_packages: tuple[NpmPackage, ...]
    cmd: tuple[str, ...]
    app: str = ""  # "python" | "node" | "" (no app layer)
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")
    workdir: str = "/app"
    labels: dict[str, str] = field(default_factory=dict)


IMAGE_SPECS = {
    "python": ImageSpec("python", PYTHON_PACKAGES, (), ("python3", "/app/main.py"), app="python"),
    "node": ImageSpec("node", NODE_PACKAGES, NODE_MODULES, ("node", "/app/index.js"), app="node"),
    "tool-base": ImageSpec("tool-base", TOOL_BASE_PACKAGES, (), ("python3",), workdir="/"),
    "python-tests": ImageSpec("python-tests", PYTHON_TESTS_PACKAGES, (), ("python3", "-m", "test", "-j2", *CPYTHON_ORACLE_TESTS),
                              app="python-tests"),
}


def image_names() -> tuple[str, ...]:
    return tuple(IMAGE_SPECS)


def get_spec(name: str) -> ImageSpec:
    try:
        return IMAGE_SPECS[name]
    except KeyError:
        raise UsageError(f"unknown demo image {name!r}; choose one of: {', '.join(IMAGE_SPECS)}") from None


def build_key(spec: ImageSpec, epoch: int, compression: str) -> str:
    """A digest of everything the image depends on: pins, epoch, compression, this builder."""
    here = Path(__file__).parent
    material = {
        "builder": [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in BUILDER_SOURCES],
        "spec": [spec.name, [[p.name, p.version] for p in spec.packages],
                 [[p.name, p.version, p.integrity, p.install_path] for p in spec.npm_packages],
                 list(spec.cmd), spec.app, list(spec.env), spec.workdir],
        "epoch": epoch,
        "compression": compression,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def image_config(spec: ImageSpec, epoch: int) -> dict:
    """The OCI image config, without rootfs and history (they depend on the layers)."""
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "architecture": DEBIAN_ARCH,
        "os": "linux",
        "created": created,
        "config": {
            "Env": list(spec.env),
            "Cmd": list(spec.cmd),
            "WorkingDir": spec.workdir,
            "Labels": {"org.opencontainers.image.title": f"sconify demo {spec.name}", **spec.labels},
        },
    }


def layer_history(spec: ImageSpec, epoch: int) -> list[dict]:
    created = datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = [{"created": created, "created_by": f"sconify debimage: Debian bookworm packages ({len(spec.packages)})"}]
    if spec.app:
        history.append({"created": created, "created_by": f"sconify debimage: {spec.app} demo app under /app"})
    return history


def write_layer_tars(spec: ImageSpec, cache: Path, workdir: Path, epoch: int) -> list[Path]:
    """Write the base layer tar and, if the spec has an app, the app layer tar into ``workdir``."""
    debs = download_debs(spec.packages, cache / "debs")
    tarballs = fetch_npm(spec.npm_packages, cache / "npm") if spec.npm_packages else []
    paths = [workdir / "base.tar"]
    with paths[0].open("wb") as out:
        write_layer_tar(base_layer_entries(debs, epoch, base_extras(bool(spec.app))), out, epoch)
    if spec.app:
        paths.append(workdir / "app.tar")
        with paths[1].open("wb") as out:
            write_layer_tar(app_layer_entries(spec, tarballs), out, epoch)
    return paths


def app_layer_entries(spec: ImageSpec, tarballs: list[Path]) -> list[LayerEntry]:
    """The demo app's files (``sconify.demo.apps``) and its npm packages, unpacked under /app."""
    app = {"python": python_app_entries, "node": node_app_entries, "python-tests": python_tests_app_entries}[spec.app]()
    for package, tarball in zip(spec.npm_packages, tarballs):
        app.extend(npm_entries(package, tarball))
    return app


def image_layout(name: str, cache: Path | None = None, compression: str = DEFAULT_COMPRESSION,
                 epoch: int | None = None) -> Path:
    """Where ``build_image`` keeps (or will keep) the OCI layout of demo image ``name``."""
    epoch = source_date_epoch() if epoch is None else epoch
    key = build_key(get_spec(name), epoch, compression)
    return (cache or cache_dir()) / "images" / f"{name}-{key}"


def is_built(name: str, cache: Path | None = None, compression: str = DEFAULT_COMPRESSION) -> bool:
    """Whether ``build_image(name)`` would reuse a cached layout."""
    return (image_layout(name, cache, compression) / "index.json").is_file()


def build_image(name: str, cache: Path | None = None, compression: str = DEFAULT_COMPRESSION,
                epoch: int | None = None) -> Path:
    """Build (or reuse from the cache) the demo image ``name``; returns its OCI layout dir.

    The layout holds one image tagged ``latest``. A finished layout is never modified; a
    build that fails leaves nothing behind in the cache but downloaded packages.
    """
    from sconify.image.model import Layer, canonical_json, make_image
    from sconify.image.transports import write_image

    spec = get_spec(name)
    cache = cache or cache_dir()
    epoch = source_date_epoch() if epoch is None else epoch
    layout = image_layout(name, cache, compression, epoch)
    if (layout / "index.json").is_file():
        return layout
    layout.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.parent, prefix=f".{name}-build-") as tmp:
        tars = write_layer_tars(spec, cache, Path(tmp), epoch)
        layers = [Layer.from_tar_file(tar, compression=compression) for tar in tars]
        config = image_config(spec, epoch)
        config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
        config["history"] = layer_history(spec, epoch)
        image = make_image(canonical_json(config), layers, f"sconify demo {name}")
        staged = Path(tmp) / "layout"
        write_image(image, f"oci:{staged}:{IMAGE_TAG}")
        with contextlib.suppress(FileExistsError, OSError):
            os.rename(staged, layout)  # another process may have finished the same build first
    if not (layout / "index.json").is_file():
        raise EnvironmentProblem(f"could not store the demo image in {layout}; check that {cache} is writable or set SCONIFY_CACHE")
    return layout

