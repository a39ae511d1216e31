"""Freshness state apart from the keys (issue 24, docs/runtime.md "Freshness state: a directory
or etcd"), under a real Docker engine: the keys directory mounted read-only, each volume's tag
kept in a state store the keys file names (``"state"``): a directory on a volume of its own, or
a real etcd (Debian's etcd-server, started on the host; the containers reach it with
``--network host``, the engine having no other network).

The image is ``driver_conv`` of test_runtime_docker.py: the Python demo whose measured command
runs its first argument."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from etcd import ETCD, start_etcd, stop
from test_runtime_docker import (WRITER, conversions, driver, driver_conv, run, secrets_dir,  # noqa: F401
                                 volume, volume_files)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

STATE = "/var/lib/sconify"
RACER = (  # write once /go/go exists (both containers past their start-up checks), say how it went
    "import errno, os, sys, time\n"
    "print('ready', flush=True)\n"
    "while not os.path.exists('/go/go'):\n"
    "    time.sleep(0.02)\n"
    "try:\n"
    "    with open('/app/data/count.txt', 'w') as f:\n"
    "        f.write(sys.argv[1])\n"
    "    print('ok')\n"
    "except OSError as e:\n"
    "    print(errno.errorcode[e.errno])\n"
)


def keys_with_state(conv, tmp: Path, state: dict) -> Path:
    """A copy of the conversion's keys directory whose keys.json names a state store; readable by
    everyone, to be mounted read-only."""
    secrets = secrets_dir(conv, tmp, mode=0o644)
    doc = json.loads((secrets / "keys.json").read_text())
    doc["state"] = {"name": "demo", **state}
    (secrets / "keys.json").write_text(json.dumps(doc))
    return secrets


def restore(docker_client, name: str, backup: Path) -> None:
    mountpoint = Path(docker_client.volumes.get(name).attrs["Mountpoint"])
    shutil.rmtree(mountpoint)
    shutil.copytree(backup, mountpoint)


def test_state_directory_keys_read_only_writes_persist_and_a_restored_copy_is_refused(
        driver_conv, docker_client, volume, tmp_path):  # noqa: F811
    secrets = keys_with_state(driver_conv, tmp_path, {"dir": STATE})
    keys_before = (secrets / "keys.json").read_text()
    state = f"sconify-rt-state-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(state)
    try:
        mounts = {volume: {"bind": "/app/data", "mode": "rw"}, state: {"bind": STATE, "mode": "rw"}}
        outs = []
        for _ in range(2):
            status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets,
                                   secrets_mode="ro", volumes=mounts)
            assert status == 0, err
            outs.append(out.strip())
            if not (tmp_path / "backup").exists():
                shutil.copytree(Path(docker_client.volumes.get(volume).attrs["Mountpoint"]), tmp_path / "backup")
        assert outs == ["1", "2"]  # the keys are read-only, the writes persist
        assert (secrets / "keys.json").read_text() == keys_before
        record = json.loads(volume_files(docker_client, state)["demo/%2Fapp%2Fdata.json"])
        assert set(record) == {"schema", "volume", "fspf_tag"} and record["volume"] == "/app/data"
        assert volume_files(docker_client, volume)[".sconify.fspf"][-16:].hex() == record["fspf_tag"]
        # the copy of the volume taken after the first run, put back: refused at start
        restore(docker_client, volume, tmp_path / "backup")
        status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets,
                               secrets_mode="ro", volumes=mounts)
        assert (status, out) == (2, "")
        assert "volume /app/data" in err and "rollback" in err and f"state directory {STATE}/demo" in err
    finally:
        docker_client.volumes.get(state).remove(force=True)


def test_a_state_directory_that_is_the_containers_own_copy_is_refused(driver_conv, docker_client, volume,  # noqa: F811
                                                                      tmp_path):
    secrets = keys_with_state(driver_conv, tmp_path, {"dir": "/tmp"})  # no volume mounted at /tmp
    status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets, secrets_mode="ro",
                           volumes={volume: {"bind": "/app/data", "mode": "rw"}})
    assert (status, out) == (2, "")
    assert "the state directory /tmp/demo is the container's own copy" in err and "mount a volume there" in err


@pytest.fixture
def etcd(tmp_path_factory):
    if ETCD is None:
        pytest.skip("etcd is not installed (.ci/run installs etcd-server)")
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    stop(server.process)


def start(docker_client, image, command, secrets: Path, volumes: dict):
    mounts = {**volumes, str(secrets): {"bind": "/run/secrets/sconify", "mode": "ro"}}
    return docker_client.containers.run(image, command, detach=True, network_mode="host", volumes=mounts,
                                        environment={"SCONIFY_LOG": "stderr"})


def wait(container) -> tuple[int, str, str]:
    try:
        status = container.wait(timeout=120)["StatusCode"]
        return (status, container.logs(stdout=True, stderr=False).decode(),
                container.logs(stdout=False, stderr=True).decode())
    finally:
        container.remove(force=True)


def test_etcd_two_containers_committing_from_one_old_tag_one_wins(driver_conv, docker_client, etcd,  # noqa: F811
                                                                  tmp_path):
    """Two copies of one volume (two machines, say) share the etcd record: both start at the same
    tag, both write; one commit wins, the other is refused and its copy never starts again."""
    secrets = keys_with_state(driver_conv, tmp_path, {"etcd": {"endpoints": [etcd.endpoint],
                                                              "prefix": "/sconify/demo/"}})
    volumes = [f"sconify-rt-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    go = tmp_path / "go"
    go.mkdir()
    for name in volumes:
        docker_client.volumes.create(name)
    try:
        first = start(docker_client, driver_conv.tag, driver(WRITER), secrets, {volumes[0]: {"bind": "/app/data"}})
        assert wait(first)[:2] == (0, "1\n")
        tag = json.loads(etcd.get("/sconify/demo//app/data"))["fspf_tag"]
        backup = tmp_path / "copy"
        shutil.copytree(Path(docker_client.volumes.get(volumes[0]).attrs["Mountpoint"]), backup)
        restore(docker_client, volumes[1], backup)  # the second copy: the same tag
        racers = [start(docker_client, driver_conv.tag, driver(RACER) + [str(i)], secrets,
                        {name: {"bind": "/app/data"}, str(go): {"bind": "/go", "mode": "ro"}})
                  for i, name in enumerate(volumes)]
        deadline = time.monotonic() + 120
        while not all(r.logs(stdout=True, stderr=False).decode().startswith("ready") for r in racers):
            assert time.monotonic() < deadline and all(r.reload() or r.status != "exited" for r in racers)
            time.sleep(0.1)
        (go / "go").write_text("")
        results = [wait(r) for r in racers]
        lines = sorted(out.split()[-1] for _, out, _ in results)
        assert lines == ["EIO", "ok"], results
        loser = [r for r in results if r[1].split()[-1] == "EIO"][0]
        assert "another writer moved it first" in loser[2] and "this commit is refused" in loser[2]
        record = json.loads(etcd.get("/sconify/demo//app/data"))
        assert record["fspf_tag"] != tag and "fspf_tag_next" not in record
        # the loser's copy is the old one now: refused at start; the winner's goes on
        for index, name in enumerate(volumes):
            status, out, err = wait(start(docker_client, driver_conv.tag, driver(WRITER), secrets,
                                          {name: {"bind": "/app/data"}}))
            won = results[index][1].split()[-1] == "ok"
            assert (status, out) == ((0, f"{index + 1}\n") if won else (2, "")), err  # the racer wrote its index
            if not won:
                assert "rollback" in err and etcd.endpoint in err
    finally:
        for name in volumes:
            docker_client.volumes.get(name).remove(force=True)


def test_state_directory_several_processes_of_the_service_commit_in_turn(driver_conv, docker_client, volume,  # noqa: F811
                                                                          tmp_path):
    """The service's processes share the volume as with tags in the keys file: each commit swaps
    the record from the latest tag (the volume's lock orders them), the parent reads what every
    worker wrote, and the next start accepts the last tag."""
    code = ("import os\n"
            "pids = []\n"
            "for i in range(3):\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        for n in range(3):\n"
            "            with open(f'/app/data/w{i}.txt', 'w') as f:\n"
            "                f.write(str(n))\n"
            "        os._exit(0)\n"
            "    pids.append(pid)\n"
            "assert all(os.waitpid(pid, 0)[1] == 0 for pid in pids)\n"
            "print(sorted(open(f'/app/data/w{i}.txt').read() for i in range(3)))\n")
    secrets = keys_with_state(driver_conv, tmp_path, {"dir": STATE})
    state = f"sconify-rt-state-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(state)
    try:
        mounts = {volume: {"bind": "/app/data", "mode": "rw"}, state: {"bind": STATE, "mode": "rw"}}
        status, out, err = run(docker_client, driver_conv.tag, driver(code), secrets=secrets, secrets_mode="ro",
                               volumes=mounts, environment={"SCONIFY_LOG": "stderr"})
        assert (status, out) == (0, "['2', '2', '2']\n"), err
        record = json.loads(volume_files(docker_client, state)["demo/%2Fapp%2Fdata.json"])
        assert volume_files(docker_client, volume)[".sconify.fspf"][-16:].hex() == record["fspf_tag"]
        status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets, secrets_mode="ro",
                               volumes=mounts)
        assert (status, out) == (0, "1\n"), err
    finally:
        docker_client.volumes.get(state).remove(force=True)
