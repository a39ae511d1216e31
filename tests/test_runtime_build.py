"""The runtime builds reproducibly from its pinned sources, and its C unit tests pass."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from sconify.runtime import LAUNCHER_NAME, SHIELD_NAME, build_runtime, cache_root, source_files, source_tree


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", *args], capture_output=True, text=True, check=False)


def test_c_unit_tests_pass():
    result = make("-C", str(source_tree()), f"DEPS={cache_root() / 'deps'}", "check")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_two_builds_in_different_directories_are_byte_identical(tmp_path):
    digests = []
    for name in ("one", "other-place"):
        work = tmp_path / name / "runtime"
        for path in source_files(source_tree()):
            target = work / path.relative_to(source_tree())
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        result = make("-C", str(work), f"DEPS={cache_root() / 'deps'}", "all")
        assert result.returncode == 0, result.stderr[-2000:]
        digests.append([hashlib.sha256((work / "build" / sub / f).read_bytes()).hexdigest()
                        for sub, f in (("bin", LAUNCHER_NAME), ("lib", SHIELD_NAME))])
    assert digests[0] == digests[1]
    built = build_runtime()
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (built.launcher, built.shield)] == digests[0]


def test_launcher_is_static_and_shield_exports_only_its_interposers():
    built = build_runtime()
    headers = subprocess.run(["readelf", "-lW", str(built.launcher)], capture_output=True, text=True, check=True).stdout
    assert "INTERP" not in headers and "DYNAMIC" not in headers  # runs in any image, whatever its libc
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(built.shield)], capture_output=True, text=True).stdout
    exported = {line.split()[-1] for line in symbols.splitlines()}
    assert {"open64", "stat64", "readdir64", "dlopen", "close"} <= exported
    assert not {name for name in exported if name.startswith(("EVP_", "ZSTD_", "json_", "seccomp_", "fspf_", "embedfs_"))}
