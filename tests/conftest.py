"""Shared fixtures: real images built from Debian packages, and a real Docker engine.

``python_image`` / ``node_image``: OCI layout directories (tag ``latest``) of the demo images
from ``sconify.demo.debimage``, built once into the cache (``$SCONIFY_CACHE`` or
``~/.cache/sconify``) and reused while the pins and the builder are unchanged.

``docker_client``: a docker SDK client for the engine at ``$DOCKER_HOST``; if that is unset the
engine is started with ``../shared/tools/start-dockerd``. A missing engine fails the test.

``engine_images``: images in the engine made once per session and shared by the test files
(tests/engine_images.py): a reference loaded, an image derived with `docker build`, a conversion.

``run_in_docker(image, cmd)``: loads an image (an ``oci:``/``oci-archive:``/``docker-archive:``
reference, or a docker-archive tar path) into the engine once per session, under a tag of its
own, and returns the stdout of ``cmd`` run in a fresh, network-less container.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from engine_images import EngineImages
from sconify.demo import debimage

REPO_ROOT = Path(__file__).resolve().parent.parent
START_DOCKERD = REPO_ROOT.parent / "shared" / "tools" / "start-dockerd"

RunInDocker = Callable[..., str]
RUNTIME_DIR = REPO_ROOT / "runtime"


def runtime_tool(name: str) -> Path:
    """runtime/build/tools/NAME, a test driver of the C runtime, built by ``make -C runtime tools``."""
    result = subprocess.run(["make", "-C", str(RUNTIME_DIR), "tools"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"make -C runtime tools failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    tool = RUNTIME_DIR / "build" / "tools" / name
    assert tool.is_file()
    return tool


@pytest.fixture(scope="session")
def python_image() -> Path:
    """OCI layout of the Python demo image (Debian python3 closure + /app), tag ``latest``."""
    return debimage.build_image("python")


@pytest.fixture(scope="session")
def node_image() -> Path:
    """OCI layout of the Node.js demo image (Debian nodejs closure + /app), tag ``latest``."""
    return debimage.build_image("node")


def start_docker_engine() -> str:
    """Run ``start-dockerd`` and return the DOCKER_HOST it exports."""
    if not START_DOCKERD.is_file():
        pytest.fail(f"DOCKER_HOST is unset and {START_DOCKERD} does not exist; start a Docker engine and export DOCKER_HOST")
    result = subprocess.run([str(START_DOCKERD)], capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"DOCKER_HOST=(\S+)", result.stdout)
    if result.returncode != 0 or not match:
        pytest.fail(f"{START_DOCKERD} could not start the Docker engine: {result.stderr.strip()[-500:]}")
    return match.group(1)


@pytest.fixture(scope="session")
def docker_client() -> Iterator["docker.DockerClient"]:  # noqa: F821
    """A docker SDK client for a running engine (started if DOCKER_HOST is unset)."""
    import docker

    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("DOCKER_HOST"):
            patch.setenv("DOCKER_HOST", start_docker_engine())
        try:
            client = docker.from_env(timeout=300)
            client.ping()
        except docker.errors.DockerException as exc:
            pytest.fail(
                f"cannot reach the Docker engine at {os.environ['DOCKER_HOST']} ({exc}); "
                f"run `eval \"$({START_DOCKERD})\"` and rerun"
            )
        yield client
        client.close()


@pytest.fixture(scope="session")
def engine_images(docker_client, tmp_path_factory) -> Iterator[EngineImages]:
    """Images loaded, derived and converted once per session, shared by the test files
    (tests/engine_images.py); their tags are removed at the end."""
    images = EngineImages(docker_client, tmp_path_factory.mktemp("engine-images"))
    yield images
    images.remove()


@pytest.fixture(scope="session")
def run_in_docker(docker_client, engine_images) -> RunInDocker:
    """``run_in_docker(image, cmd, **run_kwargs) -> stdout`` in a fresh container without network;
    each image is loaded once per session (``engine_images.loaded``)."""

    def run(image: str | os.PathLike, cmd: list[str] | str | None = None, **kwargs) -> str:
        output = docker_client.containers.run(
            engine_images.loaded(image), cmd, remove=True, network_disabled=True, stdout=True, stderr=False, **kwargs
        )
        return output.decode()

    return run
