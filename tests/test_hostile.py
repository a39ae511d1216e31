"""Images from strangers: each crafted layer or layout gives one clear error or a safe result.

Every case runs through the library (``read_image`` + ``RootFS.from_image`` + ``iter_files``)
and through the real CLI in a subprocess (``sconify image --dry-run``, a real conversion where
the case is convertible, and ``sconify copy``). For every run: exit code 0 or 2, on failure one
line on stderr naming the problem and the fix; nothing written outside the output (a canary
directory and a private TMPDIR stay as they were), no partial output, the input unchanged, and
a peak RSS under 500 MB. The corpus is built by ``tests/hostile_images.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import hostile_images as H
from hostile_images import Member
from sconify.errors import ImageError
from sconify.fspf import Fspf
from sconify.fspf.errors import FspfError
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.outputs.manifest import Manifest

MAX_RSS_BYTES = 500 << 20
CLI_TIMEOUT = 300  # seconds; generous: the machine is shared, no timing is asserted


# --- running the CLI ----------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, of this one child


# Runs ARGV as a grandchild and writes its peak RSS (KiB) to RSS_FILE. A child forked from the
# test process inherits the test process's RSS high-water mark (Linux folds the mm it had at
# fork into ru_maxrss at exec), which late in a suite is hundreds of MB: the CLI must be forked
# from a small process for wait4 to report its own peak.
MEASURE = """\
import os, sys
rss_file, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(rss_file, "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_cli(args: list[str], cwd: Path, tmpdir: Path) -> Run:
    """``python -m sconify ARGS`` with a private TMPDIR; its own peak RSS from wait4."""
    out, err, rss = cwd / ".stdout", cwd / ".stderr", tmpdir.parent / f".rss-{os.getpid()}"
    env = {**os.environ, "TMPDIR": str(tmpdir), "SCONIFY_DEBUG": ""}
    env.pop("SOURCE_DATE_EPOCH", None)
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "-c", MEASURE, str(rss), sys.executable, "-m", "sconify", *args],
                                   cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    timer = threading.Timer(CLI_TIMEOUT, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    try:
        returncode = process.wait()
    finally:
        timer.cancel()
    result = Run(returncode, out.read_text(errors="replace"), err.read_text(errors="replace"),
                 int(rss.read_text()) * 1024 if rss.exists() else 0)
    for path in (out, err, rss):
        path.unlink(missing_ok=True)
    return result


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (or 'dir') of everything under ``root``."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        found[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@dataclass
class Sandbox:
    """A working directory (cwd of every run), a private TMPDIR and a canary directory."""

    root: Path
    work: Path = field(init=False)
    tmp: Path = field(init=False)
    canary: Path = field(init=False)

    def __post_init__(self) -> None:
        self.work, self.tmp, self.canary = self.root / "work", self.root / "tmp", self.root / "canary"
        for directory in (self.work, self.tmp, self.canary):
            directory.mkdir(parents=True)
        (self.canary / "keep").write_text("untouched\n")

    def run(self, *args: str) -> Run:
        result = run_cli(list(args), self.work, self.tmp)
        assert result.returncode in (0, 2), result.stderr
        assert "Traceback" not in result.stderr
        assert result.max_rss < MAX_RSS_BYTES, f"peak RSS {result.max_rss >> 20} MB running {args}"
        assert list(self.tmp.iterdir()) == [], "temp files left behind"
        assert tree_digest(self.canary) == {"keep": hashlib.sha256(b"untouched\n").hexdigest()}
        return result

    def refused(self, pattern: str, *args: str) -> str:
        """Run, expect exit 2 with one line matching ``pattern``, and no output at all."""
        result = self.run(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sconify: error: "), result.stderr
        assert_matches(pattern, lines[0])
        assert list(self.work.iterdir()) == [], "partial output after a refusal"
        return lines[0]


def assert_matches(pattern: str, line: str) -> None:
    import re

    assert re.search(pattern, line), f"{pattern!r} not in {line!r}"


# --- the corpus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A hostile image that must be refused: by the reader (``error``) and, where copying must
    read the layer contents too, by ``sconify copy`` (``copy_error``; None: copied byte for byte)."""

    build: Callable[[Path, Path], str]  # (input path, canary dir) -> image reference
    error: str  # regex the one-line error must match (problem)
    copy_error: str | None = None
    fix: str = r"re-create|refusing|pass|raise|use"  # the line must say what to do


def oci(layout: Path) -> str:
    return f"oci:{layout}:latest"


def single_layer(members_or_tar: list[Member] | bytes, compression: str = "gzip") -> Callable[[Path, Path], Path]:
    def build(layout: Path, canary: Path) -> Path:
        tar = members_or_tar if isinstance(members_or_tar, bytes) else H.tar_of(members_or_tar)
        return oci(H.write_layout(layout, [H.layer_blob(tar, compression)]))
    return build


def canary_escape(layout: Path, canary: Path) -> str:
    """``var/run`` -> the canary's absolute host path, then a file below it."""
    return oci(H.write_layout(layout, [H.layer_blob(H.tar_of([
        Member("var/run", "symlink", linkname=str(canary)),
        Member("var/run/pwned", data=b"written through a symlink\n"),
    ]))]))


MOTD_LAYER = [Member("etc/motd", data=b"hi\n")]


def missing_blob(layout: Path, canary: Path) -> str:
    H.write_layout(layout, [H.layer_blob(H.tar_of(MOTD_LAYER))])
    H.blob_path(layout, H.manifest_of(layout)["layers"][0]["digest"]).unlink()
    return oci(layout)


def wrong_diff_id(layout: Path, canary: Path) -> str:
    blob = H.layer_blob(H.tar_of(MOTD_LAYER))
    return oci(H.write_layout(layout, [H.LayerBlob(blob.data, blob.compression, H.sha256(b"another layer"))]))


def other_platform(layout: Path, canary: Path) -> str:
    return oci(H.write_layout(layout, [H.layer_blob(H.tar_of(MOTD_LAYER))], platform={"os": "linux", "architecture": "riscv64"}))


def bomb(compression: str) -> Callable[[Path, Path], str]:
    def build(layout: Path, canary: Path) -> str:
        return oci(H.write_layout(layout, [H.bomb_layer(compression)]))
    return build


def many_entries(layout: Path, canary: Path) -> str:
    return oci(H.write_layout(layout, [H.many_entries_layer(1_000_000)]))


def docker_archive_layer_outside(path: Path, canary: Path) -> str:
    """manifest.json names a layer outside the archive: looked up inside it, never on disk."""
    (canary.parent / "outside.tar").write_bytes(H.tar_of(MOTD_LAYER))
    return f"docker-archive:{H.docker_archive(path, ['../outside.tar'])}"


def oci_archive_giant_pax(path: Path, canary: Path) -> str:
    """A valid layout packed after a 2 MiB PAX header."""
    layout = H.write_layout(path.parent / "layout", [H.layer_blob(H.tar_of(MOTD_LAYER))])
    head = H.oversized_pax_header_tar(2 << 20)[:-3 * H.BLOCK]  # the PAX header and its file, no end blocks
    return f"oci-archive:{H.archive_of(path, H.layout_files(layout), head=head)}"


def oci_archive_symlinked_blob(path: Path, canary: Path) -> str:
    """The layer blob is a symlink member pointing at a host file."""
    layout = H.write_layout(path.parent / "layout", [H.layer_blob(H.tar_of(MOTD_LAYER))])
    layer = H.blob_path(layout, H.manifest_of(layout)["layers"][0]["digest"])
    name = str(layer.relative_to(layout))
    files = [(n, d) for n, d in H.layout_files(layout) if n != name]
    return f"oci-archive:{H.archive_of(path, files, extra=[Member(name, 'symlink', linkname='/etc/passwd')])}"


def symlink_component_bomb() -> list[Member]:
    """Three chained symlinks of 1,600 components each ('a/..' repeated): cheap to store, costly
    to walk."""
    detour = "/".join(["a/.."] * 800)
    return [Member("a", "dir"), Member("s1", "symlink", linkname=f"{detour}/a"),
            Member("s2", "symlink", linkname=f"{detour}/s1"), Member("s3", "symlink", linkname=f"{detour}/s2"),
            Member("s3/x", data=b"x")]


BOMB = r"expands to more than \d+ bytes .*decompression bomb"
CASES = {
    "dotdot-name": Case(single_layer([Member("../../etc/cron.d/evil", data=b"* * * * * root sh\n")]), r"contains '\.\.'"),
    "dotdot-inside-name": Case(single_layer([Member("usr/../../../tmp/evil", data=b"x")]), r"contains '\.\.'"),
    "symlink-escape-to-host-canary": Case(canary_escape, r"below dangling symlink 'var/run'"),
    "hardlink-outside-dotdot": Case(single_layer([Member("etc/passwd-link", "hardlink", linkname="../../../etc/passwd")]),
                                    r"contains '\.\.'"),
    "hardlink-to-host-file": Case(single_layer([Member("etc/shadow-link", "hardlink", linkname="/etc/shadow")]),
                                  r"hardlink 'etc/shadow-link' points to '/etc/shadow', which is not a regular file in the image"),
    "hardlink-to-directory": Case(single_layer([Member("etc", "dir"), Member("etc/dirlink", "hardlink", linkname="etc")]),
                                  r"not a regular file in the image"),
    "sparse-gnu-10GB": Case(single_layer(H.gnu_sparse_tar("var/lib/disk.img", 10 * H.GiB)), r"sparse file 'var/lib/disk.img' is not supported"),
    "sparse-pax-10GB": Case(single_layer(H.pax_sparse_tar("var/lib/disk.img", 10 * H.GiB)), r"sparse file .*not supported"),
    "gzip-bomb": Case(bomb("gzip"), BOMB, copy_error=BOMB),
    "zstd-bomb": Case(bomb("zstd"), BOMB, copy_error=BOMB),
    # 512 MB of headers in 3 MB of zstd: the reader stops at 300,000 entries; copy, which does
    # not parse the tar, stops at the expansion bound (160x, more than LayerLimits allows).
    "million-entries": Case(many_entries, r"more than 300000 layer entries", copy_error=BOMB),
    "long-name-component": Case(single_layer([Member("srv/" + "n" * 300, data=b"x")]), r"component is longer than 255 bytes"),
    "long-path": Case(single_layer([Member("/".join(["d" * 200] * 25), data=b"x")]), r"longer than 4096 bytes"),
    "long-symlink-target": Case(single_layer([Member("srv/link", "symlink", linkname="t/" * 3000)]), r"target longer than 4096 bytes"),
    "deep-nesting": Case(single_layer([Member("/".join(["d"] * 200) + "/f", data=b"x")]), r"more than 128 path components"),
    "symlink-loop": Case(single_layer([Member("loop-a", "symlink", linkname="loop-b"), Member("loop-b", "symlink", linkname="/loop-a"),
                                       Member("loop-a/x", data=b"x")]), r"too many levels of symbolic links"),
    "symlink-component-bomb": Case(single_layer(symlink_component_bomb()), r"visits more than 4096 path components"),
    "giant-pax-header": Case(single_layer(H.oversized_pax_header_tar(2 << 20)), r"extended header is \d+ bytes"),
    "manifest-missing-blob": Case(missing_blob, r"layer 0 blob sha256:[0-9a-f]{64} is missing", copy_error=r"is missing"),
    "config-diff-id-mismatch": Case(wrong_diff_id, r"diff_id.*expected sha256:[0-9a-f]{64}", copy_error=r"diff_id"),
    "docker-archive-layer-outside": Case(docker_archive_layer_outside, r"layer 0 \(\.\./outside\.tar\) is missing from the archive",
                                         copy_error=r"is missing from the archive"),
    "oci-archive-giant-pax-header": Case(oci_archive_giant_pax, r"extended header is \d+ bytes", copy_error=r"extended header"),
    "oci-archive-symlinked-blob": Case(oci_archive_symlinked_blob, r"layer 0 blob sha256:[0-9a-f]{64} is missing", copy_error=r"is missing"),
    "index-without-platform": Case(other_platform, r"no image for platform linux/amd64 \(available: linux/riscv64\)",
                                   copy_error=r"no image for platform"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_image_is_refused_with_one_line_and_no_output(name, tmp_path):
    case = CASES[name]
    box = Sandbox(tmp_path)
    source = case.build(tmp_path / "in", box.canary)
    source_path = tmp_path / "in"
    before = tree_digest(tmp_path)

    with pytest.raises(ImageError) as raised:
        fs = RootFS.from_image(read_image(source))
        files = [path for path, entry in fs.entries.items() if entry.is_regular]
        for _, stream in fs.iter_files(files):
            stream.read()
    message = str(raised.value)
    assert "\n" not in message
    assert_matches(case.error, message)
    assert_matches(case.fix, message)

    line = box.refused(case.error, "image", "--from", source, "--to", f"oci:{box.work / 'out'}:x", "--dry-run")
    assert_matches(case.fix, line)
    if case.copy_error is None:
        copied = box.run("copy", source, f"oci:{box.work / 'copy'}:x")
        assert copied.returncode == 0, copied.stderr
        assert layer_digests(box.work / "copy") == layer_digests(source_path), "layers are copied byte for byte"
        shutil.rmtree(box.work / "copy")
    else:
        box.refused(case.copy_error, "copy", source, f"oci:{box.work / 'copy'}:x")
    assert tree_digest(tmp_path) == before, "the input (or anything beside it) changed"


def layer_digests(layout: Path) -> list[str]:
    return [layer["digest"] for layer in H.manifest_of(layout)["layers"]]


# --- hostile but convertible: neutralised, converted for real ------------------------------


def safe_hostile_layer(canary: Path) -> bytes:
    long_dir = "/".join(["p" * 200] * 15)  # 3014 bytes: long but legal
    return H.tar_of([
        Member("/srv/absolute.txt", data=b"absolute name\n"),
        Member("./srv/./dotted.txt", data=b"dotted name\n"),
        Member("run", "dir"),
        Member("run/lock", "dir"),
        Member("var/run", "symlink", linkname="/run"),
        Member("var/run/app.pid", data=b"42\n"),
        Member("var/lock", "symlink", linkname="../../../../../run/lock"),
        Member("var/lock/app.lock", data=b"locked\n"),
        Member("dev/evil-null", "chr"),
        Member("dev/evil-disk", "blk"),
        Member("run/evil-fifo", "fifo"),
        Member("usr/local/bin/suid-tool", data=f"#!/bin/sh\ntouch {canary}/executed\n".encode(), mode=0o4755),
        Member("app/data/suid-data", data=f"#!/bin/sh\ntouch {canary}/executed\n".encode(), mode=0o6750),
        Member("app/data/dup.txt", data=b"first\n"),
        Member("app/data/dup.txt", data=b"second entry wins\n"),
        Member("srv/caf\udce9-latin1.txt", data=b"non-UTF-8 name\n"),
        Member("srv/" + "n" * 255, data=b"longest name component\n"),
        Member(f"srv/{long_dir}/deep.txt", data=b"deep\n"),
        Member("srv/hard", "hardlink", linkname="/srv/absolute.txt"),
    ])


@pytest.fixture(scope="module")
def safe_hostile_image(python_image, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("safe-hostile")
    canary = root / "canary-for-layer"
    layout = H.write_layout(root / "in", [H.layer_blob(safe_hostile_layer(canary))], base=python_image)
    return layout, canary


def test_hostile_names_and_links_are_neutralised_inside_the_root(safe_hostile_image):
    layout, _ = safe_hostile_image
    fs = RootFS.from_image(read_image(f"oci:{layout}:latest"))
    assert fs.read("srv/absolute.txt") == b"absolute name\n"
    assert fs.read("srv/dotted.txt") == b"dotted name\n"
    assert fs.entries["var/run"].kind == "symlink"
    assert fs.read("run/app.pid") == b"42\n", "var/run/app.pid lands in the image's /run"
    assert fs.read("run/lock/app.lock") == b"locked\n", "'..' in a symlink target stops at the image root"
    assert fs.read("srv/hard") == b"absolute name\n"
    assert fs.read("app/data/dup.txt") == b"second entry wins\n", "the later duplicate wins, as on extraction"
    assert fs.read("srv/caf\udce9-latin1.txt") == b"non-UTF-8 name\n"
    assert fs.read("srv/" + "n" * 255) == b"longest name component\n"


def test_device_nodes_and_fifos_are_skipped_and_setuid_bits_kept_as_recorded(safe_hostile_image):
    layout, _ = safe_hostile_image
    fs = RootFS.from_image(read_image(f"oci:{layout}:latest"))
    assert ("dev/evil-null", "device") in fs.skipped
    assert ("dev/evil-disk", "device") in fs.skipped
    assert ("run/evil-fifo", "fifo") in fs.skipped
    assert not fs.exists("dev/evil-null") and not fs.exists("run/evil-fifo")
    assert fs.stat("usr/local/bin/suid-tool").mode == 0o4755
    assert fs.stat("app/data/suid-data").mode == 0o6750


def test_hostile_but_convertible_image_converts_safely_end_to_end(safe_hostile_image, tmp_path):
    layout, canary = safe_hostile_image
    canary.mkdir(exist_ok=True)
    before = tree_digest(layout)
    box = Sandbox(tmp_path)
    source = f"oci:{layout}:latest"
    out = box.root / "out"

    dry = box.run("image", "--from", source, "--to", f"oci:{out}:x", "--dir", "/app/data", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert list(box.work.iterdir()) == [] and not out.exists(), "a dry run writes nothing"

    real = box.run("image", "--from", source, "--to", f"oci:{out}:x", "--dir", "/app/data",
                   "--manifest-out", "m.json", "--session-out", "s.yaml", "--keys-out", "k.json")
    assert real.returncode == 0, real.stderr
    assert sorted(p.name for p in box.work.iterdir()) == ["k.json", "m.json", "s.yaml"]
    manifest = Manifest.read(box.work / "m.json")
    files = manifest.protected_files()
    assert files["/app/data/dup.txt"]["size"] == len(b"second entry wins\n")
    assert files["/app/data/suid-data"]["protection"] == "encrypted"

    converted = RootFS.from_image(read_image(f"oci:{out}:x"))
    data_layer = converted.image.diff_ids.index(manifest.data_layer)
    suid = converted.entries["app/data/suid-data"]
    assert (suid.mode, suid.layer_index) == (0o6750, data_layer), "setuid/setgid bits kept in the new data layer"
    assert b"#!/bin/sh" not in converted.read("app/data/suid-data"), "encrypted in the output"
    assert converted.stat("usr/local/bin/suid-tool").mode == 0o4755
    assert not any(converted.exists(path) for path, _ in converted.skipped)

    copied = box.run("copy", source, f"oci:{box.root / 'copy'}:x")
    assert copied.returncode == 0, copied.stderr
    assert layer_digests(box.root / "copy") == layer_digests(layout)

    assert list(canary.iterdir()) == [], "nothing from the image was executed or written to the host"
    assert tree_digest(layout) == before, "the input changed"


def test_non_utf8_name_in_a_data_dir_is_protected_or_refused_with_one_line():
    fspf = Fspf.create()
    fspf.add_region("/", kind="kernel", protection="encrypted")
    name = "/app/data/r\udcfcckblick.csv"  # the byte 0xFC (latin-1) as tarfile decodes it
    try:
        fspf.protect_file(name, io.BytesIO(b"x"), 1, io.BytesIO())
    except FspfError as exc:
        assert "\n" not in str(exc) and "UTF-8" in str(exc)


# --- the bounds are options ---------------------------------------------------------------


def zeros_image(tmp_path: Path, size: int) -> str:
    tar = H.tar_of([Member("var/zeros", data=bytes(size)), *(Member(f"etc/f{n}", data=b"x") for n in range(20))])
    return oci(H.write_layout(tmp_path / "zeros", [H.layer_blob(tar, "zstd")]))


def test_layer_limits_are_options_of_read_image(tmp_path):
    from sconify.image.layers import LayerLimits

    source = zeros_image(tmp_path, 4 << 20)  # 4 MiB of zeros in a few hundred bytes
    assert RootFS.from_image(read_image(source)).stat("var/zeros").size == 4 << 20
    strict = LayerLimits(expansion_allowance=1 << 20, max_expansion=10)
    with pytest.raises(ImageError, match=r"expands to more than 1048576 bytes"):
        RootFS.from_image(read_image(source, limits=strict))
    with pytest.raises(ImageError, match=r"more than 65536 bytes"):
        read_image(source, limits=LayerLimits(max_layer_size=1 << 16)).layers[0].verify()


def test_rootfs_limits_are_options_of_from_image(tmp_path):
    from sconify.image.rootfs import RootFSLimits

    image = read_image(zeros_image(tmp_path, 10))
    assert len(RootFS.from_image(image).listdir("etc")) == 20
    with pytest.raises(ImageError, match=r"more than 10 layer entries; refusing it - if the image is trusted, raise --max-entries"):
        RootFS.from_image(image, RootFSLimits(max_entries=10))
    with pytest.raises(ImageError, match=r"more than 1 path components"):
        RootFS.from_image(image, RootFSLimits(max_depth=1))
