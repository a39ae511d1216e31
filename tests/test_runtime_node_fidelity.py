"""Node writing from a worker thread and from a spawned node child, in the converted Node demo under a
real Docker engine; the original image running the same script is the oracle.

``test_runtime_docker.test_node_writes_read_back_as_in_the_original`` covers the ways one thread
of one process writes (writeFileSync, fs.promises.writeFile, appendFile, streams, FileHandle);
this adds the same writes made by a ``worker_threads`` Worker and by
``child_process.spawn(process.execPath, ...)``, each read back by the writer itself and by the
main thread, and appends by two ``cluster`` workers to one file, in the encrypted volume and in
/tmp.
"""

from __future__ import annotations

import pytest
from fidelity_scripts import NODE_THREADS_AND_CHILDREN
from test_runtime_docker import converted_image, run, secrets_dir, volume_files, with_app_script

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PLACES = {"volume": "/app/data/children", "tmp": "/tmp/children"}


@pytest.fixture(scope="module")
def outputs(node_image, docker_client, tmp_path_factory):
    """(original's stdout, converted's stdout, the converted run's volume files) of the script,
    run once each with /app/data on a Docker volume."""
    tmp = tmp_path_factory.mktemp("rt-node-children")
    cmd = ["node", "/app/children.js", *PLACES.values()]
    layout = with_app_script(node_image, "children.js", NODE_THREADS_AND_CHILDREN, cmd, tmp)
    conv = converted_image("node-children", layout, docker_client, tmp)
    names = []
    try:
        runs = []
        for image, secrets in ((conv.original, None), (conv.tag, secrets_dir(conv, tmp))):
            names.append(f"{conv.tag.split(':')[0]}-{len(names)}")
            docker_client.volumes.create(names[-1])
            status, out, err = run(docker_client, image, secrets=secrets,
                                   volumes={names[-1]: {"bind": "/app/data", "mode": "rw"}})
            assert status == 0, err
            runs.append(out)
        yield runs[0], runs[1], volume_files(docker_client, names[1])
    finally:
        for name in names:
            docker_client.volumes.get(name).remove(force=True)
        for tag in (conv.original, conv.tag):
            docker_client.images.remove(tag, force=True)


def lines(out: str, place: str, who: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"{PLACES[place]} {who} ")]


@pytest.mark.parametrize("place, who", [("volume", "thread"), ("volume", "child"), ("tmp", "thread"), ("tmp", "child")])
def test_node_thread_and_child_writes_read_back_as_in_the_original(place, who, outputs):
    original, converted, _ = outputs
    expected = lines(original, place, who)
    assert len(expected) == 2 and all("=ENOENT" not in line and "failed" not in line for line in expected)  # the oracle
    assert lines(converted, place, who) == expected


@pytest.mark.parametrize("place", ["volume", "tmp"])
def test_node_cluster_workers_append_to_one_file_as_in_the_original(place, outputs):
    # Two `cluster` workers (node processes the measured node forks) append 200 lines each to one
    # file with appendFileSync (O_APPEND, open/write/close each) and write a file each: every
    # line is there once, as in the original (the launcher's shared plaintext cache).
    original, converted, _ = outputs
    expected = lines(original, place, "cluster:")
    assert len(expected) == 1 and "400 lines 400 distinct" in expected[0]  # the oracle
    assert lines(converted, place, "cluster:") == expected


@pytest.mark.parametrize("place", ["volume", "tmp"])
def test_node_listing_after_thread_and_child_writes_as_in_the_original(place, outputs):
    original, converted, _ = outputs
    assert lines(converted, place, "listing:") == lines(original, place, "listing:") != []


def test_node_thread_and_child_writes_are_ciphertext_on_the_volume(outputs):
    _, _, stored = outputs
    written = {name: data for name, data in stored.items() if name.startswith("children/")}
    assert len(written) == 13  # 5 files by the thread, 5 by the child, 3 by the cluster's workers
    for name, data in written.items():
        assert b" by " not in data and b" line " not in data and b"worker" not in data, name
