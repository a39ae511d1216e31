"""``docker-daemon:NAME:TAG``: images in the local Docker engine, via the Docker SDK.

Reading streams ``docker save`` into a temp file on disk (never into memory) and reads that
as a docker archive; writing streams a docker archive from a temp file into ``docker load``.
"""

from __future__ import annotations

import contextlib
import tempfile

import docker
import docker.errors
import requests

from sconify.errors import EnvironmentProblem, ImageError
from sconify.image.archive import docker_result, read_docker_archive, write_docker_archive_to
from sconify.image.model import BeforeCommit, Image, WriteResult

SAVE_CHUNK = 1 << 20
ENGINE_TIMEOUT = 600  # seconds; docker load on vfs storage is slow for big images


def docker_client() -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST; EnvironmentProblem when it is not running."""
    try:
        client = docker.from_env(timeout=ENGINE_TIMEOUT)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise EnvironmentProblem(
            f"the Docker engine is not reachable ({' '.join(str(exc).split())[:160]}); "
            "start it or set DOCKER_HOST to its socket"
        ) from None
    return client


def read_docker_daemon(name: str, tag: str) -> Image:
    """Save ``name:tag`` from the engine into a private temp archive and open it."""
    client = docker_client()
    ref = f"{name}:{tag}"
    spool = tempfile.NamedTemporaryFile(prefix="sconify-save-", suffix=".tar")
    try:
        for chunk in client.api.get_image(ref, chunk_size=SAVE_CHUNK):
            spool.write(chunk)
        spool.flush()
    except docker.errors.NotFound:
        spool.close()
        raise ImageError(f"docker-daemon:{ref}: no such image in the Docker engine; check `docker images`") from None
    except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
        spool.close()
        raise ImageError(f"docker-daemon:{ref}: docker save failed ({' '.join(str(exc).split())[:200]}); check the engine") from None
    finally:
        client.close()
    image = read_docker_archive(spool.name, ref)
    # The layers read from the temp file; keep it alive as long as they are.
    return _holding(image, spool, f"docker-daemon:{ref}")


def _holding(image: Image, keep: object, source: str) -> Image:
    from dataclasses import replace

    from sconify.image.model import Layer, slice_opener

    def hold(layer: Layer) -> Layer:
        opener = layer.opener
        where = layer.file_range
        if where is not None:
            # Still a byte range of the spool file: read in place, copied kernel-side.
            held = slice_opener(where.path, where.offset, where.size, keep=keep)
        else:
            def held():
                _ = keep
                return opener()

        position = layer.source.partition(": layer ")[2]
        return replace(layer, opener=held, source=f"{source}: layer {position}")

    return replace(image, layers=tuple(hold(layer) for layer in image.layers), source=source)


def write_docker_daemon(image: Image, name: str, tag: str, before_commit: BeforeCommit | None = None
                        ) -> WriteResult:
    """``docker load`` the image as ``name:tag``; the tag appears only if the load succeeds.
    ``before_commit`` runs before the load."""
    client = docker_client()
    ref = f"{name}:{tag}"
    result = docker_result(f"docker-daemon:{ref}", image)
    with contextlib.closing(client), tempfile.TemporaryFile(prefix="sconify-load-", suffix=".tar") as spool:
        write_docker_archive_to(image, spool, ref)
        spool.flush()
        spool.seek(0)
        if before_commit is not None:
            before_commit(result)
        try:
            client.images.load(spool)
        except (docker.errors.APIError, docker.errors.ImageLoadError,
                requests.exceptions.RequestException) as exc:
            raise ImageError(
                f"docker-daemon:{ref}: docker load refused the image ({' '.join(str(exc).split())[:200]}); "
                "check the image or the engine"
            ) from None
    return result
