"""Images in the Docker engine for the tests: loaded from a reference, derived with `docker
build`, converted with `sconify image --to docker-daemon:`.

``EngineImages`` (conftest's session fixture ``engine_images``) makes each image once per test
session, keyed by everything it is made from: a loaded image by its reference, a derived one by
its base, files and command, a conversion by its source and options. Several test files then share
the demo image loaded once, the demo plus a measured script built once, a conversion made once.
The images are never changed: a test that needs another image derives one of its own, and a test
copies a conversion's keys before a run records tags in them (``secrets_dir``). The session
removes its tags at the end, and only those: the engine is shared.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from sconify.image.transports import read_image, write_image

Files = dict[str, tuple[bytes, int]]  # image path -> (content, mode)


@dataclass
class Converted:
    original: str  # docker tag of the input image
    tag: str  # docker tag of the converted image
    out: Path  # manifest.json, session.yaml, keys.json
    executable: str


def convert_into_engine(source: str, tag: str, out: Path, *extra: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", source, "--to", f"docker-daemon:{tag}",
         "--out-dir", str(out), *extra],
        capture_output=True, text=True, timeout=900, check=False,
    )
    assert result.returncode == 0, result.stderr


def load_image(docker_client, image: str | os.PathLike, tag: str) -> None:
    """Load an image reference (``oci:``, ``oci-archive:``, ``docker-archive:``...) or a
    docker-archive tar path into the engine under ``tag``."""
    if isinstance(image, os.PathLike) or str(image).startswith("/"):
        with Path(image).open("rb") as handle:
            image_id = docker_client.images.load(handle)[0].id
    else:
        with tempfile.TemporaryDirectory(prefix="sconify-docker-") as tmp:
            archive = Path(tmp) / "image.tar"
            write_image(read_image(str(image)), f"docker-archive:{archive}")
            with archive.open("rb") as handle:
                image_id = docker_client.images.load(handle)[0].id
    repository, _, version = tag.partition(":")
    docker_client.images.get(image_id).tag(repository, version)


def derived_image(docker_client, base: str, tag: str, files: Files, cmd: list[str] | None = None) -> None:
    """docker build: FROM base, COPY each image path -> (content, mode), then CMD."""
    context = io.BytesIO()
    lines = [f"FROM {base}"]
    with tarfile.open(fileobj=context, mode="w") as tar:
        for number, (path, (data, mode)) in enumerate(sorted(files.items())):
            info = tarfile.TarInfo(f"f{number}")
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
            lines.append(f"COPY f{number} {path}")
        if cmd is not None:
            lines.append(f"CMD {json.dumps(cmd)}")
        dockerfile = ("\n".join(lines) + "\n").encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)


class EngineImages:
    """Images made once per session (see the module's docstring); ``remove()`` untags them all."""

    def __init__(self, docker_client, root: Path):
        self.client, self.root = docker_client, root
        self.name = f"sconify-test-{uuid.uuid4().hex[:12]}"
        self.made: dict[tuple, str | Converted] = {}

    def _new_tag(self, kind: str) -> str:
        return f"{self.name}:{kind}-{len(self.made)}"

    def loaded(self, image: str | os.PathLike) -> str:
        """The tag of ``image`` (a reference or a docker-archive path) loaded into the engine;
        loaded again if someone removed the image by its id (the engine is shared)."""
        import docker

        key = ("loaded", str(image))
        if key not in self.made:
            self.made[key] = self._new_tag("loaded")
        else:
            try:
                self.client.images.get(self.made[key])
                return self.made[key]
            except docker.errors.ImageNotFound:
                pass
        load_image(self.client, image, self.made[key])
        return self.made[key]

    def derived(self, base: str, files: Files, cmd: list[str] | None = None) -> str:
        """The tag of ``base`` with ``files`` added and ``cmd`` as its command (`docker build`)."""
        key = ("derived", base, tuple((path, hashlib.sha256(data).hexdigest(), mode)
                                      for path, (data, mode) in sorted(files.items())), tuple(cmd or ()))
        if key not in self.made:
            tag = self._new_tag("derived")
            derived_image(self.client, base, tag, files, cmd)
            self.made[key] = tag
        return self.made[key]

    def converted(self, original: str, *options: str, source: str | None = None) -> Converted:
        """The engine's image ``original`` converted with ``options`` (read from ``source``,
        by default from the engine itself)."""
        source = source or f"docker-daemon:{original}"
        key = ("converted", source, options)
        if key not in self.made:
            tag = self._new_tag("conf")
            out = self.root / tag.partition(":")[2]
            convert_into_engine(source, tag, out, *options)
            manifest = json.loads((out / "manifest.json").read_text())
            self.made[key] = Converted(original, tag, out, manifest["executable"]["path"])
        return self.made[key]

    def remove(self) -> None:
        import docker

        for made in reversed(list(self.made.values())):
            try:
                self.client.images.remove(made.tag if isinstance(made, Converted) else made, force=True)
            except docker.errors.APIError:
                pass  # already gone
