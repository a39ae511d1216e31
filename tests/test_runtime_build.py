"""The runtime builds reproducibly from its pinned sources, and its C unit tests pass."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from sconify.image import layers as L
from sconify.conversion.runtime import (
    CONFIG_PATH,
    LAUNCHER_NAME,
    LAUNCHER_PATH,
    SHIELD_NAME,
    SHIELD_PATH,
    build_runtime,
    cache_root,
    runtime_layer,
    source_files,
    source_tree,
)


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], capture_output=True, text=True, check=False)


def test_c_unit_tests_pass():
    result = make("-C", str(source_tree()), f"DEPS={cache_root() / 'deps'}", "check")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_two_builds_in_different_directories_are_byte_identical(tmp_path):
    """A build here and the conversions' build (build_runtime: made in a temporary directory of the
    cache, another path of another length) give the same bytes."""
    work = tmp_path / "other-place" / "runtime"
    for path in source_files(source_tree()):
        target = work / path.relative_to(source_tree())
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    result = make("-C", str(work), f"DEPS={cache_root() / 'deps'}", "all")
    assert result.returncode == 0, result.stderr[-2000:]
    here = [work / "build" / "bin" / LAUNCHER_NAME, work / "build" / "lib" / SHIELD_NAME]
    built = build_runtime()
    assert built.launcher.parent.parent != here[0].parent.parent
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (built.launcher, built.shield)] == \
        [hashlib.sha256(p.read_bytes()).hexdigest() for p in here]


def test_launcher_is_static_and_shield_exports_only_its_interposers():
    built = build_runtime()
    headers = subprocess.run(["readelf", "-lW", str(built.launcher)], capture_output=True, text=True, check=True).stdout
    assert "INTERP" not in headers and "DYNAMIC" not in headers  # runs in any image, whatever its libc
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built.shield)], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines()}
    assert {"open64", "stat64", "readdir64", "dlopen", "close"} <= exported
    assert not {name for name in exported if name.startswith(("EVP_", "ZSTD_", "json_", "seccomp_", "fspf_", "embedfs_"))}


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_runtime_layer_is_the_same_blob_with_or_without_its_cached_prefix(tmp_path, monkeypatch, compression):
    """The binaries' part of the runtime layer comes from the cache from the second conversion on;
    the blob is the same bytes either way, reads back (one tar, several gzip members or zstd
    frames) to the three files, and its diff_id is the tar's."""
    built = build_runtime()
    monkeypatch.setenv("SCONIFY_CACHE", str(tmp_path / "cache"))  # an empty cache for the layer prefix
    layers = []
    for run in range(2):
        layer, files = runtime_layer(built, b'{"run": "config"}\n', str(tmp_path), compression)
        cached = list((tmp_path / "cache" / "runtime" / "layers").glob(f"*.{compression}"))
        assert len(cached) == (0 if compression == "none" else 1)
        layers.append(layer)
    assert layers[0].digest == layers[1].digest and layers[0].diff_id == layers[1].diff_id
    replace(layers[0], trusted=False).verify()  # blob digest and diff_id, read back
    with layers[0].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        got = {m.name: tar.extractfile(m).read() if m.isfile() else None for m in tar}
    assert got[CONFIG_PATH.lstrip("/")] == b'{"run": "config"}\n'
    assert got[LAUNCHER_PATH.lstrip("/")] == built.launcher.read_bytes()
    assert hashlib.sha256(got[SHIELD_PATH.lstrip("/")]).hexdigest() == files[SHIELD_PATH]
    other, _ = runtime_layer(built, b"{}\n", str(tmp_path), compression)
    assert other.digest != layers[0].digest
    if compression == "none":
        return
    cache = cached[0]
    good = cache.read_bytes()
    for damaged in (good[:len(good) // 2], b"", L.compress_bytes(b"other bytes", compression), good + good[:100]):
        cache.write_bytes(damaged)  # a damaged cache file is noticed and made anew
        assert runtime_layer(built, b'{"run": "config"}\n', str(tmp_path), compression)[0].digest == layers[0].digest
        assert cache.read_bytes() == good
