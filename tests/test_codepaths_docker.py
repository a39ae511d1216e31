"""The real-world shapes of tests/test_codepaths.py, converted without --binary and run with the
runtime under the Docker engine: each prints what the original prints, and every module file
the original loaded is in the manifest's embedfs (measured).

The images: a venv at /opt/venv with C-extension wheels (markupsafe, PyYAML, pyzmq with its
auditwheel ``pyzmq.libs``), the app package in /srv installed editable and run as ``python -m
app`` or through its console script, a shell-form CMD; Node behind the official
docker-entrypoint.sh with node_modules in a parent directory and a native addon.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import replace

import pytest

from sconify.image.mutate import with_config
from sconify.image.transports import write_image
from sconify.outputs.manifest import Manifest
from test_codepaths import NODE_SERVICE, VENV_M_APP, VENV_PATH, config, node_shapes, py_shapes  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.slow]

SHAPES = {
    "venv -m app in /srv": ("py", VENV_M_APP),
    "console script": ("py", config(["/opt/venv/bin/app-cli"], workdir="/srv")),
    "shell form": ("py", config(["/bin/sh", "-c", "cd /srv && exec python -m app"], env={"PATH": VENV_PATH})),
    "node behind docker-entrypoint.sh": ("node", NODE_SERVICE),
}


def with_service(fs, service_config: dict):
    image = fs.image
    inner = {**(image.config.get("config") or {}), **service_config["config"]}
    return with_config(image, {**image.config, "config": inner})


def run(docker_client, tag: str) -> str:
    container = docker_client.containers.run(tag, detach=True, network_disabled=True)
    try:
        status = container.wait(timeout=120)["StatusCode"]
        out, err = container.logs(stderr=False).decode(), container.logs(stdout=False).decode()
    finally:
        container.remove(force=True)
    assert status == 0, err[-2000:]
    return out.strip().splitlines()[-1]


@pytest.mark.parametrize("shape", list(SHAPES))
def test_shape_converts_without_binary_and_runs_like_the_original(shape, request, docker_client, tmp_path):
    kind, service_config = SHAPES[shape]
    fs = request.getfixturevalue("py_shapes" if kind == "py" else "node_shapes")
    name = f"sconify-shape-{uuid.uuid4().hex[:8]}"
    layout = f"oci:{tmp_path / 'input'}:in"
    write_image(with_service(fs, service_config), layout)
    write_image(with_service(fs, service_config), f"docker-daemon:{name}:original")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sconify", "image", "--from", layout, "--to", f"docker-daemon:{name}:conf",
             "--out-dir", str(tmp_path / "out"), "--strict", "--json"],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if "--strict" in result.stderr and "looks like code" in result.stderr:
            # The shape images carry deliberate strays (/opt/orphan, the demo's /app): not --strict.
            assert "is not measured" in result.stderr
            result = subprocess.run(
                [sys.executable, "-m", "sconify", "image", "--from", layout, "--to", f"docker-daemon:{name}:conf",
                 "--out-dir", str(tmp_path / "out"), "--json"],
                capture_output=True, text=True, timeout=600, check=False,
            )
            assert "sconify: warning:" in result.stderr
        assert result.returncode == 0, result.stderr
        manifest = Manifest.read(tmp_path / "out" / "manifest.json")
        expected, got = run(docker_client, f"{name}:original"), run(docker_client, f"{name}:conf")
        assert json.loads(got) == json.loads(expected)
        report = json.loads(expected)
        loaded = report["files"]
        embedded = set(manifest.embedfs.files)
        resolved = {path: fs.resolve(path) for path in loaded}
        missing = [path for path in loaded if path not in embedded and "/" + resolved[path] not in embedded]
        assert not missing, f"loaded by the original but not measured: {missing}"
        assert manifest.executable.path == ("/usr/bin/python3.11" if kind == "py" else "/usr/bin/node")
        assert manifest.executable.why and manifest.executable.code_roots
    finally:
        for tag in (f"{name}:original", f"{name}:conf"):
            try:
                docker_client.images.remove(tag, force=True)
            except Exception:  # never created
                pass


def test_changed_entrypoint_script_is_refused(node_shapes, docker_client, tmp_path):
    """The entrypoint script runs from disk (the kernel and sh read it): the launcher checks it
    against its measured copy before anything starts."""
    name = f"sconify-shape-{uuid.uuid4().hex[:8]}"
    layout = f"oci:{tmp_path / 'input'}:in"
    write_image(with_service(node_shapes, NODE_SERVICE), layout)
    result = subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", layout, "--to", f"docker-daemon:{name}:conf",
         "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    changed = tmp_path / "docker-entrypoint.sh"
    changed.write_bytes(node_shapes.read("usr/local/bin/docker-entrypoint.sh").replace(b"set -e", b"set -e\necho injected"))
    changed.chmod(0o755)
    try:
        container = docker_client.containers.run(
            f"{name}:conf", detach=True, network_disabled=True,
            volumes={str(changed): {"bind": "/usr/local/bin/docker-entrypoint.sh", "mode": "ro"}})
        status = container.wait(timeout=120)["StatusCode"]
        err = container.logs(stdout=False).decode()
        out = container.logs(stderr=False).decode()
        container.remove(force=True)
        assert status == 2 and "injected" not in out
        assert "/usr/local/bin/docker-entrypoint.sh, a script the service starts through, is not its measured copy" in err
    finally:
        docker_client.images.remove(f"{name}:conf", force=True)
