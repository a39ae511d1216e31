"""Outputs whole or not at all (issue 22 item 6): a full disk or an unwritable place while the
outputs are written is one line naming the place, exit 3, and leaves no file of the output set
(image, manifest, session, keys) behind: neither in the out-dir nor a new tag in a layout.

Full and read-only places are small tmpfs mounts (the tests run as root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sconify.image.transports import read_image, write_image

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_mount(tmp_path):
    """mount(options) -> a fresh tmpfs directory, unmounted at teardown."""
    mounted = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def convert(python_image: Path, to: str, out_dir: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", f"oci:{python_image}:latest", "--to", to,
         "--dir", "/app/data", "--out-dir", str(out_dir)],
        capture_output=True, text=True, timeout=600, check=False, cwd=cwd,
    )


def one_line_exit_3(result: subprocess.CompletedProcess, place: str) -> str:
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert place in lines[0], lines[0]
    return lines[0]


def test_a_full_out_dir_leaves_no_file_of_the_set_and_no_new_tag(python_image, small_mount, tmp_path):
    # The layout already holds another image: its tag and index must survive the failure.
    layout = tmp_path / "layout"
    write_image(read_image(f"oci:{python_image}:latest"), f"oci:{layout}:kept")
    index = (layout / "index.json").read_bytes()
    blobs = set((layout / "blobs" / "sha256").iterdir())
    out_dir = small_mount("size=8k")
    (out_dir / "filler").write_bytes(b"x" * 4096)  # one page left: keys.json fits, the rest not
    result = convert(python_image, f"oci:{layout}:new", out_dir, tmp_path)
    line = one_line_exit_3(result, f"{out_dir}")
    assert "no space left" in line
    assert sorted(p.name for p in out_dir.iterdir()) == ["filler"]
    assert (layout / "index.json").read_bytes() == index
    assert set((layout / "blobs" / "sha256").iterdir()) == blobs  # the new blobs were taken back


def test_a_full_destination_leaves_no_file_of_the_set(python_image, small_mount, tmp_path):
    to = small_mount("size=2m") / "out"
    out_dir = tmp_path / "out-dir"
    result = convert(python_image, f"oci:{to}:v", out_dir, tmp_path)
    line = one_line_exit_3(result, f"--to oci:{to}:v")
    assert "no space left" in line
    assert not to.exists() and list(to.parent.iterdir()) == []  # no staging directory left either
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_an_unwritable_out_dir_is_named_before_anything_is_written(python_image, small_mount, tmp_path):
    out_dir = small_mount("size=1m,ro")
    to = tmp_path / "out"
    result = convert(python_image, f"oci:{to}:v", out_dir, tmp_path)
    line = one_line_exit_3(result, str(out_dir))
    assert "not writable" in line
    assert not to.exists()


def test_a_full_destination_archive_leaves_nothing(python_image, small_mount, tmp_path):
    to = small_mount("size=2m") / "out.tar"
    out_dir = tmp_path / "out-dir"
    result = convert(python_image, f"oci-archive:{to}", out_dir, tmp_path)
    one_line_exit_3(result, f"--to oci-archive:{to}")
    assert list(to.parent.iterdir()) == []
    assert not out_dir.exists() or list(out_dir.iterdir()) == []
    json.dumps(result.stderr)  # one printable line
