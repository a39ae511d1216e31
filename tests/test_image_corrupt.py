"""Corrupt or missing input gives one line naming the problem, exit code 2, and no output."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import threading
from pathlib import Path

import pytest

from sconify.cli.main import run
from sconify.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EnvironmentProblem, ImageError
from sconify.image import layers as L
from sconify.image.layerread import BackgroundTar
from sconify.image.model import Image, Layer, canonical_json, slice_opener
from sconify.image.rootfs import RootFS
from sconify.image.transports import write_image


def good_layout(tmp_path: Path) -> Path:
    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("etc/motd")
        data = b"hello\n" * 1000
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = Layer.from_tar_file(tar_path, "gzip")
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    layout = tmp_path / "in"
    write_image(Image(canonical_json(config), (layer,)), f"oci:{layout}:latest")
    return layout


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.partition(":")[2]


def put_blob(layout: Path, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(layout, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def manifest_of(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_bytes())
    return json.loads(blob(layout, index["manifests"][0]["digest"]).read_bytes())


def replace_manifest(layout: Path, manifest: dict) -> None:
    descriptor = put_blob(layout, canonical_json(manifest))
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"][0].update(descriptor)
    (layout / "index.json").write_bytes(canonical_json(index))


def replace_config(layout: Path, config_bytes: bytes) -> None:
    manifest = manifest_of(layout)
    manifest["config"].update(put_blob(layout, config_bytes))
    replace_manifest(layout, manifest)


def flip_layer_byte(layout: Path) -> None:
    path = blob(layout, manifest_of(layout)["layers"][0]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def wrong_diff_id(layout: Path) -> None:
    config = json.loads(blob(layout, manifest_of(layout)["config"]["digest"]).read_bytes())
    config["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64]
    replace_config(layout, canonical_json(config))


def truncate_layer(layout: Path) -> None:
    path = blob(layout, manifest_of(layout)["layers"][0]["digest"])
    path.write_bytes(path.read_bytes()[:-10])


def remove_layer(layout: Path) -> None:
    blob(layout, manifest_of(layout)["layers"][0]["digest"]).unlink()


def unknown_media_type(layout: Path) -> None:
    manifest = manifest_of(layout)
    manifest["layers"][0]["mediaType"] = "application/vnd.example.layer.v1.squashfs"
    replace_manifest(layout, manifest)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


CORRUPTIONS = {
    "wrong digest": (flip_layer_byte, "has digest sha256:[0-9a-f]+, expected"),
    "wrong diff_id": (wrong_diff_id, r"\(diff_id\) has digest .* expected sha256:0000"),
    "truncated blob": (truncate_layer, r"has \d+ bytes, expected \d+; the blob is truncated"),
    "missing blob": (remove_layer, "is missing"),
    "bad JSON": (lambda layout: replace_config(layout, b'{"rootfs": '), "config.* is not valid JSON"),
    "bad index JSON": (lambda layout: (layout / "index.json").write_bytes(b"[1,"), "index.json .* is not valid JSON"),
    "unknown media type": (unknown_media_type, "unknown layer media type 'application/vnd.example"),
}


def copy(capsys, *argv: str) -> tuple[int, str]:
    code = run(["copy", *argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("target", ["oci:{out}:x", "oci-archive:{out}.tar", "docker-archive:{out}.tar:a:b"])
@pytest.mark.parametrize("problem", sorted(CORRUPTIONS))
def test_corrupt_oci_input_gives_one_line_exit_2_and_no_output(tmp_path, capsys, problem, target):
    layout = good_layout(tmp_path)
    corrupt, message = CORRUPTIONS[problem]
    corrupt(layout)
    before = snapshot(layout)
    code, err = copy(capsys, f"oci:{layout}:latest", target.format(out=tmp_path / "out"))
    assert code == EXIT_BAD_INPUT
    assert err.count("\n") == 1 and err.startswith("sconify: error: ")
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "layer.tar"]  # nothing left behind
    assert snapshot(layout) == before  # the input is untouched


def test_a_failed_write_into_an_existing_layout_leaves_it_as_it_was(tmp_path, capsys):
    layout = good_layout(tmp_path)
    target = tmp_path / "existing"
    assert copy(capsys, f"oci:{layout}:latest", f"oci:{target}:old")[0] == 0
    before = snapshot(target)
    flip_layer_byte(layout)
    code, err = copy(capsys, f"oci:{layout}:latest", f"oci:{target}:new", "--compression", "zstd")
    assert code == EXIT_BAD_INPUT and "has digest" in err
    assert snapshot(target) == before
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == []


def test_corrupt_docker_archive_layer_is_detected(tmp_path, capsys):
    layout = good_layout(tmp_path)
    archive = tmp_path / "d.tar"
    assert copy(capsys, f"oci:{layout}:latest", f"docker-archive:{archive}", "--compression", "none")[0] == 0
    data = bytearray(archive.read_bytes())
    data[data.find(b"hello\n") + 3] ^= 0x01
    archive.write_bytes(bytes(data))
    code, err = copy(capsys, f"docker-archive:{archive}", f"oci:{tmp_path / 'o'}")
    assert code == EXIT_BAD_INPUT and "diff_id" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("source, message", [
    ("oci:{tmp}/nope:latest", "no such directory"),
    ("oci:{tmp}/in:missing-tag", "no image tagged 'missing-tag' .tags: latest."),
    ("oci-archive:{tmp}/nope.tar", "no such file"),
    ("docker-archive:{tmp}/nope.tar", "no such file"),
    ("docker-archive:{tmp}/layer.tar", "manifest.json is missing"),
    ("oci-archive:{tmp}/in", "is a directory"),
])
def test_nonexistent_references_are_named(tmp_path, capsys, source, message):
    good_layout(tmp_path)
    code, err = copy(capsys, source.format(tmp=tmp_path), f"oci:{tmp_path / 'o'}")
    assert code == EXIT_BAD_INPUT and re.search(message, err), err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_unreachable_docker_engine_is_an_environment_problem(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    code, err = copy(capsys, "docker-daemon:busybox:latest", f"oci:{tmp_path / 'o'}")
    assert code == EXIT_ENVIRONMENT
    assert "Docker engine is not reachable" in err and err.count("\n") == 1


@pytest.mark.docker
def test_nonexistent_daemon_image_is_named(tmp_path, capsys, docker_client):
    code, err = copy(capsys, "docker-daemon:sconify-no-such-image:never", f"oci:{tmp_path / 'o'}")
    assert code == EXIT_BAD_INPUT and "no such image in the Docker engine" in err


# --- a blob whose digest holds but whose data does not: one line, never a hang ---------------------


def _layer_of_blob(tmp_path: Path, blob: bytes, tar: bytes, compression: str) -> Layer:
    path = tmp_path / "blob"
    path.write_bytes(blob)
    return Layer("sha256:" + hashlib.sha256(blob).hexdigest(), len(blob), "sha256:" + hashlib.sha256(tar).hexdigest(),
                 compression, L.OCI_LAYER_MEDIA_TYPES[compression], slice_opener(path, 0, len(blob)), "test")


def _within(seconds: float, work) -> BaseException | None:
    """Run ``work`` on a thread; the exception it raised (a test failure if it hangs)."""
    outcome: list = []

    def run() -> None:
        try:
            work()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still running after {seconds} s: the layer reader hangs"
    return outcome[0]


def _tar_of(data: bytes) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        info = tarfile.TarInfo("f")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("reader", ["verify", "rootfs", "spooled"])
def test_a_cut_compressed_stream_with_a_matching_digest_is_one_line(tmp_path, compression, reader):
    tar = _tar_of(os.urandom(200_000))
    blob = L.compress_bytes(tar, compression)[:-1000]  # the digest is taken over what is there
    layer = _layer_of_blob(tmp_path, blob, tar, compression)
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}, "config": {}}).encode()
    work = {"verify": layer.verify, "rootfs": lambda: RootFS.from_image(Image(config, (layer,))).close(),
            "spooled": layer.spooled}[reader]
    error = _within(20, work)
    # gzip says where its stream ends early; a cut zstd frame reads as less data (a wrong diff_id)
    assert isinstance(error, ImageError) and "the image is corrupt" in str(error), error
    assert f"is not valid {compression} data" in str(error) or "(diff_id) has digest" in str(error)


def test_a_full_disk_under_a_blob_copy_is_one_line_naming_the_temp_directory(tmp_path):
    tar = _tar_of(os.urandom(3 << 20))
    layer = _layer_of_blob(tmp_path, gzip.compress(tar, mtime=0), tar, "gzip")
    full = os.open("/dev/full", os.O_WRONLY)

    def copy() -> None:
        with BackgroundTar(layer, blob_fd=full) as stream:
            stream.finish()

    try:
        error = _within(20, copy)
    finally:
        os.close(full)
    assert isinstance(error, EnvironmentProblem) and "No space left" in str(error) and "TMPDIR" in str(error)
