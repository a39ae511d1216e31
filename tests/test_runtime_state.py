"""Freshness state apart from the keys, on this machine (no Docker): the World of
test_runtime_shield.py (an injected python, a volume, its keys file) whose keys file names a
state store (``"state"``): the launcher and the shield keep the volume's tag there and never write
the keys file. docs/runtime.md, "Freshness state: a directory or etcd"."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from etcd import ETCD, start_etcd, stop
from test_runtime_shield import CONCURRENT, World, runtime  # noqa: F401

WRITE = "import sys\nopen(sys.argv[1] + '/count.txt', 'w').write(sys.argv[2])\n"
PLAIN = set(string.ascii_letters + string.digits + "_-")


def record_file(directory: Path, volume: Path) -> Path:
    """DIR/<policy>/<volume>.json: bytes other than letters, digits, '_', '-' and a '.' that is not
    the first are %XX."""
    name = "".join(c if c in PLAIN or (c == "." and i) else f"%{ord(c):02X}" for i, c in enumerate(str(volume)))
    return directory / "t" / f"{name}.json"


def fspf_tag(world: World) -> str:
    return world.fspf_path.read_bytes()[-16:].hex()


@pytest.fixture
def world(tmp_path, runtime) -> World:  # noqa: F811
    world = World(tmp_path, runtime)
    (tmp_path / "state").mkdir()
    keys = json.loads(world.keys.read_text())
    keys["state"] = {"name": "t", "dir": str(tmp_path / "state")}
    world.keys.write_text(json.dumps(keys))
    return world


def test_processes_committing_at_once_keep_the_record_and_never_write_the_keys(world):
    keys_before = world.keys.read_text()
    result = world.python_code(CONCURRENT, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout.splitlines() == ["[0, 0]", "100", "100"], result.stderr
    assert "sconify-shield" not in result.stderr
    assert world.keys.read_text() == keys_before
    record = json.loads(record_file(world.root / "state", world.volume).read_text())
    assert record == {"schema": "sconify.freshness/v1", "volume": str(world.volume), "fspf_tag": fspf_tag(world)}
    assert world.python_code(WRITE, str(world.volume), "again").returncode == 0  # the next start accepts it


def test_a_commit_whose_second_phase_was_not_recorded_is_settled_by_the_next(world):
    # The record is left at {an older tag, next: the fspf's tag}, as a commit that crashed after
    # its renames leaves it: the service's next commit settles it and goes on.
    world.python_code(WRITE, str(world.volume), "1")
    path = record_file(world.root / "state", world.volume)
    code = ("import json, sys\n"
            "open(sys.argv[1] + '/count.txt', 'w').write('2')\n"
            "rec = json.load(open(sys.argv[2]))\n"
            "json.dump({**rec, 'fspf_tag': 'e' * 32, 'fspf_tag_next': rec['fspf_tag']}, open(sys.argv[2], 'w'))\n"
            "open(sys.argv[1] + '/count.txt', 'w').write('3')\n"
            "print(open(sys.argv[1] + '/count.txt').read())\n")
    result = world.python_code(code, str(world.volume), str(path), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "3\n" and "sconify-shield" not in result.stderr, result.stderr
    assert json.loads(path.read_text())["fspf_tag"] == fspf_tag(world)
    assert "fspf_tag_next" not in json.loads(path.read_text())


def test_a_record_another_writer_moved_refuses_the_commit_and_the_next_start(world):
    world.python_code(WRITE, str(world.volume), "1")
    path = record_file(world.root / "state", world.volume)
    code = ("import errno, json, sys\n"
            "rec = json.load(open(sys.argv[2]))\n"
            "json.dump({**rec, 'fspf_tag': 'e' * 32}, open(sys.argv[2], 'w'))  # another copy committed\n"
            "try:\n"
            "    open(sys.argv[1] + '/count.txt', 'w').write('2')\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno])\n")
    before = fspf_tag(world)
    result = world.python_code(code, str(world.volume), str(path), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "EIO\n", result.stderr
    assert "another writer moved it first" in result.stderr and "this commit is refused" in result.stderr
    assert fspf_tag(world) == before  # the volume stays as it was
    again = world.python_code(WRITE, str(world.volume), "3", check=False)
    assert again.returncode == 2 and "rollback" in again.stderr and "state directory" in again.stderr


def test_the_first_start_makes_the_record_from_the_keys_files_tag(world):
    path = record_file(world.root / "state", world.volume)
    assert not path.exists()
    world.python_code("print(1)")
    assert json.loads(path.read_text())["fspf_tag"] == world.tag() == fspf_tag(world)


def test_an_unreachable_etcd_refuses_the_start_naming_the_endpoint(world):
    keys = json.loads(world.keys.read_text())
    keys["state"] = {"name": "t", "etcd": {"endpoints": ["http://127.0.0.1:9"], "prefix": "/t/", "timeout_ms": 500}}
    world.keys.write_text(json.dumps(keys))
    result = world.python_code("print(1)", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "http://127.0.0.1:9" in result.stderr


@pytest.mark.skipif(ETCD is None, reason="etcd is not installed (.ci/run installs etcd-server)")
def test_commits_through_etcd(world, tmp_path_factory):
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        keys = json.loads(world.keys.read_text())
        keys["state"] = {"name": "t", "etcd": {"endpoints": [server.endpoint], "prefix": "/t/"}}
        world.keys.write_text(json.dumps(keys))
        keys_before = world.keys.read_text()
        result = world.python_code(CONCURRENT, str(world.volume), env={"SCONIFY_LOG": "stderr"})
        assert result.stdout.splitlines() == ["[0, 0]", "100", "100"], result.stderr
        assert json.loads(server.get(f"/t/{world.volume}"))["fspf_tag"] == fspf_tag(world)
        assert world.keys.read_text() == keys_before
    finally:
        stop(server.process)


def test_a_volume_named_in_the_keys_is_recorded_under_its_name(world):
    # A policy's volumes have names (app_data): the record is the name's, not the path's.
    keys = json.loads(world.keys.read_text())
    keys["volumes"][0]["name"] = "app_data"
    world.keys.write_text(json.dumps(keys))
    world.python_code(CONCURRENT, str(world.volume))
    record = json.loads((world.root / "state" / "t" / "app_data.json").read_text())
    assert record["volume"] == "app_data" and record["fspf_tag"] == fspf_tag(world)
    assert not record_file(world.root / "state", world.volume).exists()


def test_an_fsync_makes_the_state_directorys_record_durable(world):
    # docs/runtime.md "Durability": the commit swaps the record without fsync; the service's
    # fsync then fsyncs the record file (store_sync) without moving it again.
    code = ("import os, sys\n"
            "fd = os.open(sys.argv[1] + '/count.txt', os.O_WRONLY | os.O_TRUNC)\n"
            "os.write(fd, b'7')\n"
            "os.fsync(fd)\n"
            "os.close(fd)\n"
            "print(open(sys.argv[1] + '/count.txt').read())\n")
    result = world.python_code(code, str(world.volume), env={"SCONIFY_LOG": "stderr"})
    assert result.stdout == "7\n" and "sconify-shield" not in result.stderr, result.stderr
    record = json.loads(record_file(world.root / "state", world.volume).read_text())
    assert record["fspf_tag"] == fspf_tag(world) and "fspf_tag_next" not in record
    assert world.python_code(WRITE, str(world.volume), "again").returncode == 0
