"""Shared fixtures: real images built from Debian packages, and a real Docker engine.

``python_image`` / ``node_image``: OCI layout directories (tag ``latest``) of the demo images
from ``sconify.debimage``, built once into the cache (``$SCONIFY_CACHE`` or
``~/.cache/sconify``) and reused while the pins and the builder are unchanged.

``docker_client``: a docker SDK client for the engine at ``$DOCKER_HOST``; if that is unset the
engine is started with ``../shared/tools/start-dockerd``. A missing engine fails the test.

``run_in_docker(image, cmd)``: loads an image (an ``oci:``/``oci-archive:``/``docker-archive:``
reference, or a docker-archive tar path) into the engine once and returns the stdout of
``cmd`` run in a fresh, network-less container.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import pytest

from sconify import debimage

REPO_ROOT = Path(__file__).resolve().parent.parent
START_DOCKERD = REPO_ROOT.parent / "shared" / "tools" / "start-dockerd"

RunInDocker = Callable[..., str]


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
def run_in_docker(docker_client) -> Iterator[RunInDocker]:
    """``run_in_docker(image, cmd, **run_kwargs) -> stdout`` in a fresh container without network."""
    from sconify.image.transports import read_image, write_image

    loaded: dict[str, str] = {}

    def load(image: str | os.PathLike) -> str:
        key = str(image)
        if key not in loaded:
            if isinstance(image, os.PathLike) or key.startswith("/"):
                archive_path = Path(image)
                with archive_path.open("rb") as handle:
                    images = docker_client.images.load(handle)
                loaded[key] = images[0].id
            else:
                with tempfile.TemporaryDirectory(prefix="sconify-docker-") as tmp:
                    archive = Path(tmp) / "image.tar"
                    write_image(read_image(key), f"docker-archive:{archive}")
                    with archive.open("rb") as handle:
                        images = docker_client.images.load(handle)
                loaded[key] = images[0].id
        return loaded[key]

    def run(image: str | os.PathLike, cmd: list[str] | str | None = None, **kwargs) -> str:
        output = docker_client.containers.run(
            load(image), cmd, remove=True, network_disabled=True, stdout=True, stderr=False, **kwargs
        )
        return output.decode()

    yield run
    for image_id in loaded.values():
        try:
            docker_client.images.remove(image_id, force=True)
        except Exception:  # already removed by a test; nothing to clean up
            pass
