"""The ``embedfs`` command line: the whole path from a directory to a measured executable."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EMBEDFS = [sys.executable, "-c", "from embedfs.cli import main; main()"]


def embedfs(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([*EMBEDFS, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prog")
    source = root / "p.c"
    source.write_text('#include <stdio.h>\nint main(void) { puts("still here"); return 0; }\n')
    subprocess.run(["gcc", "-O1", "-o", root / "p", source], check=True)
    return root / "p"


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "app"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "main.py").write_text("print('hi')\n")
    (root / "README").write_text("readme\n")
    return root


def test_pack_inject_list_cat_verify_measure(program, app_dir, tmp_path) -> None:
    archive, out, sgxs = tmp_path / "app.efs", tmp_path / "p.inj", tmp_path / "p.sgxs"
    packed = embedfs("pack", app_dir, archive, "--json")
    assert packed.returncode == 0, packed.stderr
    root = json.loads(packed.stdout)["root_hash"]
    assert embedfs("inject", program, archive, "-o", out).returncode == 0
    assert subprocess.run([out], capture_output=True, text=True).stdout == "still here\n"
    listing = json.loads(embedfs("ls", out, "--json").stdout)
    assert listing["root_hash"] == root
    assert [m["path"] for m in listing["members"]] == ["README", "pkg/main.py"]
    assert embedfs("cat", out, "pkg/main.py").stdout == "print('hi')\n"
    assert embedfs("verify", out).returncode == 0
    measured = embedfs("measure", out, "--heap", "1M", "--stack", "64K", "--threads", "2", "--sgxs", sgxs, "--json")
    report = json.loads(measured.stdout)
    assert report["parameters"]["heap_size"] == 1 << 20 and report["parameters"]["threads"] == 2
    assert hashlib.sha256(sgxs.read_bytes()).hexdigest() == report["mrenclave"]
    plain = embedfs("measure", out, "--heap", "1M", "--stack", "64K", "--threads", "2").stdout.strip()
    assert plain == report["mrenclave"]
    assert embedfs("measure", out, "--heap", "2M", "--stack", "64K", "--threads", "2").stdout.strip() != plain


def test_extract_gives_back_the_archive_and_its_files(program, app_dir, tmp_path) -> None:
    archive, out = tmp_path / "app.efs", tmp_path / "p.inj"
    embedfs("pack", app_dir, archive)
    embedfs("inject", program, archive, "-o", out)
    assert embedfs("extract", out, "-o", tmp_path / "back.efs").returncode == 0
    assert (tmp_path / "back.efs").read_bytes() == archive.read_bytes()
    assert embedfs("extract", out, "--dir", tmp_path / "files").returncode == 0
    assert (tmp_path / "files" / "pkg" / "main.py").read_text() == "print('hi')\n"


def test_a_tampered_file_fails_verify_with_its_name(program, app_dir, tmp_path) -> None:
    archive, out = tmp_path / "app.efs", tmp_path / "p.inj"
    embedfs("pack", app_dir, archive, "--level", "1")
    embedfs("inject", program, archive, "-o", out)
    listing = json.loads(embedfs("ls", archive, "--json").stdout)
    assert listing["members"][1]["path"] == "pkg/main.py"
    data = bytearray(out.read_bytes())
    needle = data.find(b"print('hi')")  # level 1 stores this short file's bytes literally
    assert needle > 0
    data[needle] = ord("P")
    out.write_bytes(bytes(data))
    result = embedfs("verify", out)
    assert result.returncode == 1
    assert result.stderr.startswith("embedfs: error: pkg/main.py:") and result.stderr.count("\n") == 1


@pytest.fixture(scope="module")
def built(program, app_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("built")
    names = {"archive": root / "app.efs", "injected": root / "p.inj", "text": root / "notes.txt"}
    embedfs("pack", app_dir, names["archive"])
    embedfs("inject", program, names["archive"], "-o", names["injected"])
    names["text"].write_text("just text\n")
    return names


@pytest.mark.parametrize("args, message", [
    (["inject", "{text}", "{archive}", "-o", "{out}"], "not an ELF file"),
    (["ls", "{missing}"], "cannot open"),
    (["ls", "{text}"], "not an embedfs archive"),
    (["cat", "{archive}", "nope.py"], "no such member"),
    (["inject", "{injected}", "{archive}", "-o", "{out}"], "--replace"),
    (["measure", "{text}"], "not an ELF file"),
])
def test_errors_are_one_line_with_exit_code_2(args, message, built, tmp_path) -> None:
    names = {**built, "out": tmp_path / "out", "missing": tmp_path / "missing"}
    result = embedfs(*[a.format(**names) for a in args])
    assert result.returncode == 2
    assert result.stderr.startswith("embedfs: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_console_script_is_installed() -> None:
    assert shutil.which("embedfs"), "pip install -e . should provide the embedfs command"
