"""SQLite in an encrypted volume of a converted image, under a real Docker engine; SQLite itself is
the oracle (its rows, ``pragma integrity_check``), and so is the original image on the same kind
of Docker volume.

The Python demo gets one more measured script, ``/app/sqlite_check.py`` (SQLITE_CHECK: one
subcommand per scenario), as its command, and is converted with ``--dir /app/data --allow-args``
so each test appends its scenario. Every row carries a marker string; the volume's files on the
host never hold it in the converted image (they do in the original: the scan's own oracle).

Where the converted image does not do what the original does today, the test is
``xfail(strict=True)`` with the reason: it fails as soon as the runtime is fixed, and the marker
comes off then.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from engine_images import Converted, load_image
from test_runtime_docker import SECRETS, run, secrets_dir

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SCRIPT = "/app/sqlite_check.py"
# python3 SCRIPT SCENARIO ARGS...; each prints JSON lines the test compares with the original's.
SQLITE_CHECK = r'''
import json, multiprocessing, os, sqlite3, sys, time

def connect(path, mode):
    db = sqlite3.connect(path, timeout=60)
    db.execute(f"pragma journal_mode={mode}")
    return db

def create(path, mode):
    db = connect(path, mode)
    db.execute("create table if not exists t(id integer primary key, body text)")
    db.commit()
    return db

def check(path):
    db = sqlite3.connect(path, timeout=60)
    ok = db.execute("pragma integrity_check").fetchone()[0]
    ids = [row[0] for row in db.execute("select id from t order by id")]
    mode = db.execute("pragma journal_mode").fetchone()[0]
    db.close()
    return {"integrity": ok, "ids": ids, "journal_mode": mode}

def insert(path, mode, marker, first, count, barrier=None):
    db = connect(path, mode)
    if barrier is not None:
        barrier.wait(60)  # all connected before any inserts: the writers overlap
    for i in range(first, first + count):
        with db:
            db.execute("insert into t values (?, ?)", (i, f"{marker}-{i:06d}"))
    db.close()

def scenario_modes(path, mode, marker):
    """create, insert (a transaction per row, then a batch), close, reopen, integrity_check; then
    the same check by a new process of the service (the measured python, as subprocess starts it)."""
    db = create(path, mode)
    db.close()
    insert(path, mode, marker, 1, 20)
    db = connect(path, mode)
    with db:
        db.executemany("insert into t values (?, ?)", [(i, f"{marker}-{i:06d}") for i in range(21, 221)])
    with db:
        db.execute("update t set body = body || '-updated' where id % 3 = 0")
    with db:
        db.execute("delete from t where id % 7 = 0")
    db.close()
    result = check(path)
    print(json.dumps({**result, "ids": len(result["ids"]), "sum": sum(result["ids"])}), flush=True)
    import subprocess
    again = json.loads(subprocess.run([sys.executable, __file__, "check", path], capture_output=True, text=True,
                                      check=True).stdout)
    print(json.dumps({**again, "ids": len(again["ids"]), "sum": sum(again["ids"])}), flush=True)

def four_writers(path, mode, marker, method, per_process):
    """Four processes (multiprocessing's method) insert per_process rows each, at the same time:
    the workers and the seconds from their start to their end."""
    create(path, mode).close()
    context = multiprocessing.get_context(method)
    barrier = context.Barrier(4)
    workers = [context.Process(target=insert, args=(path, mode, marker, 1 + k * 10_000, int(per_process), barrier))
               for k in range(4)]
    start = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return workers, time.monotonic() - start

def scenario_concurrent(path, mode, marker, method, per_process):
    workers, _ = four_writers(path, mode, marker, method, per_process)
    result = check(path)
    print(json.dumps({"exitcodes": [w.exitcode for w in workers], "integrity": result["integrity"],
                      "rows": len(result["ids"]), "sum": sum(result["ids"])}), flush=True)

def scenario_rate(path, mode, marker, method, per_process):
    """scenario_concurrent, timed (bench/bench_sqlite_shared.py)."""
    workers, seconds = four_writers(path, mode, marker, method, per_process)
    result = check(path)
    print(json.dumps({"exitcodes": [w.exitcode for w in workers], "integrity": result["integrity"],
                      "rows": len(result["ids"]), "seconds": seconds}), flush=True)

def scenario_writer(path, mode, marker):
    """Insert one row per transaction forever; print each id once its commit returned."""
    db = create(path, mode)
    i = (db.execute("select max(id) from t").fetchone()[0] or 0) + 1
    while True:
        with db:
            db.execute("insert into t values (?, ?)", (i, f"{marker}-{i:06d}"))
        print(i, flush=True)
        i += 1

def scenario_check(path):
    print(json.dumps(check(path)), flush=True)

if __name__ == "__main__":
    globals()["scenario_" + sys.argv[1]](*sys.argv[2:])
'''

@pytest.fixture(scope="module")
def sqlite_images(python_image, docker_client, engine_images):
    """The Python demo with SQLITE_CHECK as its command: original, and converted with
    --dir /app/data --allow-args. The demo is loaded under a tag of this module's own, not the
    session's (engine_images.loaded): built on the session's tag, the killed WAL writer's next
    start failed the shield's integrity check (the -wal stored one frame longer than the fspf
    records) in 3 of 3 runs after tests/test_runtime_policy.py, and passes this way (2 of 2): why
    is not understood yet."""
    base = f"sconify-rt-sqlite-{uuid.uuid4().hex[:8]}:base"
    load_image(docker_client, f"oci:{python_image}:latest", base)
    try:
        original = engine_images.derived(base, {SCRIPT: (SQLITE_CHECK.encode(), 0o644)}, cmd=["python3", SCRIPT])
        yield engine_images.converted(original, "--dir", "/app/data", "--allow-args")
    finally:
        docker_client.images.remove(base, force=True)


@pytest.fixture
def volumes(docker_client):
    """new() -> the name of a fresh Docker volume, removed at the end."""
    made: list[str] = []

    def new() -> str:
        made.append(f"sconify-rt-sqlite-{uuid.uuid4().hex[:8]}")
        docker_client.volumes.create(made[-1])
        return made[-1]

    yield new
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


def scenario(docker_client, images: Converted, converted: bool, volume: str, secrets: Path | None, *args: str) -> str:
    """Run python3 SCRIPT ARGS in the original or the converted image, /app/data on ``volume``."""
    image = images.tag if converted else images.original
    status, out, err = run(docker_client, image, ["python3", SCRIPT, *args], secrets=secrets if converted else None,
                           volumes={volume: {"bind": "/app/data", "mode": "rw"}}, environment={"SCONIFY_LOG": "stderr"})
    assert status == 0, err[-3000:]
    return out


def holding(docker_client, volume: str, marker: str) -> list[str]:
    """The volume's files as stored on the host (the commits' temp files included) that hold
    ``marker`` in plaintext; a file renamed or removed while the scan runs is skipped."""
    mountpoint = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    found = []
    for path in mountpoint.rglob("*"):
        try:
            if path.is_file() and marker.encode() in path.read_bytes():
                found.append(str(path.relative_to(mountpoint)))
        except FileNotFoundError:
            continue
    return sorted(found)


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sqlite_create_insert_reopen_integrity_as_in_the_original(mode, sqlite_images, docker_client, volumes,
                                                                  tmp_path):
    marker = f"ROW-MARKER-{uuid.uuid4().hex}"
    path = f"/app/data/{mode}.db"
    secrets = secrets_dir(sqlite_images, tmp_path)
    results, stored = {}, {}
    for converted in (False, True):
        volume = volumes()
        results[converted] = scenario(docker_client, sqlite_images, converted, volume, secrets, "modes", path, mode,
                                      marker)
        stored[converted] = holding(docker_client, volume, marker)
    ids = [i for i in range(1, 221) if i % 7]
    expected = {"integrity": "ok", "ids": len(ids), "sum": sum(ids), "journal_mode": mode}
    assert [json.loads(line) for line in results[False].splitlines()] == [expected, expected]  # the oracle
    assert results[True] == results[False]
    assert stored[False] and stored[True] == []  # plaintext rows in the original's files; none converted


@pytest.mark.parametrize("mode, method", [("delete", "fork"), ("wal", "spawn")])
def test_sqlite_four_processes_insert_into_one_database(mode, method, sqlite_images, docker_client, volumes,
                                                       tmp_path):
    marker = f"ROW-MARKER-{uuid.uuid4().hex}"
    path = f"/app/data/shared-{mode}.db"
    secrets = secrets_dir(sqlite_images, tmp_path)
    out = {}
    for converted in (False, True):
        volume = volumes()
        out[converted] = json.loads(scenario(docker_client, sqlite_images, converted, volume, secrets,
                                             "concurrent", path, mode, marker, method, "10"))
        assert bool(holding(docker_client, volume, marker)) is not converted  # plaintext in the original's only
    ids = [1 + k * 10_000 + i for k in range(4) for i in range(10)]
    assert out[False] == {"exitcodes": [0, 0, 0, 0], "integrity": "ok", "rows": len(ids), "sum": sum(ids)}
    assert out[True] == out[False]


@pytest.mark.parametrize("mode", ["delete", "wal"])
def test_sqlite_writer_killed_mid_loop_loses_no_committed_row_and_no_plaintext_reaches_the_volume(
        mode, sqlite_images, docker_client, volumes, tmp_path):
    """docker kill of a writer that prints each id once its transaction committed; the next run
    finds the database intact with every reported row. (The scan's oracle, the original's files
    holding the marker, is in test_sqlite_create_insert_reopen_integrity_as_in_the_original.)"""
    marker = f"ROW-MARKER-{uuid.uuid4().hex}"
    path = f"/app/data/killed-{mode}.db"
    secrets = secrets_dir(sqlite_images, tmp_path)
    volume = volumes()
    container = docker_client.containers.run(sqlite_images.tag, ["python3", SCRIPT, "writer", path, mode, marker],
                                             detach=True, network_disabled=True,
                                             volumes={volume: {"bind": "/app/data", "mode": "rw"},
                                                      str(secrets): {"bind": SECRETS, "mode": "rw"}})
    seen_during: set[str] = set()
    scans = 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            seen_during.update(holding(docker_client, volume, marker))  # while the writer runs
            scans += 1
            if container.logs(stdout=True, stderr=False).count(b"\n") >= 15:
                break
            time.sleep(0.05)
        container.kill()
        container.wait(timeout=60)
        logs = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
    finally:
        container.remove(force=True)
    reported = [int(line) for line in logs.split("\n")[:-1]]  # whole lines only: a cut one was not reported
    assert len(reported) >= 15 and scans > 1, err[-2000:]
    assert seen_during == set() and holding(docker_client, volume, marker) == []
    result = json.loads(scenario(docker_client, sqlite_images, True, volume, secrets, "check", path))
    assert result["integrity"] == "ok" and result["journal_mode"] == mode
    assert set(reported) <= set(result["ids"]), sorted(set(reported) - set(result["ids"]))[:10]
    assert result["ids"] == list(range(1, len(result["ids"]) + 1))
