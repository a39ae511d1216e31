"""The runtime on this machine, without Docker: encrypted members of the embedfs (embedfs
version 2, --encrypted-code) served by the shield around a real CPython.

A copy of the host's python3.11 gets an embedfs whose package and shared object are encrypted
under a code key, at a path that does not exist on disk. With the keys file's code_key the
shield serves the decrypted module and dlopens the shared object from a memfd; without it the
encrypted files are EACCES (one line in the shield's log), the plain ones still served; nothing is
written beside encrypted code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from embedfs.archive import directory_entries, pack
from embedfs.elf import inject
from embedfs.measure import measure_elf
from sconify.conversion.runtime import build_runtime

REAL_PYTHON = Path(os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11"))
ROOT = "/opt/sconify-encrypted-test"  # exists only inside the embedfs
CODE_KEY = bytes(range(7, 39))
DRIVER_SOURCE = "import sys\ncode = sys.argv.pop(1)\nexec(compile(code, '<test>', 'exec'), {'__name__': '__main__'})\n"

pytestmark = pytest.mark.skipif(not REAL_PYTHON.is_file(), reason="needs a python3.11 ELF executable")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    runtime = build_runtime()
    root = tmp_path_factory.mktemp("encrypted-world")
    tree = root / "tree" / ROOT.lstrip("/")
    (tree / "secret").mkdir(parents=True)
    (tree / "secret" / "__init__.py").write_text("from secret.algo import solve\n")
    (tree / "secret" / "algo.py").write_text("def solve(x):\n    return x * 1337  # the-distinctive-secret\n")
    (tree / "plain.py").write_text("OPEN = 'not secret'\n")
    (tree / "driver.py").write_text(DRIVER_SOURCE)  # the recorded command: the keys are granted to it only
    source = root / "answer.c"
    source.write_text("int answer(void) { return 4242; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tree / "secret" / "libanswer.so"), str(source)], check=True)
    entries = [replace(e, encrypted="/secret/" in "/" + e.path) if e.kind == "file" else e
               for e in directory_entries(root / "tree")]
    with (root / "archive").open("wb") as out:
        pack(entries, out, code_key=CODE_KEY)
    python = root / "python"
    inject(REAL_PYTHON, root / "archive", python)
    python.chmod(0o755)
    assert b"the-distinctive-secret" not in python.read_bytes()
    measurement = measure_elf(python)
    file_sha256 = hashlib.sha256(python.read_bytes()).hexdigest()
    parameters = {k: measurement.parameters[k] for k in ("heap_size", "stack_size", "threads", "ssa_frame_size")}
    config = root / "runtime.json"
    command = [str(python), ROOT + "/driver.py"]
    config.write_text(json.dumps({
        "schema": "sconify.runtime/v1", "executable": str(python), "measurement": parameters,
        "mrenclave": measurement.mrenclave, "executable_sha256": file_sha256, "volumes": [], "ephemeral": [],
        "policy": {"command": command, "service_command": command, "environment": {"PATH": os.environ["PATH"]},
                   "allow_args": True, "allow_env": []},
    }))
    keys = {"schema": "sconify.keys/v2", "session": "test", "mrenclave": measurement.mrenclave,
            "executable_sha256": file_sha256, "volumes": [],
            "runtime_config_sha256": hashlib.sha256(config.read_bytes()).hexdigest()}
    (root / "keys.json").write_text(json.dumps({**keys, "code_key": CODE_KEY.hex()}))
    (root / "keys-without-code-key.json").write_text(json.dumps(keys))
    return {"root": root, "runtime": runtime, "python": python, "config": config}


def run(world: dict, code: str, keys: str | None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "SCONIFY_RUNTIME_CONFIG": str(world["config"]), "SCONIFY_LOG": "stderr"}
    if keys:
        env["SCONIFY_KEYS"] = str(world["root"] / keys)
    return subprocess.run([str(world["runtime"].launcher), str(world["python"]), ROOT + "/driver.py", code],
                          capture_output=True, text=True, env=env, cwd=world["root"], timeout=60)


IMPORT = f"import sys; sys.path.insert(0, {ROOT!r})\n"


def test_encrypted_module_and_shared_object_are_served_with_the_code_key(world) -> None:
    result = run(world, IMPORT + (
        "import ctypes, os, secret, plain\n"
        f"print(secret.solve(2), plain.OPEN, ctypes.CDLL({ROOT + '/secret/libanswer.so'!r}).answer())\n"
        f"print(os.stat({ROOT + '/secret/algo.py'!r}).st_size)\n"), "keys.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "2674 not secret 4242", str(len("def solve(x):\n    return x * 1337  # the-distinctive-secret\n"))]
    assert not Path(ROOT).exists()


@pytest.mark.parametrize("keys", [None, "keys-without-code-key.json"])
def test_without_the_code_key_encrypted_files_are_eacces_with_one_line(world, keys) -> None:
    result = run(world, IMPORT + (
        "import errno, plain\n"
        "print(plain.OPEN)\n"
        "try:\n"
        f"    open({ROOT + '/secret/algo.py'!r}).read()\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "try:\n"
        f"    open({ROOT + '/secret/__init__.py'!r}).read()\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"), keys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["not secret", "EACCES", "EACCES"]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sconify-shield: {ROOT}/secret/algo.py is encrypted code"), lines


def test_a_wrong_code_key_is_an_io_error(world) -> None:
    doc = json.loads((world["root"] / "keys.json").read_text())
    (world["root"] / "keys-wrong.json").write_text(json.dumps({**doc, "code_key": "00" * 32}))
    result = run(world, "import errno\ntry:\n"
                        f"    open({ROOT + '/secret/algo.py'!r}).read()\n"
                        "except OSError as e:\n    print(errno.errorcode[e.errno])\n", "keys-wrong.json")
    assert result.stdout == "EIO\n", result.stderr
    assert "check: code decryption" in result.stderr and "00" * 32 not in result.stderr
