"""`sconify fspf ...`: the SCONE command set, its output lines and its one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sconify.cli.main import run


def sconify(capsys, *args: str) -> tuple[int, str, str]:
    code = run(["fspf", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def words_of_last_line(out: str) -> list[str]:
    return out.strip().splitlines()[-1].split(" ")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "db.sqlite").write_bytes(os.urandom(200_000))
    (tmp_path / "data" / "empty").write_bytes(b"")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_bytes(b"print('hi')\n")
    return tmp_path


def build_encrypted(capsys, tree: Path) -> tuple[str, str]:
    """create, addr x3, addf x2, encrypt; returns (tag, key) cut from the encrypt line."""
    fspf = tree / "fspf.pb"
    code, out, _ = sconify(capsys, "create", fspf)
    assert code == 0 and out.startswith(f"Created empty file system protection file in {fspf}. AES-GCM tag: ")
    for region, options in (("/", ["--kernel", "/", "--not-protected"]),
                            ("/app", ["--kernel", "/app", "--authenticated"]),
                            ("/app/data", ["--kernel", "/app/data", "--encrypted", "--key-length", "16"])):
        code, out, _ = sconify(capsys, "addr", fspf, region, *options)
        assert code == 0
        assert words_of_last_line(out)[:-1] == ["Added", "region", region, "to", "file", "system", "protection", "file", str(fspf), "new", "AES-GCM", "tag:"]
    code, out, _ = sconify(capsys, "addf", fspf, "/app/data", tree / "data", tree / "image" / "app" / "data")
    assert code == 0 and out.startswith(f"Added files to file system protection file {fspf} new AES-GCM tag: ")
    code, out, _ = sconify(capsys, "addf", fspf, "/app", tree / "app")
    assert code == 0
    shutil.copytree(tree / "app", tree / "image" / "app", dirs_exist_ok=True)
    code, out, _ = sconify(capsys, "encrypt", fspf)
    assert code == 0
    words = words_of_last_line(out)
    # The positions scripts cut out of `scone fspf encrypt`: tag is word 9, key word 11.
    assert words[:8] == ["Encrypted", "file", "system", "protection", "file", str(fspf), "AES-GCM", "tag:"]
    assert words[9] == "key:" and len(words) == 11
    tag, key = words[8], words[10]
    assert len(tag) == 32 and len(key) == 64 and int(tag, 16) >= 0 and int(key, 16) >= 0
    return tag, key


def test_scone_workflow_builds_a_verifiable_encrypted_fspf(capsys, tree):
    tag, key = build_encrypted(capsys, tree)
    code, out, _ = sconify(capsys, "show", "--tag", tree / "fspf.pb")
    assert code == 0 and out.strip() == tag
    code, out, _ = sconify(capsys, "show", tree / "fspf.pb", key)
    assert code == 0
    assert "region /app/data: kernel /app/data, encrypted, key length 16, chunk size 65536" in out
    assert "file /app/data/db.sqlite: 200000 bytes, encrypted" in out
    assert "file /app/main.py: 12 bytes, authenticated" in out
    assert key not in out
    code, out, _ = sconify(capsys, "verify", tree / "fspf.pb", key, tag, tree / "image")
    assert code == 0 and "verified 3 files" in out
    code, out, _ = sconify(capsys, "show", "--json", tree / "fspf.pb", key)
    shown = json.loads(out)
    assert code == 0 and shown["tag"] == tag and shown["encrypted"] is True
    assert [r["path"] for r in shown["regions"]] == ["/", "/app", "/app/data"]
    assert {f["path"]: f["size"] for f in shown["files"]}["/app/data/db.sqlite"] == 200_000
    assert key not in out


def test_verify_reports_tampering_with_exit_code_1(capsys, tree):
    tag, key = build_encrypted(capsys, tree)
    with open(tree / "image" / "app" / "main.py", "ab") as handle:
        handle.write(b"import os; os.system('evil')\n")
    code, out, err = sconify(capsys, "verify", tree / "fspf.pb", key, tag, tree / "image")
    assert code == 1
    assert "integrity check failed for /app/main.py" in out
    assert err.startswith("sconify: error: 1 integrity problem(s)") and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "{fspf}"], "the fspf is encrypted; pass the key"),
        (["show", "{fspf}", "00" * 32], "cannot decrypt the fspf: wrong key"),
        (["show", "{fspf}", "xyz"], "KEY is not hexadecimal"),
        (["verify", "{fspf}", "{key}", "00" * 16, "{root}"], "was expected: this fspf is older"),
        (["addr", "{fspf}", "/x", "--kernel", "/x", "--encrypted"], "already encrypted"),
        (["show", "{root}/app/main.py"], "not an fspf file"),
        (["show", "{root}/missing"], "cannot read fspf"),
    ],
    ids=["no-key", "wrong-key", "bad-hex", "wrong-tag", "modify-encrypted", "not-fspf", "missing"],
)
def test_bad_input_gives_one_line_without_keys(capsys, tree, args, message):
    tag, key = build_encrypted(capsys, tree)
    fields = {"fspf": tree / "fspf.pb", "key": key, "root": tree / "image"}
    code, out, err = sconify(capsys, *[a.format(**fields) for a in args])
    assert code == 2, err
    assert err.startswith("sconify: error: ") and message in err and err.count("\n") == 1
    assert key not in err and key not in out


def test_usage_errors_name_the_fix(capsys, tmp_path):
    fspf = tmp_path / "f"
    assert sconify(capsys, "create", fspf)[0] == 0
    code, _, err = sconify(capsys, "create", fspf)
    assert code == 2 and "already exists; remove it or pass --force" in err
    code, _, err = sconify(capsys, "addr", fspf, "/data", "--kernel", "/data", "--encrypted")
    assert code == 0
    code, _, err = sconify(capsys, "addr", fspf, "/app", "--kernel", "/app", "--authenticated")
    assert code == 2 and "add region / first" in err
    (tmp_path / "src").mkdir()
    code, _, err = sconify(capsys, "addf", fspf, "/data", tmp_path / "src")
    assert code == 2 and "pass OUT_DIR" in err


def test_the_installed_command_prints_no_traceback(tmp_path):
    (tmp_path / "f").write_bytes(b"SCNFSPF\0" + bytes([7]) + bytes(40))
    entry_point = "import sys; from sconify.cli.main import main; sys.argv[0] = 'sconify'; main()"
    result = subprocess.run(
        [sys.executable, "-c", entry_point, "fspf", "show", str(tmp_path / "f")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "sconify: error: fspf format version 7 is not supported (this sconify reads version 1); use a matching sconify release or recreate the fspf\n"


def test_a_file_name_that_is_not_utf8_is_listed_and_reported_escaped(tmp_path):
    """A name the kernel takes but UTF-8 does not (b'caf\\xe9') is recorded, and `show` and
    `verify` print it as \\xe9 on a UTF-8 stream (a lone surrogate would not print)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    fspf = tmp_path / "fspf.pb"
    entry_point = "import sys; from sconify.cli.main import main; sys.argv[0] = 'sconify'; main()"

    def cli(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", entry_point, "fspf", *map(str, args)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, check=False)

    for args in (("create", fspf), ("addr", fspf, "/d", "--kernel", "/d", "--encrypted"),
                 ("addf", fspf, "/d", tmp_path / "src", tmp_path / "image" / "d")):
        assert cli(*args).returncode == 0
    words = cli("encrypt", fspf).stdout.split()
    tag, key = words[8], words[10]
    shown = cli("show", fspf, key)
    assert shown.returncode == 0 and "file /d/caf\\xe9: 12 bytes, encrypted" in shown.stdout, shown.stderr
    (tmp_path / "image" / "d" / os.fsdecode(b"caf\xe9")).write_bytes(b"changed")
    verified = cli("verify", fspf, key, tag, tmp_path / "image")
    assert verified.returncode == 1 and "integrity check failed for /d/caf\\xe9" in verified.stdout, verified.stderr
