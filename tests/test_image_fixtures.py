"""The real Python and Node images (built from Debian packages) through every transport,
checked by the oracles: skopeo, umoci and the Docker engine."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image

FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")
SMOKE = {
    "python": ["python3", "-c", "import json, sqlite3; print('ok')"],
    "node": ["node", "-e", "require('assert'); console.log('ok')"],
}


def target(transport: str, directory: Path, name: str) -> str:
    if transport == "oci":
        return f"oci:{directory / name}:latest"
    if transport == "docker-archive":
        return f"docker-archive:{directory / name}.tar:sconify-test/{name}:latest"
    return f"oci-archive:{directory / name}.tar:latest"


@pytest.fixture(scope="module", params=["python", "node"])
def fixture_image(request) -> tuple[str, str]:
    """(name, reference) of one fixture image."""
    layout = request.getfixturevalue(f"{request.param}_image")
    return request.param, f"oci:{layout}:latest"


@pytest.fixture(scope="module")
def copies(fixture_image, tmp_path_factory) -> dict[str, str]:
    """The fixture image written once to each file transport (reference per transport)."""
    name, source = fixture_image
    directory = tmp_path_factory.mktemp(f"{name}-copies")
    image = read_image(source)
    return {t: write_image(image, target(t, directory, f"{name}-{t}")).reference for t in FILE_TRANSPORTS}


@pytest.mark.slow
@pytest.mark.parametrize("destination", FILE_TRANSPORTS)
@pytest.mark.parametrize("origin", FILE_TRANSPORTS)
def test_round_trip_through_every_transport_pair(fixture_image, copies, tmp_path, origin, destination):
    original = read_image(fixture_image[1])
    result = write_image(read_image(copies[origin]), target(destination, tmp_path, "out"))
    again = read_image(result.reference)
    assert again.config_bytes == original.config_bytes
    assert again.diff_ids == original.diff_ids
    # gzip is accepted everywhere, so blobs travel byte for byte (each write checked digest and diff_id)
    assert result.layer_digests == tuple(layer.digest for layer in original.layers)


@pytest.mark.slow
def test_skopeo_inspects_our_oci_and_archive_outputs(fixture_image, copies):
    original = read_image(fixture_image[1])
    for transport in FILE_TRANSPORTS:
        out = subprocess.run(["skopeo", "inspect", "--raw" if transport != "docker-archive" else "--config",
                              copies[transport]], capture_output=True, text=True, check=True).stdout
        if transport == "docker-archive":
            assert json.loads(out)["rootfs"]["diff_ids"] == list(original.diff_ids)
        else:
            assert [l["digest"] for l in json.loads(out)["layers"]] == [l.digest for l in original.layers]


@pytest.mark.slow
def test_umoci_unpacks_our_oci_output_to_the_tree_rootfs_describes(fixture_image, copies, tmp_path):
    layout_ref = copies["oci"]
    layout = layout_ref.removeprefix("oci:").rpartition(":")[0]
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:latest", str(bundle)],
                   capture_output=True, check=True)
    root = bundle / "rootfs"
    unpacked = {str(p.relative_to(root)) for p in root.rglob("*")}
    fs = RootFS.from_image(read_image(layout_ref))
    assert unpacked == set(fs.entries) - {""}
    regular = [path for path, entry in fs.entries.items() if entry.is_regular]
    for entry, stream in fs.iter_files(regular):
        ours = hashlib.sha256(stream.read()).hexdigest()
        assert hashlib.sha256((root / entry.path).read_bytes()).hexdigest() == ours, entry.path
    for path, entry in fs.entries.items():
        if entry.kind == "symlink":
            assert os.readlink(root / path) == entry.linkname


@pytest.mark.slow
def test_writing_the_same_image_twice_gives_identical_blobs(fixture_image, tmp_path):
    image = read_image(fixture_image[1])
    digests = []
    for name in ("first", "second"):
        result = write_image(image, f"oci:{tmp_path / name}", compression="zstd")
        blobs = tmp_path / name / "blobs" / "sha256"
        digests.append(sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in blobs.iterdir()))
        assert digests[-1] == sorted(p.name for p in blobs.iterdir())
        assert {d.removeprefix("sha256:") for d in result.layer_digests} <= set(digests[-1])
    assert digests[0] == digests[1]
    archives = [write_image(image, f"docker-archive:{tmp_path / n}.tar:x:y", compression="none") for n in "ab"]
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert archives[0].manifest_digest == archives[1].manifest_digest


@pytest.mark.slow
@pytest.mark.docker
def test_docker_loads_and_runs_our_docker_archive_and_daemon_outputs(fixture_image, copies, docker_client, tmp_path):
    name, source = fixture_image
    archive_path = copies["docker-archive"].removeprefix("docker-archive:").partition(":")[0]
    daemon_ref = f"sconify-test/{name}-daemon:latest"
    loaded = None
    try:
        with open(archive_path, "rb") as handle:
            loaded = docker_client.images.load(handle)[0]
        output = docker_client.containers.run(loaded.id, SMOKE[name], remove=True, network_disabled=True)
        assert output.decode().strip() == "ok"
        result = write_image(read_image(source), f"docker-daemon:{daemon_ref}")
        assert docker_client.images.get(daemon_ref).id == result.config_digest
        output = docker_client.containers.run(daemon_ref, SMOKE[name], remove=True, network_disabled=True)
        assert output.decode().strip() == "ok"
        back = read_image(f"docker-daemon:{daemon_ref}")  # docker save, streamed to a temp file
        assert back.diff_ids == read_image(source).diff_ids
        write_image(back, f"oci:{tmp_path / 'from-daemon'}:latest")
        assert read_image(f"oci:{tmp_path / 'from-daemon'}:latest").config_bytes == back.config_bytes
    finally:  # our tags, not the image's id: the engine may hold the same image under other tags
        for ref in ([f"sconify-test/{name}:latest"] if loaded else []) + [daemon_ref]:
            try:
                docker_client.images.remove(ref, force=True)
            except Exception:  # not loaded: nothing to remove
                pass
