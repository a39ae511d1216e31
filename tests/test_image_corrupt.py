"""Corrupt or missing input gives one line naming the problem, exit code 2, and no output."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import pytest

from sconify.cli.main import run
from sconify.errors import EXIT_BAD_INPUT, EXIT_ENVIRONMENT
from sconify.image.model import Image, Layer, canonical_json
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
