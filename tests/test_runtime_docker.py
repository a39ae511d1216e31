"""Converted images run with plain `docker run` (simulation mode), under a real Docker engine.

The Python and Node demo images are converted with ``--dir /app/data`` straight into the
engine; the keys directory is mounted where the runtime looks for it
(``/run/secrets/sconify``). The originals are the oracle for output and exit codes; the
volume's bytes on the host are the oracle for "only ciphertext on disk".

The keys go only to the command a conversion recorded. The tests that exercise volumes with
code of their own use ``driver_conv``: the Python demo with a measured driver script
(``/app/run_code.py``, which runs its first argument) as its CMD, converted with
``--allow-args``. The hostile runs (``test_hostile_run``) use the demo images as they are.
"""

from __future__ import annotations

import _ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from engine_images import Converted, convert_into_engine, derived_image, load_image
from fidelity_scripts import NODE_WRITES
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SECRETS = "/run/secrets/sconify"
WRITER = (
    "import os, sys\n"
    "p = '/app/data/count.txt'\n"
    "n = int(open(p).read()) if os.path.exists(p) else 0\n"
    "with open(p, 'w') as f:\n"
    "    f.write(str(n + 1))\n"
    "print(n + 1)\n"
)


# The measured command of driver_conv: python3 /app/run_code.py CODE runs CODE.
DRIVER = "/app/run_code.py"
DRIVER_SOURCE = (
    "import sys\n"
    "code = sys.argv[1]\n"
    "del sys.argv[1]\n"
    "exec(compile(code, '<driver>', 'exec'), {'__name__': '__main__'})\n"
)
NODE_DRIVER = "/app/run_code.js"
NODE_DRIVER_SOURCE = "const code = process.argv[2];\nprocess.argv.splice(2, 1);\neval(code);\n"
PLAINTEXT = "celsius"  # in the demo's /app/data/config.json and readings.csv
OWN_COPY_LINE = ("sconify-run: volume /app/data is the container's own copy (no volume mounted there): its writes "
                 "last as long as this container; mount a volume there to keep them\n")


def converted_image(kind: str, layout: Path, docker_client, tmp: Path) -> Converted:
    """An image of a test's own (``with_app_script``) loaded and converted with --dir /app/data;
    the caller removes both tags."""
    name = f"sconify-rt-{kind}-{uuid.uuid4().hex[:8]}"
    original, tag = f"{name}:original", f"{name}:conf"
    load_image(docker_client, f"oci:{layout}:latest", original)
    convert_into_engine(f"oci:{layout}:latest", tag, tmp / "out", "--dir", "/app/data")
    manifest = json.loads((tmp / "out" / "manifest.json").read_text())
    return Converted(original, tag, tmp / "out", manifest["executable"]["path"])


@pytest.fixture(scope="module")
def conversions(python_image, node_image, engine_images):
    """kind -> its Converted, made once per session (engine_images: shared with the other files
    that use these fixtures): a demo image converted with --dir /app/data (``python``, ``node``),
    or a demo with a driver as its CMD converted with --allow-args (``driver``, ``node-driver``)."""

    def get(kind: str) -> Converted:
        node = kind.startswith("node")
        layout = node_image if node else python_image
        original = engine_images.loaded(f"oci:{layout}:latest")
        if kind in ("python", "node"):
            return engine_images.converted(original, "--dir", "/app/data", source=f"oci:{layout}:latest")
        path, source, interpreter = (NODE_DRIVER, NODE_DRIVER_SOURCE, "node") if node else (DRIVER, DRIVER_SOURCE, "python3")
        driver = engine_images.derived(original, {path: (source.encode(), 0o644)}, cmd=[interpreter, path])
        return engine_images.converted(driver, "--dir", "/app/data", "--allow-args")

    return get


def with_app_script(layout: Path, name: str, text: str, cmd: list[str], out: Path) -> Path:
    """An OCI layout of the image at ``layout`` plus /app/``name`` (before conversion: it is
    embedded code like the rest of /app), with ``cmd`` as its Cmd."""
    from sconify.image.model import Layer, canonical_json, make_image
    from sconify.demo.layerentries import regular_file, write_layer_tar

    image = read_image(f"oci:{layout}:latest")
    tar = out / "script-layer.tar"
    with tar.open("wb") as handle:
        write_layer_tar([regular_file(f"app/{name}", text)], handle, 0)
    layer = Layer.from_tar_file(tar, compression="gzip", directory=out)
    config = image.config
    config["rootfs"]["diff_ids"].append(layer.diff_id)
    config.setdefault("history", []).append({"created_by": f"test: /app/{name}"})
    config["config"]["Cmd"] = cmd
    derived = make_image(canonical_json(config), [*image.layers, layer], f"{layout} + /app/{name}")
    write_image(derived, f"oci:{out / 'layout'}:latest")
    return out / "layout"


@pytest.fixture(scope="module")
def python_conv(conversions) -> Converted:
    return conversions("python")


@pytest.fixture(scope="module")
def node_conv(conversions) -> Converted:
    return conversions("node")


@pytest.fixture(scope="module")
def driver_conv(conversions) -> Converted:
    return conversions("driver")


def driver(code: str) -> list[str]:
    """driver_conv's recorded command with CODE appended (what --allow-args lets the host do)."""
    return ["python3", DRIVER, code]


def secrets_dir(conv: Converted, tmp: Path, mode: int = 0o600) -> Path:
    """A copy of the conversion's keys directory for one test (the runtime records tags in it)."""
    target = tmp / f"secrets-{uuid.uuid4().hex[:6]}"
    target.mkdir()
    shutil.copy(conv.out / "keys.json", target / "keys.json")
    (target / "keys.json").chmod(mode)
    target.chmod(0o755)
    return target


def run(docker_client, image: str, command=None, secrets: Path | None = None, volumes: dict | None = None,
        **kwargs) -> tuple[int, str, str]:
    mounts = dict(volumes or {})
    if secrets is not None:
        mounts[str(secrets)] = {"bind": SECRETS, "mode": kwargs.pop("secrets_mode", "rw")}
    container = docker_client.containers.run(image, command, detach=True, network_disabled=True, volumes=mounts,
                                             **kwargs)
    try:
        status = container.wait(timeout=120)["StatusCode"]
        out = container.logs(stdout=True, stderr=False).decode()
        err = container.logs(stdout=False, stderr=True).decode()
    finally:
        container.remove(force=True)
    return status, out, err


def volume_files(docker_client, name: str) -> dict[str, bytes]:
    mountpoint = Path(docker_client.volumes.get(name).attrs["Mountpoint"])
    return {str(p.relative_to(mountpoint)): p.read_bytes() for p in mountpoint.rglob("*") if p.is_file()}


@pytest.fixture
def volume(docker_client):
    name = f"sconify-rt-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name)
    yield name
    docker_client.volumes.get(name).remove(force=True)


# --- same behaviour as the original ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["python", "node"])
def test_converted_demo_prints_what_the_original_prints(kind, request, docker_client, tmp_path):
    conv = request.getfixturevalue(f"{kind}_conv")
    status, expected, _ = run(docker_client, conv.original)
    assert status == 0 and json.loads(expected)["rows"] > 0
    status, out, err = run(docker_client, conv.tag, secrets=secrets_dir(conv, tmp_path))
    assert status == 0, err
    assert out == expected


def test_config_keeps_the_original_command_behind_the_launcher(python_conv, docker_client):
    original = docker_client.images.get(python_conv.original).attrs["Config"]
    converted = docker_client.images.get(python_conv.tag).attrs["Config"]
    assert converted["Entrypoint"] == ["/.sconify/bin/sconify-run", "--"]
    assert converted["Cmd"] == original["Cmd"] and converted["WorkingDir"] == original["WorkingDir"]
    assert not any("KEY" in item for item in converted.get("Env") or [])


def test_appended_arguments_and_exit_code_pass_through(driver_conv, docker_client, tmp_path):
    status, out, err = run(docker_client, driver_conv.tag,
                           [*driver("import sys; print(sys.argv[1:], open('/app/data/config.json').read().strip()); "
                                    "sys.exit(3)"), "a b", "c"],
                           secrets=secrets_dir(driver_conv, tmp_path))
    assert status == 3 and out.strip().startswith("['a b', 'c'] {") and PLAINTEXT in out, err
    assert err == OWN_COPY_LINE  # granted: nothing to say but where the volume's writes go


def test_a_command_that_is_not_the_measured_executable_sees_ciphertext(python_conv, docker_client, tmp_path):
    # perl (in Debian's python3 closure) is not the measured executable: no keys, no shield.
    script = ('opendir(my $d, "/app/data"); print join(",", sort grep { !/^\\./ } readdir($d)), "\\n"; '
              'open(my $f, "<", "/app/data/config.json"); local $/; print unpack("H*", <$f>), "\\n";')
    status, out, err = run(docker_client, python_conv.tag, ["perl", "-e", script],
                           secrets=secrets_dir(python_conv, tmp_path))
    assert status == 0, err
    names, stored = out.split()
    assert names == "blob.bin,config.json,notes,readings-latest.csv,readings.csv"
    assert b'"app"' not in bytes.fromhex(stored) and len(bytes.fromhex(stored)) > 16


def test_docker_stop_reaches_the_service(python_conv, docker_client, tmp_path):
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(0)))\n"
            "print('ready', flush=True)\ntime.sleep(120)\n")
    secrets = secrets_dir(python_conv, tmp_path)
    container = docker_client.containers.run(python_conv.tag, ["python3", "-c", code], detach=True,
                                             network_disabled=True,
                                             volumes={str(secrets): {"bind": SECRETS, "mode": "rw"}})
    try:
        deadline = time.monotonic() + 60
        while b"ready" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.monotonic()
        container.stop(timeout=20)
        assert time.monotonic() - started < 10
        assert container.wait()["StatusCode"] == 0
        assert b"got SIGTERM" in container.logs()
    finally:
        container.remove(force=True)


def test_hardened_run_read_only_non_root_keys_read_only(python_conv, docker_client, tmp_path):
    status, expected, _ = run(docker_client, python_conv.original)
    status, out, err = run(docker_client, python_conv.tag, secrets=secrets_dir(python_conv, tmp_path, mode=0o644),
                           secrets_mode="ro", read_only=True, user="1000:1000")
    assert status == 0, err
    assert out == expected


# --- attestation, simulated --------------------------------------------------------------------


def test_missing_keys_are_refused(python_conv, docker_client):
    status, out, err = run(docker_client, python_conv.tag)
    assert status == 2 and out == ""
    assert err.startswith("sconify-run: no keys file at /run/secrets/sconify/keys.json")


def test_keys_of_another_image_are_refused(python_conv, docker_client, tmp_path):
    secrets = secrets_dir(python_conv, tmp_path)
    doc = json.loads((secrets / "keys.json").read_text())
    doc["mrenclave"] = "0" * 64
    (secrets / "keys.json").write_text(json.dumps(doc))
    status, out, err = run(docker_client, python_conv.tag, secrets=secrets)
    assert status == 2 and out == "" and "MRENCLAVE mismatch" in err


def test_tampered_executable_is_refused(python_conv, docker_client, tmp_path):
    fs = RootFS.from_image(read_image(f"docker-daemon:{python_conv.tag}"))
    exe = bytearray(fs.read(python_conv.executable.lstrip("/")))
    exe[-5000] ^= 1  # inside the embedfs segment at the end of the file
    tampered = tmp_path / "python3.11"
    tampered.write_bytes(bytes(exe))
    tampered.chmod(0o755)
    status, out, err = run(docker_client, python_conv.tag, secrets=secrets_dir(python_conv, tmp_path),
                           volumes={str(tampered): {"bind": python_conv.executable, "mode": "ro"}})
    assert status == 2 and out == "" and "MRENCLAVE mismatch" in err


# --- volumes: persistence, ciphertext only, freshness ----------------------------------------------


def test_writer_count_persists_across_three_containers_and_the_volume_holds_no_plaintext(
        driver_conv, docker_client, volume, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path)
    mounts = {volume: {"bind": "/app/data", "mode": "rw"}}
    counts = []
    for _ in range(3):
        status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets,
                               volumes=mounts)
        assert status == 0, err
        counts.append(out.strip())
        assert "own copy" not in err  # a mounted volume: freshness in the keys file
    assert counts == ["1", "2", "3"]
    assert json.loads((secrets / "keys.json").read_text())["volumes"][0]["fspf_tag"] != \
        json.loads((driver_conv.out / "keys.json").read_text())["volumes"][0]["fspf_tag"]
    stored = volume_files(docker_client, volume)
    assert ".sconify.fspf" in stored and "count.txt" in stored
    assert stored["count.txt"] != b"3" and len(stored["count.txt"]) == 1 + 16
    for name, data in stored.items():
        assert b"celsius" not in data, name  # the demo's readings.csv and config.json, in plaintext


def test_ciphertext_only_while_running_and_after_docker_kill(driver_conv, docker_client, volume, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path)
    marker = "PLAINTEXT-MARKER-" + uuid.uuid4().hex
    code = ("import os, time\n"
            f"f = open('/app/data/secret.txt', 'w'); f.write('{marker}'); f.flush(); os.fsync(f.fileno())\n"
            "print('written', flush=True)\n"
            f"g = open('/app/data/unsynced.txt', 'w'); g.write('{marker}')\n"
            "time.sleep(120)\n")
    container = docker_client.containers.run(driver_conv.tag, driver(code), detach=True,
                                             network_disabled=True,
                                             volumes={str(secrets): {"bind": SECRETS, "mode": "rw"},
                                                      volume: {"bind": "/app/data", "mode": "rw"}})
    try:
        deadline = time.monotonic() + 60
        while b"written" not in container.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b"written" in container.logs()
        for name, data in volume_files(docker_client, volume).items():
            assert marker.encode() not in data, name  # while the service runs
        container.kill()
        container.wait()
    finally:
        container.remove(force=True)
    for name, data in volume_files(docker_client, volume).items():
        assert marker.encode() not in data, name  # after the crash
    status, out, err = run(docker_client, driver_conv.tag,
                           driver("print(open('/app/data/secret.txt').read())"), secrets=secrets,
                           volumes={volume: {"bind": "/app/data", "mode": "rw"}})
    assert status == 0, err
    assert out.strip() == marker  # fsynced before the kill: survived


def test_restored_older_copy_of_the_volume_is_refused(driver_conv, docker_client, volume, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path)
    mounts = {volume: {"bind": "/app/data", "mode": "rw"}}
    assert run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets, volumes=mounts)[0] == 0
    mountpoint = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    backup = tmp_path / "backup"
    shutil.copytree(mountpoint, backup)
    assert run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets, volumes=mounts)[1].strip() == "2"
    shutil.rmtree(mountpoint)
    shutil.copytree(backup, mountpoint)
    status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets, volumes=mounts)
    assert status == 2 and out == ""
    assert "volume /app/data" in err and "rollback" in err


# --- the container's own copy (no volume mounted): no freshness trap --------------------------


def test_own_copy_writes_go_with_the_container_and_the_keys_stay_the_images(driver_conv, docker_client, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path)
    keys_before = (secrets / "keys.json").read_text()
    for _ in range(2):  # docker run --rm twice: each starts on the image's copy
        status, out, err = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets)
        assert (status, out, err) == (0, "1\n", OWN_COPY_LINE)
    assert (secrets / "keys.json").read_text() == keys_before
    # A mounted volume moves the recorded tag; a run on the image's copy still starts after it.
    name = f"sconify-rt-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name)
    try:
        mounted = run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets,
                      volumes={name: {"bind": "/app/data", "mode": "rw"}})
        assert mounted[:2] == (0, "1\n") and (secrets / "keys.json").read_text() != keys_before
    finally:
        docker_client.volumes.get(name).remove(force=True)
    assert run(docker_client, driver_conv.tag, driver(WRITER), secrets=secrets) == (0, "1\n", OWN_COPY_LINE)


def test_own_copy_restarted_and_committed_container_sees_its_writes(driver_conv, docker_client, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path)
    keys_before = (secrets / "keys.json").read_text()
    container = docker_client.containers.run(driver_conv.tag, driver(WRITER), detach=True, network_disabled=True,
                                             volumes={str(secrets): {"bind": SECRETS, "mode": "rw"}})
    committed = f"sconify-rt-committed-{uuid.uuid4().hex[:8]}:1"
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0
        container.start()  # the same container again (docker start; docker restart does the same)
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        assert container.logs(stdout=True, stderr=False).decode().split() == ["1", "2"]
        assert container.logs(stdout=False, stderr=True).decode() == OWN_COPY_LINE * 2
        container.commit(*committed.split(":"))
    finally:
        container.remove(force=True)
    try:  # docker commit: an image whose copy is the container's; each run starts on it
        for _ in range(2):
            assert run(docker_client, committed, driver(WRITER), secrets=secrets) == (0, "3\n", OWN_COPY_LINE)
    finally:
        docker_client.images.remove(committed, force=True)
    assert (secrets / "keys.json").read_text() == keys_before


# perl (in Debian's python3 closure) is not the measured executable: it sees what is on disk.
PERL_PEEK = (r'opendir(my $d, "/tmp"); print scalar(grep { /^\.sconify\.fspf\./ } readdir($d)), " "; '
             r'open(my $f, "<", "/tmp/shared.txt"); local $/; print((<$f> =~ /from/) ? "plaintext" : "ciphertext");')
TMP_TREE = (
    "import os, subprocess, sys\n"
    "print(sorted(os.listdir('/tmp')))\n"
    "open('/tmp/shared.txt', 'w').write('from the parent')\n"
    "code = \"print(open('/tmp/shared.txt').read(), end=''); open('/tmp/back.txt', 'w').write('from the child')\"\n"
    "print(subprocess.run([sys.executable, %r, code], capture_output=True, text=True).stdout, open('/tmp/back.txt').read())\n"
    "print(subprocess.run(['perl', '-e', %r], capture_output=True, text=True).stdout)\n"
) % (DRIVER, PERL_PEEK)


def test_tmp_is_shared_by_the_service_tree_and_empty_at_every_start(driver_conv, docker_client, tmp_path):
    # One /tmp for the measured tree (a child sees its parent's file and the reverse), ciphertext
    # to cat; the same container started again starts on an empty /tmp, and the launcher (PID 1)
    # removed the earlier start's fspf.
    container = docker_client.containers.run(driver_conv.tag, driver(TMP_TREE), detach=True, network_disabled=True,
                                             volumes={str(secrets_dir(driver_conv, tmp_path)): {"bind": SECRETS, "mode": "rw"}})
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        container.start()
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        once = ["[]", "from the parent from the child", "1 ciphertext"]
        assert container.logs(stdout=True, stderr=False).decode().splitlines() == once * 2
    finally:
        container.remove(force=True)


def test_own_copy_read_only_root_refuses_writes(driver_conv, docker_client, tmp_path):
    code = ("import errno\ntry:\n    open('/app/data/count.txt', 'w').close()\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    status, out, err = run(docker_client, driver_conv.tag, driver(code), secrets=secrets_dir(driver_conv, tmp_path),
                           read_only=True)
    assert (status, out, err) == (0, "EROFS\n", OWN_COPY_LINE)


def test_read_only_keys_refuse_writes_without_losing_data(driver_conv, docker_client, volume, tmp_path):
    secrets = secrets_dir(driver_conv, tmp_path, mode=0o644)
    mounts = {volume: {"bind": "/app/data", "mode": "rw"}}
    run(docker_client, driver_conv.tag, driver("print(1)"), secrets=secrets, volumes=mounts)
    before = volume_files(docker_client, volume)
    code = ("import errno\ntry:\n    f = open('/app/data/config.json', 'w'); f.write('{}'); f.close()\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    status, out, err = run(docker_client, driver_conv.tag, driver(code), secrets=secrets,
                           secrets_mode="ro", volumes=mounts, environment={"SCONIFY_LOG": "stderr"})
    assert status == 0 and out.strip() in ("EROFS", "EIO"), err
    assert "keys file" in err and "read-write" in err
    after = volume_files(docker_client, volume)
    assert after.pop(".sconify.lock", b"") == b""  # the commits' lock (empty), taken before the refusal
    assert after == before


# --- Node.js writes (libuv closes with a raw syscall) --------------------------------------------


def test_node_writes_read_back_as_in_the_original(node_image, docker_client, tmp_path):
    cmd = ["node", "/app/fidelity.js", "/app/data/fidelity", "/tmp/fidelity"]
    layout = with_app_script(node_image, "fidelity.js", NODE_WRITES, cmd, tmp_path)
    conv = converted_image("node-fidelity", layout, docker_client, tmp_path)
    try:
        status, expected, err = run(docker_client, conv.original)
        assert status == 0 and expected.count("hello world") == 2, err
        status, out, err = run(docker_client, conv.tag, secrets=secrets_dir(conv, tmp_path))
        assert status == 0, err
        assert out == expected
    finally:
        for tag in (conv.original, conv.tag):
            docker_client.images.remove(tag, force=True)


# --- sealed code roots: code planted by a derived image or a bind mount never runs -------------

PY_MARK = "import sys; print('PLANTED-{0}', open('/app/data/config.json').read().strip(), flush=True)\n"
NODE_MARK = "console.log('PLANTED-{0}', require('fs').readFileSync('/app/data/config.json', 'utf8'));\n"


def planted_pyc(source_mtime: int, source_size: int) -> bytes:
    """A pyc CPython takes for the embedded /app/service/config.py: its header says the mtime
    and size the shield's stat gives that file (the executable's mtime, its size)."""
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    code = compile(PY_MARK.format("pyc"), "/app/service/config.py", "exec")
    return bytes(_code_to_timestamp_pyc(code, source_mtime, source_size))


def plant(directory: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        (directory / name).write_bytes(data)
    return directory


CHANGED_SO = "/usr/lib/python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"


def python_plants(tmp: Path, config_mtime: int) -> Path:
    from sconify.demo.apps import PYTHON_SERVICE

    return plant(tmp / "python-plants", {
        "sitecustomize.py": PY_MARK.format("sitecustomize"),
        "usercustomize.py": PY_MARK.format("usercustomize"),
        "planted.pth": PY_MARK.format("pth").rstrip("\n"),
        "json.py": PY_MARK.format("json"),
        "config.cpython-311.pyc": planted_pyc(config_mtime, len(PYTHON_SERVICE["app/service/config.py"].encode())),
        "changed.so": Path(_ctypes.__file__).read_bytes(),  # over json's C accelerator: another object
        "Dockerfile": "ARG BASE\nFROM $BASE\n"
                      "COPY sitecustomize.py planted.pth /usr/lib/python3/dist-packages/\n"
                      "COPY planted.pth /usr/local/lib/python3.11/dist-packages/\n"
                      "COPY usercustomize.py /root/.local/lib/python3.11/site-packages/\n"
                      "COPY json.py /app/\n"
                      "COPY config.cpython-311.pyc /app/service/__pycache__/\n"
                      f"COPY changed.so {CHANGED_SO}\n",
    })


def node_plants(tmp: Path) -> Path:
    # debug's src/node.js tries require('supports-color') and requires './common': Node loads
    # an extension-less 'common' before common.js, and a supports-color wherever it finds one.
    module = NODE_MARK.format("supports-color") + "module.exports = {stdout: false, stderr: false};\n"
    return plant(tmp / "node-plants", {
        "supports-color/index.js": module,
        "global/index.js": NODE_MARK.format("global") + "module.exports = {stdout: false, stderr: false};\n",
        "common": NODE_MARK.format("common"),
        "Dockerfile": "ARG BASE\nFROM $BASE\n"
                      "COPY supports-color/ /app/node_modules/supports-color/\n"
                      "COPY global/ /node_modules/supports-color/\n"
                      "COPY common /app/node_modules/debug/src/common\n",
    })


def embedded_mtime(docker_client, conv) -> int:
    """What the converted image's shield says of /app/service/config.py's mtime (a run without
    keys: embedded code is served to any start of the measured executable)."""
    status, out, err = run(docker_client, conv.tag, ["python3", "-c", "import os; print(int(os.stat("
                                                     "'/app/service/config.py').st_mtime))"])
    assert status == 0, err
    assert int(out) >= 315532800, out  # 1980: a date, not 0
    return int(out)


@pytest.fixture
def derived(docker_client):
    """build(context, base) -> the tag of an image built FROM base with the context's
    Dockerfile (COPY only: the engine has no network); removed at the end."""
    tags: list[str] = []

    def build(context: Path, base: str) -> str:
        tag = f"sconify-rt-derived-{uuid.uuid4().hex[:8]}:latest"
        docker_client.images.build(path=str(context), tag=tag, buildargs={"BASE": base}, rm=True, forcerm=True,
                                   network_mode="none")
        tags.append(tag)
        return tag

    yield build
    for tag in tags:
        docker_client.images.remove(tag, force=True)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the planted pyc is made for CPython 3.11")
@pytest.mark.parametrize("kind", ["python", "node"])
def test_code_planted_by_a_derived_image_never_runs(kind, request, docker_client, derived, tmp_path):
    conv = request.getfixturevalue(f"{kind}_conv")
    context = python_plants(tmp_path, embedded_mtime(docker_client, conv)) if kind == "python" else node_plants(tmp_path)
    _, expected, _ = run(docker_client, conv.original)
    # The oracle: on the original image the plants run (Debian's own sitecustomize comes first
    # on sys.path; the pyc's header matches the original's source, of the package's date).
    _, out, err = run(docker_client, derived(context, conv.original))
    ran = set(re.findall(r"PLANTED-([\w-]+)", out + err))
    assert ran >= ({"pth", "usercustomize", "json", "pyc"} if kind == "python" else {"supports-color", "common"})
    status, out, err = run(docker_client, derived(context, conv.tag), secrets=secrets_dir(conv, tmp_path),
                           environment={"SCONIFY_LOG": "stderr"})  # the shield's refusal, in its own log
    assert status == 0, err
    assert out == expected and "PLANTED-" not in out + err
    if kind == "python":  # json falls back to its Python code: the changed object was not loaded
        assert f"{CHANGED_SO} on disk differs from the measured copy" in err


@pytest.mark.parametrize("kind", ["python", "node"])
def test_code_bind_mounted_over_a_code_root_never_runs(kind, request, docker_client, tmp_path):
    conv = request.getfixturevalue(f"{kind}_conv")
    if kind == "python":
        host = plant(tmp_path / "mounted", {"sitecustomize.py": PY_MARK.format("sitecustomize"),
                                            "planted.pth": PY_MARK.format("pth").rstrip("\n"),
                                            "json.py": PY_MARK.format("json")})
        mount = "/usr/lib/python3/dist-packages"
    else:
        host = plant(tmp_path / "mounted", {"index.js": NODE_MARK.format("mounted") + "module.exports = {};\n"})
        mount = "/app/node_modules/supports-color"
    volumes = {str(host): {"bind": mount, "mode": "ro"}}
    _, expected, _ = run(docker_client, conv.original)
    _, out, err = run(docker_client, conv.original, volumes=volumes)
    assert "PLANTED-" in out + err  # the oracle
    status, out, err = run(docker_client, conv.tag, secrets=secrets_dir(conv, tmp_path), volumes=volumes)
    assert status == 0, err
    assert out == expected and "PLANTED-" not in out + err


def pyc_written(docker_client, image: str, secrets: Path | None = None) -> list[str]:
    """The __pycache__ paths a run of the demo's imports adds to the container's filesystem."""
    mounts = {str(secrets): {"bind": SECRETS, "mode": "rw"}} if secrets else {}
    container = docker_client.containers.run(image, ["python3", "-c", "import service.config, service.store, json"],
                                             detach=True, network_disabled=True, volumes=mounts, working_dir="/app")
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
        return sorted(change["Path"] for change in container.diff() or [] if "__pycache__" in change["Path"])
    finally:
        container.remove(force=True)


def test_the_service_writes_no_bytecode_under_a_code_root(python_conv, docker_client, tmp_path):
    # CPython compiles the measured sources in memory: its mkdir of __pycache__ under a code
    # root fails with EROFS, which it ignores. The original writes its pycs there.
    assert "/app/service/__pycache__" in pyc_written(docker_client, python_conv.original)
    assert pyc_written(docker_client, python_conv.tag, secrets_dir(python_conv, tmp_path)) == []


# --- the policy: keys only for the recorded command and environment -------------------------------

READ_CONFIG = "print(open('/app/data/config.json').read())"
OTHER_SCRIPT = "import sys\nprint(open('/app/data/config.json').read())\n"
INJECTED_JSON = "print(open('/app/data/config.json').read())\nraise SystemExit(0)\n"
NODE_READ = "console.log(require('fs').readFileSync('/app/data/config.json', 'utf8'))"


def tampered_config(conv: Converted) -> bytes:
    """The image's runtime.json with no volumes and a policy that grants `python3 -c`."""
    fs = RootFS.from_image(read_image(f"docker-daemon:{conv.tag}"))
    doc = json.loads(fs.read(".sconify/runtime.json"))
    doc["volumes"] = []
    doc["policy"]["command"] = ["python3", "-c"]
    doc["policy"]["allow_args"] = True
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def changed_executable(conv: Converted) -> bytes:
    """The measured executable with one byte changed that no segment loads (in .gnu_debuglink):
    it still runs and serves its embedfs, MRENCLAVE is the same, its SHA-256 is not."""
    import lief

    fs = RootFS.from_image(read_image(f"docker-daemon:{conv.tag}"))
    exe = bytearray(fs.read(conv.executable.lstrip("/")))
    section = lief.parse(list(exe)).get_section(".gnu_debuglink")
    exe[section.offset + section.size - 1] ^= 1
    return bytes(exe)


# kind, command, environment, files mounted at /inj, derived image files (path -> builder), why
HOSTILE = {
    "python -c": ("python", ["python3", "-c", READ_CONFIG], {}, {}, {}, "argument 2 of the command is '-c'"),
    "python -m other": ("python", ["python3", "-m", "json.tool", "/app/data/config.json"], {}, {}, {},
                        "argument 2 of the command is '-m'"),
    "python other.py": ("python", ["python3", "/inj/other.py"], {}, {"other.py": OTHER_SCRIPT}, {},
                        "argument 2 of the command is '/inj/other.py'"),
    "python -i PYTHONSTARTUP": ("python", ["python3", "-i"], {"PYTHONSTARTUP": "/inj/startup.py"},
                                {"startup.py": OTHER_SCRIPT}, {}, "the environment sets PYTHONSTARTUP,"),
    "PYTHONPATH json.py": ("python", None, {"PYTHONPATH": "/inj"}, {"json.py": INJECTED_JSON}, {},
                           "the environment sets PYTHONPATH,"),
    "node -e": ("node", ["node", "-e", NODE_READ], {}, {}, {}, "argument 2 of the command is '-e'"),
    "NODE_OPTIONS --require": ("node", None, {"NODE_OPTIONS": "--require /inj/x.js"},
                               {"x.js": NODE_READ + "; process.exit(0)\n"}, {}, "the environment sets NODE_OPTIONS,"),
    "runtime.json edited": ("python", ["python3", "-c", READ_CONFIG], {}, {},
                            {"/.sconify/runtime.json": tampered_config}, "runtime config /.sconify/runtime.json has SHA-256"),
    "shield preloaded by hand into a changed executable": (
        "python", ["-c", READ_CONFIG], {"SCONIFY_KEYS": f"{SECRETS}/keys.json"}, {},
        {"/usr/bin/python3.11": changed_executable}, "no keys were granted to this process"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_run(case, request, docker_client, tmp_path):
    kind, command, environment, injected, derived, why = HOSTILE[case]
    conv = request.getfixturevalue(f"{kind}_conv")
    image, extra = conv.tag, {}
    if derived:
        image = f"sconify-rt-derived-{uuid.uuid4().hex[:8]}:1"
        derived_image(docker_client, conv.tag, image,
                      {path: (build(conv), 0o755) for path, build in derived.items()})
    if case.startswith("shield preloaded"):
        extra["entrypoint"] = ["/usr/bin/python3.11"]
    mounts = {}
    if injected:
        inj = tmp_path / "inj"
        inj.mkdir()
        for name, text in injected.items():
            (inj / name).write_text(text)
        mounts[str(inj)] = {"bind": "/inj", "mode": "ro"}
    try:
        status, out, err = run(docker_client, image, command, secrets=secrets_dir(conv, tmp_path), volumes=mounts,
                               environment={**environment, "SCONIFY_LOG": "stderr"}, stdin_open=True, **extra)
    finally:
        if derived:
            docker_client.images.remove(image, force=True)
    assert status != 0, (out, err)
    assert PLAINTEXT not in out and PLAINTEXT not in err
    explained = [line for line in err.splitlines() if why in line]
    assert len(explained) == 1 and explained[0].startswith(("sconify-run: ", "sconify-shield: ")), err


def test_docker_exec_gets_embedded_code_but_no_keys(python_conv, docker_client, tmp_path):
    secrets = secrets_dir(python_conv, tmp_path)
    container = docker_client.containers.run(python_conv.tag, ["python3", "-c", "import time; time.sleep(120)"],
                                             detach=True, network_disabled=True,
                                             volumes={str(secrets): {"bind": SECRETS, "mode": "rw"}})
    try:
        code, output = container.exec_run(["python3", "-c", "import json; print(1)"], demux=True)
        assert code == 0 and output[0] == b"1\n", output
        code, output = container.exec_run(
            ["python3", "-c", "import errno\ntry: open('/app/data/config.json').read()\n"
                              "except OSError as e: print(errno.errorcode[e.errno])"],
            environment={"SCONIFY_KEYS": f"{SECRETS}/keys.json", "SCONIFY_LOG": "stderr"}, demux=True)
        stdout, stderr = output
        assert code == 0 and stdout == b"EACCES\n", output
        assert stderr.decode().count("\n") == 1 and "no keys were granted to this process" in stderr.decode()
    finally:
        container.remove(force=True)


# --- the auditor: runtime.json and the session against what the manifest binds -----------------


def verify_json(image: str, conv: Converted, *extra: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-m", "sconify", "verify", f"docker-daemon:{image}", "--manifest",
         str(conv.out / "manifest.json"), "--json", *extra],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_verify_checks_the_policy_against_the_session(driver_conv, tmp_path):
    session = (driver_conv.out / "session.yaml").read_text()
    assert "command: python3 /app/run_code.py @@1" not in session  # the measured executable, absolute
    assert "/usr/bin/python3.11 /app/run_code.py @@1" in session
    status, checks = verify_json(driver_conv.tag, driver_conv, "--session", str(driver_conv.out / "session.yaml"))
    assert status == 0 and checks["runtime policy"]["ok"], checks["runtime policy"]
    edited = tmp_path / "session.yaml"
    edited.write_text(session.replace("/app/run_code.py @@1", "/app/other.py @@1"))
    status, checks = verify_json(driver_conv.tag, driver_conv, "--session", str(edited))
    assert status == 1 and not checks["runtime policy"]["ok"]
    assert "command" in checks["runtime policy"]["detail"]
    edited.write_text(session.replace("environment:", "environment:\n    PYTHONPATH: /inj", 1))
    status, checks = verify_json(driver_conv.tag, driver_conv, "--session", str(edited))
    assert status == 1 and "PYTHONPATH" in checks["runtime policy"]["detail"]


def test_verify_fails_on_a_derived_image_with_another_runtime_config(python_conv, docker_client):
    image = f"sconify-rt-derived-{uuid.uuid4().hex[:8]}:1"
    derived_image(docker_client, python_conv.tag, image,
                  {"/.sconify/runtime.json": (tampered_config(python_conv), 0o644)})
    try:
        status, checks = verify_json(image, python_conv)
    finally:
        docker_client.images.remove(image, force=True)
    assert status == 1
    assert not checks["runtime files"]["ok"] and "runtime.json" in checks["runtime files"]["detail"]


def test_child_process_of_the_granted_node_service_inherits_the_grant(conversions, docker_client, tmp_path):
    conv = conversions("node-driver")
    child = "process.stdout.write(require('fs').readFileSync('/app/data/config.json', 'utf8'))"
    code = ("const out = require('child_process').execFileSync(process.execPath, ['-e', %s]);"
            "console.log('child read', JSON.parse(out).units);" % json.dumps(child))
    status, out, err = run(docker_client, conv.tag, ["node", NODE_DRIVER, code], secrets=secrets_dir(conv, tmp_path))
    assert status == 0 and out == "child read celsius\n", err
