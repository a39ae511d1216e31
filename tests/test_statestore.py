"""The freshness state store's etcd backend (runtime/src/statestore.c) against a real etcd
(Debian's etcd-server, started here on a free port with a data directory of its own), driven
through runtime/build/tools/statestore_tool. The dir backend's tests are C unit tests
(runtime/tests/test_statestore.c, ``make -C runtime check``)."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import runtime_tool
from etcd import ETCD, start_etcd, stop
from registryd import free_port

pytestmark = pytest.mark.skipif(ETCD is None, reason="etcd is not installed (.ci/run installs etcd-server)")

A, B, C, D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)
PREFIX = "/sconify/test/"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def tool():
    return runtime_tool("statestore_tool")


def spec(*endpoints: str, timeout_ms: int = 2000) -> str:
    return json.dumps({"etcd": {"endpoints": list(endpoints), "prefix": PREFIX, "timeout_ms": timeout_ms}})


def store(tool, store_spec: str, *args: str, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(tool), store_spec, "deployment-a", *args], capture_output=True, text=True,
                          timeout=30, input=stdin, check=False)


def test_read_absent_create_and_swap_forward(tool, etcd):
    s = spec(etcd.endpoint)
    assert store(tool, s, "read", "v1").stdout == "absent\n"
    assert store(tool, s, "cas", "v1", "-", A).stdout == "swapped\n"
    assert store(tool, s, "read", "v1").stdout == f"{A}\n"
    # the commit's two phases: the next tag beside the current one, then the next one alone
    assert store(tool, s, "cas", "v1", A, f"{A}:{B}").returncode == 0
    assert store(tool, s, "read", "v1").stdout == f"{A} next {B}\n"
    assert store(tool, s, "cas", "v1", f"{A}:{B}", B).returncode == 0
    assert store(tool, s, "read", "v1").stdout == f"{B}\n"
    # one key per volume, under the prefix; tags only
    record = json.loads(etcd.get(PREFIX + "v1"))
    assert record == {"schema": "sconify.freshness/v1", "volume": "v1", "fspf_tag": B}


def test_a_second_create_and_a_swap_from_a_stale_record_are_refused(tool, etcd):
    s = spec(etcd.endpoint)
    assert store(tool, s, "cas", "v2", "-", A).returncode == 0
    again = store(tool, s, "cas", "v2", "-", C)
    assert (again.returncode, again.stdout) == (3, "moved\n")
    assert store(tool, s, "cas", "v2", A, B).returncode == 0
    stale = store(tool, s, "cas", "v2", A, C)  # a writer that still believes A: someone moved it to B
    assert (stale.returncode, stale.stdout) == (3, "moved\n")
    assert f"has tag {B} where the writer started from tag {A}" in stale.stderr
    assert etcd.endpoint in stale.stderr
    assert store(tool, s, "read", "v2").stdout == f"{B}\n"
    gone = store(tool, s, "cas", "v2-never-made", A, B)  # a writer that believes in a record nobody made
    assert (gone.returncode, gone.stdout) == (3, "moved\n") and "has no record" in gone.stderr
    assert store(tool, s, "read", "v2-never-made").stdout == "absent\n"


def test_two_writers_racing_from_one_old_tag_one_wins(tool, etcd):
    s = spec(etcd.endpoint)
    for round_ in range(5):
        volume = f"race-{round_}"
        assert store(tool, s, "cas", volume, "-", A).returncode == 0
        writers = [subprocess.Popen([str(tool), s, "deployment-a", "cas", volume, A, f"{A}:{new}", "--wait"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for new in (C, D)]
        for writer in writers:  # both are connected and waiting: release them together
            writer.stdin.write("go\n")
        for writer in writers:
            writer.stdin.close()
        codes = [writer.wait(timeout=30) for writer in writers]
        for writer in writers:
            writer.stdout.close()
            writer.stderr.close()
        assert sorted(codes) == [0, 3], codes
        winner = (C, D)[codes.index(0)]
        assert store(tool, s, "read", volume).stdout == f"{A} next {winner}\n"


def test_a_record_equal_in_other_bytes_is_swapped(tool, etcd):
    """A record written by another tool (indented, keys in another order) still compares equal."""
    etcd.put(PREFIX + "v3", json.dumps({"volume": "v3", "fspf_tag": A, "schema": "sconify.freshness/v1"},
                                       indent=2).encode())
    assert store(tool, spec(etcd.endpoint), "cas", "v3", A, B).returncode == 0
    assert json.loads(etcd.get(PREFIX + "v3"))["fspf_tag"] == B


def test_a_malformed_record_is_an_error_not_absent(tool, etcd):
    etcd.put(PREFIX + "v4", b"not json")
    result = store(tool, spec(etcd.endpoint), "read", "v4")
    assert result.returncode == 2 and "malformed" in result.stderr


def test_endpoints_are_tried_in_order_and_named_when_none_answers(tool, etcd):
    dead = f"http://127.0.0.1:{free_port()}"
    s = spec(dead, etcd.endpoint)
    assert store(tool, s, "cas", "v5", "-", A).returncode == 0
    assert store(tool, s, "read", "v5").stdout == f"{A}\n"
    result = store(tool, spec(dead, timeout_ms=500), "read", "v5")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and dead in result.stderr and "cannot connect" in result.stderr
