"""The runtime a converted image runs with (simulation mode), and the layer that carries it.

The runtime is C (Node images have no Python): ``runtime/`` in the source tree builds a static
launcher, ``sconify-run``, the image's new ENTRYPOINT, and ``libsconify-shield.so``, which the
launcher preloads into the measured service to serve its embedfs and its volumes (docs/runtime.md).

``build_runtime`` compiles it once per source digest into the cache (``$SCONIFY_CACHE/runtime``)
from pinned Debian static libraries (``runtime/deps.txt``), or takes prebuilt files from
``$SCONIFY_RUNTIME_DIR``. ``runtime_config`` is the JSON the launcher reads: the measured
executable, the measurement parameters, the MRENCLAVE, the volumes. ``runtime_entries`` are the
files of the runtime layer, and ``wrap_entrypoint`` puts the launcher in front of the image's
ENTRYPOINT.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import zstandard
from isal import igzip, isal_zlib

from sconify.errors import EnvironmentProblem, UsageError
from sconify.image import layers as L
from sconify.image.layerwriter import layer_from_blob
from sconify.image.model import Layer
from sconify.conversion.newlayers import LayerTar, TarEntry, source_date_epoch

RUNTIME_DIR = "/.sconify"
LAUNCHER_PATH = f"{RUNTIME_DIR}/bin/sconify-run"
SHIELD_PATH = f"{RUNTIME_DIR}/lib/libsconify-shield.so"
CONFIG_PATH = f"{RUNTIME_DIR}/runtime.json"
CONFIG_SCHEMA = "sconify.runtime/v1"
LAUNCHER_NAME = "sconify-run"
SHIELD_NAME = "libsconify-shield.so"
RUNTIME_MODES = ("sim", "none")
SOURCE_FILES = ("Makefile", "deps.txt", "fetch-deps")


@dataclass(frozen=True)
class RuntimeBuild:
    """The two runtime files, built or prebuilt, with their SHA-256 (for the manifest)."""

    launcher: Path
    shield: Path

    def sha256(self) -> dict[str, str]:
        return {
            LAUNCHER_NAME: hashlib.sha256(self.launcher.read_bytes()).hexdigest(),
            SHIELD_NAME: hashlib.sha256(self.shield.read_bytes()).hexdigest(),
        }


def source_tree() -> Path:
    """The runtime's sources: installed beside this module (wheel: ``sconify/runtime_sources``), or
    ``runtime/`` at the top of a source checkout."""
    package = Path(__file__).resolve().parents[1]  # sconify/
    for candidate in (package / "runtime_sources", package.parent / "runtime"):
        if (candidate / "Makefile").is_file():
            return candidate
    raise EnvironmentProblem("the runtime sources are missing from this installation; reinstall sconify")


def source_files(root: Path) -> list[Path]:
    files = [root / name for name in SOURCE_FILES]
    files += sorted((root / "src").glob("*.[ch]")) + sorted((root / "src" / "shield").glob("*.[ch]"))
    return files


def source_digest(root: Path) -> str:
    """A digest of every source and build file and of the compiler: a new one means a rebuild."""
    sha = hashlib.sha256()
    for path in source_files(root):
        sha.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    sha.update(compiler_version().encode())
    return sha.hexdigest()


def compiler_version() -> str:
    cc = os.environ.get("CC", "gcc")
    try:
        result = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    except OSError:
        raise EnvironmentProblem(
            f"the C compiler {cc!r} is not installed; the runtime is built from source: "
            "apt-get install gcc libc6-dev make (or pass --runtime none)"
        ) from None
    return result.stdout.splitlines()[0] if result.stdout else cc


def cache_root() -> Path:
    configured = os.environ.get("SCONIFY_CACHE")
    return (Path(configured) if configured else Path.home() / ".cache" / "sconify") / "runtime"


def build_runtime() -> RuntimeBuild:
    """The runtime files: ``$SCONIFY_RUNTIME_DIR`` if set, else built (once) into the cache."""
    prebuilt = os.environ.get("SCONIFY_RUNTIME_DIR")
    if prebuilt:
        found = RuntimeBuild(Path(prebuilt) / "bin" / LAUNCHER_NAME, Path(prebuilt) / "lib" / SHIELD_NAME)
        missing = [str(p) for p in (found.launcher, found.shield) if not p.is_file()]
        if missing:
            raise EnvironmentProblem(
                f"SCONIFY_RUNTIME_DIR={prebuilt} lacks {', '.join(missing)}; build it with `make -C runtime` "
                "and point SCONIFY_RUNTIME_DIR at runtime/build (bin/ and lib/), or unset it"
            )
        return found
    root = source_tree()
    out = cache_root() / source_digest(root)[:24]
    build = RuntimeBuild(out / "bin" / LAUNCHER_NAME, out / "lib" / SHIELD_NAME)
    if build.launcher.is_file() and build.shield.is_file():
        return build
    for tool in ("make", os.environ.get("CC", "gcc")):
        if shutil.which(tool) is None:
            raise EnvironmentProblem(
                f"{tool} is not installed; the runtime is built from source: apt-get install gcc libc6-dev make "
                "(or pass --runtime none)"
            )
    cache_root().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_root()) as tmp:
        work = Path(tmp) / "runtime"
        work.mkdir()
        for path in source_files(root):
            target = work / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        (work / "fetch-deps").chmod(0o755)
        result = subprocess.run(
            ["make", "-C", str(work), "BUILD=build", f"DEPS={cache_root() / 'deps'}", "all"],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            reason = next((line for line in lines if "fetch-deps:" in line), lines[-1] if lines else "make failed")
            raise EnvironmentProblem(f"building the sconify runtime failed: {reason.strip()} (or pass --runtime none)")
        staged = Path(tmp) / "out"
        for sub, name in (("bin", LAUNCHER_NAME), ("lib", SHIELD_NAME)):
            (staged / sub).mkdir(parents=True)
            shutil.copy2(work / "build" / sub / name, staged / sub / name)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            staged.rename(out)
        except OSError:
            if not (build.launcher.is_file() and build.shield.is_file()):  # not a concurrent build's result
                raise
    return build


def check_runtime_mode(mode: str) -> str:
    if mode not in RUNTIME_MODES:
        raise UsageError(f"--runtime {mode!r} is not a runtime; use --runtime sim (the default: the image runs "
                         "with docker run) or --runtime none (no runtime layer, for a hardware runtime)")
    return mode


# Docker puts this PATH into a container whose image sets none.
DOCKER_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Policy:
    """What the keys are granted to (docs/runtime.md, "The policy"), like a CAS session's
    ``command`` and ``environment``. ``command``: the argv the launcher receives after ``--``
    (the image's ENTRYPOINT + CMD); ``service_command``: what the measured executable then
    runs with (the session's command); ``environment``: the image's Env (Docker's default PATH
    when it sets none), which the host may not change for a variable that chooses code unless
    it is in ``allow_env``; ``allow_args``: the host may append arguments to ``command``."""

    command: list[str]
    service_command: list[str]
    environment: dict[str, str]
    allow_args: bool = False
    allow_env: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"command": list(self.command), "service_command": list(self.service_command),
                "environment": dict(sorted(self.environment.items())), "allow_args": self.allow_args,
                "allow_env": sorted(self.allow_env)}


def policy_environment(image_env: dict[str, str]) -> dict[str, str]:
    """The environment the service starts with, as the image sets it (PATH: Docker's default)."""
    return {"PATH": DOCKER_DEFAULT_PATH, **image_env}


def check_env_names(names: list[str]) -> tuple[str, ...]:
    for name in names:
        if not name or "=" in name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise UsageError(f"--allow-env {name!r} is not an environment variable name; pass a name such as "
                             "--allow-env NODE_OPTIONS")
    return tuple(sorted(set(names)))


def runtime_config(executable: str, executable_sha256: str, parameters: dict, mrenclave: str,
                   volumes: list, ephemeral: list[str], scripts: list[str] = (), code_roots: list[str] = (),
                   code_left: list[str] = (), code_shallow: list[str] = (),
                   code_extensions: tuple[str, ...] = (), policy: Policy | None = None) -> bytes:
    """The launcher's config (not secret: everything in it is checked or public). ``volumes``:
    the sealed volumes (``.path``, ``.fspf_path``, ``.protection``; ``.declared``: a --generic image's
    volume, ``"generic": true``, with no fspf in the image). ``scripts``: the embedded
    scripts kept in place (entrypoint and console scripts), checked by the launcher at start.
    ``code_roots``: the directories the shield serves from the embedfs only; ``code_left``: the
    files under them left on disk as not code, which it shows from the disk; ``code_shallow``:
    system directories on the search path, where only ``code_extensions`` names and
    ``__pycache__`` are sealed (sconify.conversion.sealed). ``policy``: the command and environment the
    keys are granted to."""
    doc = {
        "schema": CONFIG_SCHEMA,
        "executable": "/" + executable.lstrip("/"),
        "executable_sha256": executable_sha256,
        "measurement": {key: parameters[key] for key in ("heap_size", "stack_size", "threads", "ssa_frame_size")},
        "mrenclave": mrenclave,
        "volumes": [
            {"path": v.path, "fspf_path": v.fspf_path, "protection": v.protection,
             **({"generic": True} if getattr(v, "declared", False) else {})} for v in volumes
        ],
        "ephemeral": sorted(ephemeral),
        "scripts": sorted(scripts),
        "code_roots": sorted(code_roots),
        "code_left": sorted(code_left),
        "code_shallow": sorted(code_shallow),
        "code_extensions": sorted(code_extensions),
    }
    if policy is not None:
        doc["policy"] = policy.to_dict()
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def wrap_entrypoint(config: dict) -> dict:
    """The image config with the launcher in front of its ENTRYPOINT (CMD unchanged), and the
    shield in LD_PRELOAD, so that any start of the measured executable (``docker exec C
    python3``) gets its embedded code served; without the launcher's grant it gets no keys, and
    other programs (sh, perl) find the shield passive."""
    inner = dict(config.get("config") or {})
    entrypoint = list(inner.get("Entrypoint") or [])
    if entrypoint[:1] != [LAUNCHER_PATH]:
        inner["Entrypoint"] = [LAUNCHER_PATH, "--", *entrypoint]
    env = list(inner.get("Env") or [])
    preload = next((i for i, item in enumerate(env) if item.startswith("LD_PRELOAD=")), None)
    if preload is None:
        env.append(f"LD_PRELOAD={SHIELD_PATH}")
    elif SHIELD_PATH not in env[preload].partition("=")[2].replace(" ", ":").split(":"):
        rest = env[preload].partition("=")[2]
        env[preload] = f"LD_PRELOAD={SHIELD_PATH}:{rest}" if rest else f"LD_PRELOAD={SHIELD_PATH}"
    inner["Env"] = env
    return {**config, "config": inner}


def runtime_layer(build: RuntimeBuild, config: bytes, work: str, compression: str, direct: bool = False
                  ) -> tuple[Layer, dict[str, str]]:
    """The runtime layer (``/.sconify``: launcher, shield, config), and each file's SHA-256.

    The two binaries (~10 MB) are the same in every conversion, runtime.json is not: the tar up to
    runtime.json is compressed as a frame (zstd) or member (gzip) of its own, kept in the cache
    (``prefix_blob``), and the rest is compressed and appended: ~0.3 s of deflate saved per
    conversion. The blob is the same bytes whether the prefix came from the cache or not."""
    epoch = source_date_epoch()
    files = [(LAUNCHER_PATH, build.launcher.read_bytes(), 0o755), (SHIELD_PATH, build.shield.read_bytes(), 0o644),
             (CONFIG_PATH, config, 0o644)]
    entries = [TarEntry(path=d.lstrip("/"), kind="dir", mode=0o755, mtime=epoch)
               for d in (RUNTIME_DIR, f"{RUNTIME_DIR}/bin", f"{RUNTIME_DIR}/lib")]
    for path, data, mode in sorted(files):
        entries.append(TarEntry(path=path.lstrip("/"), kind="file", mode=mode, size=len(data), mtime=epoch,
                                write=lambda sink, data=data: sink.write(data)))
    tar = io.BytesIO()
    layer_tar = LayerTar(tar)
    for entry in sorted(entries, key=lambda e: e.path):
        if entry.path == CONFIG_PATH.lstrip("/"):
            split = tar.tell()  # runtime.json is last: everything before it is the same each time
        layer_tar.add(entry)
    layer_tar.close()
    whole = tar.getbuffer()
    prefix, rest = bytes(whole[:split]), bytes(whole[split:])
    if compression == "none":
        blob = [prefix, rest]
    else:
        blob = [prefix_blob(prefix, compression), L.compress_bytes(rest, compression)]
    layer = layer_from_blob(blob, "sha256:" + hashlib.sha256(whole).hexdigest(), compression, work,
                            "runtime layer", direct)
    return layer, {path: hashlib.sha256(data).hexdigest() for path, data, _ in sorted(files)}


def prefix_blob(prefix: bytes, compression: str) -> bytes:
    """``prefix`` compressed alone with the pinned settings, from the cache when it is there. The
    key covers the bytes, the compression, its level and the library that compresses (another
    zlib or zstd may give other bytes)."""
    library = f"zlib {zlib.ZLIB_RUNTIME_VERSION} level {L.GZIP_LEVEL}" if compression == "gzip" else \
        f"zstd {zstandard.ZSTD_VERSION} level {L.ZSTD_LEVEL} threads {L.ZSTD_THREADS}"
    key = hashlib.sha256(hashlib.sha256(prefix).digest() + f"{compression} {library}".encode()).hexdigest()
    path = cache_root() / "layers" / f"{key[:32]}.{compression}"
    with contextlib.suppress(OSError):
        cached = path.read_bytes()
        if _inflates_to(cached, compression, prefix):  # a damaged cache file is made anew
            return cached
    compressed = L.compress_bytes(prefix, compression)
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".part-", delete=False) as part:
            try:
                part.write(compressed)
                part.close()
                os.replace(part.name, path)
            except OSError:
                os.unlink(part.name)
                raise
    return compressed


def _inflates_to(blob: bytes, compression: str, expected: bytes) -> bool:
    """Whether ``blob`` is one whole gzip member or zstd frame of exactly ``expected`` (~20 ms
    for the runtime's 10 MB, against ~0.3 s of deflate)."""
    try:
        if compression == "gzip":
            inflated = igzip.decompress(blob)
        else:
            frame = zstandard.ZstdDecompressor().decompressobj()
            inflated = frame.decompress(blob)
            if not frame.eof or frame.unused_data:  # cut short, or more than one frame
                return False
    except (OSError, EOFError, ValueError, isal_zlib.error, zstandard.ZstdError):
        return False
    return hashlib.sha256(inflated).digest() == hashlib.sha256(expected).digest()
