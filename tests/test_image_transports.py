"""Transports, compression, determinism and pure mutations on small images these tests build."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from sconify.errors import ImageError
from sconify.image import mutate
from sconify.image.model import Image, Layer, canonical_json
from sconify.image.oci import OCI_INDEX, OCI_MANIFEST
from sconify.image.reference import Reference, parse_reference
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image

FILE_TRANSPORTS = ("oci", "oci-archive", "docker-archive")


def tar_file(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1
            tar.addfile(info, io.BytesIO(data))
    return path


def small_image(tmp_path: Path, compression: str = "none") -> Image:
    bottom = Layer.from_tar_file(tar_file(tmp_path / "l0.tar", {"etc/a": b"a" * 3000, "etc/b": b"b"}), compression)
    top = Layer.from_tar_file(tar_file(tmp_path / "l1.tar", {"etc/.wh.b": b"", "app/main.py": b"print(1)\n"}), compression)
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [bottom.diff_id, top.diff_id]}}
    return Image(canonical_json(config), (bottom, top))


def ref(transport: str, tmp_path: Path, name: str) -> str:
    if transport == "oci":
        return f"oci:{tmp_path / name}:v1"
    if transport == "docker-archive":
        return f"docker-archive:{tmp_path / name}.tar:sconify/test:v1"
    return f"{transport}:{tmp_path / name}.tar:v1"


def tree_digests(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("source", FILE_TRANSPORTS)
@pytest.mark.parametrize("target", FILE_TRANSPORTS)
def test_round_trip_through_every_file_transport_pair_keeps_config_and_contents(tmp_path, source, target):
    image = small_image(tmp_path, "gzip")
    write_image(image, ref(source, tmp_path, "src"))
    copied = read_image(ref(source, tmp_path, "src"))
    write_image(copied, ref(target, tmp_path, "dst"))
    result = read_image(ref(target, tmp_path, "dst"))
    assert result.config_bytes == image.config_bytes
    assert result.diff_ids == image.diff_ids
    # gzip is accepted everywhere, so the blobs travel byte for byte
    assert [layer.digest for layer in result.layers] == [layer.digest for layer in image.layers]
    fs = RootFS.from_image(result)
    assert fs.read("etc/a") == b"a" * 3000 and not fs.exists("etc/b")


def test_compression_defaults_zstd_for_oci_and_gzip_for_docker_archive(tmp_path):
    image = small_image(tmp_path, "none")
    oci = write_image(image, f"oci:{tmp_path / 'o'}:v1")
    manifest = json.loads((tmp_path / "o" / "blobs" / "sha256" / oci.manifest_digest[7:]).read_bytes())
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    docker = read_image(write_image(image, f"docker-archive:{tmp_path / 'd.tar'}").reference)
    assert {layer.compression for layer in docker.layers} == {"gzip"}
    # zstd layers become gzip in a docker archive, and stay zstd (byte for byte) in OCI
    zstd_image = read_image(oci.reference)
    assert {layer.compression for layer in read_image(
        write_image(zstd_image, f"docker-archive:{tmp_path / 'z.tar'}").reference).layers} == {"gzip"}
    again = write_image(zstd_image, f"oci-archive:{tmp_path / 'again.tar'}")
    assert again.layer_digests == oci.layer_digests


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_asked_compression_is_applied_and_diff_ids_stay(tmp_path, compression):
    image = small_image(tmp_path, "gzip")
    result = write_image(image, f"oci:{tmp_path / 'o'}", compression=compression)
    written = read_image(result.reference)
    assert {layer.compression for layer in written.layers} == {compression}
    assert written.diff_ids == image.diff_ids
    for layer in written.layers:
        layer.verify()  # digests and diff_ids are right


def test_docker_archive_refuses_zstd_when_asked(tmp_path):
    with pytest.raises(ImageError, match="docker-archive cannot carry zstd"):
        write_image(small_image(tmp_path), f"docker-archive:{tmp_path / 'd.tar'}", compression="zstd")
    assert not (tmp_path / "d.tar").exists()


@pytest.mark.parametrize("transport", FILE_TRANSPORTS)
@pytest.mark.parametrize("compression", [None, "gzip", "zstd"])
def test_writing_the_same_image_twice_gives_identical_bytes(tmp_path, transport, compression):
    if transport == "docker-archive" and compression == "zstd":
        compression = "none"
    image = small_image(tmp_path, "none")
    first = write_image(image, ref(transport, tmp_path, "one"), compression=compression)
    second = write_image(read_image(ref(transport, tmp_path, "one")), ref(transport, tmp_path, "two"),
                         compression=compression)
    assert first.manifest_digest == second.manifest_digest
    one, two = (Path(parse_reference(ref(transport, tmp_path, n)).path) for n in ("one", "two"))
    assert list(tree_digests(one).values()) == list(tree_digests(two).values())


def test_oci_tag_is_added_to_an_existing_layout_and_moved_when_reused(tmp_path):
    layout = tmp_path / "layout"
    image = small_image(tmp_path, "gzip")
    first = write_image(image, f"oci:{layout}:v1")
    changed = mutate.with_config(image, {**image.config, "config": {"Cmd": ["/bin/true"]}})
    second = write_image(changed, f"oci:{layout}:v2")
    moved = write_image(changed, f"oci:{layout}:v1")
    index = json.loads((layout / "index.json").read_bytes())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in index["manifests"]}
    assert tags == {"v1": moved.manifest_digest, "v2": second.manifest_digest}
    assert first.manifest_digest != second.manifest_digest
    assert read_image(f"oci:{layout}:v1").config["config"]["Cmd"] == ["/bin/true"]
    with pytest.raises(ImageError, match="holds 2 images; add a tag"):
        read_image(f"oci:{layout}")


def write_index(layout: Path, platforms: list[tuple[str, str]], image: Image) -> None:
    """Turn a one-image layout into a multi-platform one (one manifest per platform)."""
    single = write_image(image, f"oci:{layout}")
    manifest = (layout / "blobs" / "sha256" / single.manifest_digest[7:]).read_bytes()
    nested = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": single.manifest_digest, "size": len(manifest),
         "platform": {"os": os_, "architecture": arch}} for os_, arch in platforms]}
    blob = canonical_json(nested)
    digest = hashlib.sha256(blob).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(blob)
    (layout / "index.json").write_bytes(canonical_json({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_INDEX, "digest": f"sha256:{digest}", "size": len(blob),
         "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))


def test_multi_platform_index_picks_the_platform_asked_for(tmp_path):
    write_index(tmp_path / "multi", [("linux", "arm64"), ("linux", "amd64")], small_image(tmp_path, "gzip"))
    assert read_image(f"oci:{tmp_path / 'multi'}:multi").config["os"] == "linux"
    assert read_image(f"oci:{tmp_path / 'multi'}:multi", platform="linux/arm64").layers
    with pytest.raises(ImageError, match=r"no image for platform linux/s390x \(available: linux/arm64, linux/amd64\)"):
        read_image(f"oci:{tmp_path / 'multi'}:multi", platform="linux/s390x")


@pytest.mark.parametrize("text, expected", [
    ("oci:/x/y:tag", Reference("oci", "/x/y", "tag")),
    ("oci:rel", Reference("oci", "rel", None)),
    ("oci-archive:/a.tar:latest", Reference("oci-archive", "/a.tar", "latest")),
    ("docker-archive:/a.tar", Reference("docker-archive", "/a.tar", None)),
    ("docker-archive:/a.tar:app", Reference("docker-archive", "/a.tar", "app:latest")),
    ("docker-archive:/a.tar:localhost:5000/app:1", Reference("docker-archive", "/a.tar", "localhost:5000/app:1")),
    ("docker-daemon:app:1.0", Reference("docker-daemon", "app", "1.0")),
    ("docker-daemon:localhost:5000/app", Reference("docker-daemon", "localhost:5000/app", "latest")),
    ("docker://127.0.0.1:5000/team/app:1", Reference("docker", "127.0.0.1:5000/team/app", "1")),
    ("docker://localhost/app", Reference("docker", "localhost/app", "latest")),
    ("docker://busybox", Reference("docker", "docker.io/library/busybox", "latest")),
    ("docker://quay.io/a/b@sha256:" + "0" * 64, Reference("docker", "quay.io/a/b", "sha256:" + "0" * 64)),
])
def test_references_use_skopeo_syntax(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize("text, message", [
    ("registry://busybox", "no known transport"),
    ("docker:busybox", "docker://HOST"),
    ("docker://Host.io/App:1", "invalid repository"),
    ("/just/a/path", "no known transport"),
    ("oci:", "names no image"),
    ("docker-daemon:App:1", "invalid image name"),
    ("docker-daemon:app@sha256:00", "digests are not supported"),
])
def test_malformed_references_are_refused(text, message):
    with pytest.raises(ImageError, match=message):
        parse_reference(text)


def test_mutations_return_new_images_and_leave_the_input_alone(tmp_path):
    image = small_image(tmp_path, "gzip")
    before = image.config_bytes
    extra = Layer.from_tar_file(tar_file(tmp_path / "l2.tar", {"extra": b"x"}), "zstd")
    grown = mutate.append_layers(image, [extra], history=[{"created_by": "sconify test"}])
    assert image.config_bytes == before and len(image.layers) == 2
    assert grown.diff_ids == (*image.diff_ids, extra.diff_id)
    assert grown.config["history"][-1] == {"created_by": "sconify test"}
    assert RootFS.from_image(grown).read("extra") == b"x"
    with pytest.raises(ImageError, match="other diff_ids"):
        mutate.with_config(image, grown.config)


def test_sconify_copy_prints_the_output_manifest_digest_and_json(tmp_path, capsys):
    from sconify.cli.main import run

    write_image(small_image(tmp_path, "gzip"), f"oci:{tmp_path / 'src'}:v1")
    assert run(["copy", f"oci:{tmp_path / 'src'}:v1", f"oci-archive:{tmp_path / 'out.tar'}:v2"]) == 0
    digest = capsys.readouterr().out.strip()
    assert digest == write_image(read_image(f"oci:{tmp_path / 'src'}:v1"), f"oci:{tmp_path / 'check'}").manifest_digest
    assert run(["copy", "--json", "--compression", "none", f"oci-archive:{tmp_path / 'out.tar'}:v2",
                f"docker-archive:{tmp_path / 'd.tar'}:app:v3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] == f"docker-archive:{tmp_path / 'd.tar'}:app:v3"
    assert report["layer_digests"] == list(read_image(f"oci:{tmp_path / 'src'}:v1").diff_ids)


def test_an_existing_empty_directory_becomes_a_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    write_image(small_image(tmp_path), f"oci:{tmp_path / 'empty'}:v1")
    assert read_image(f"oci:{tmp_path / 'empty'}:v1").layers


def test_a_non_layout_directory_is_not_overwritten(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(ImageError, match="not an OCI layout; choose an empty or new directory"):
        write_image(small_image(tmp_path), f"oci:{tmp_path / 'docs'}")
    assert [p.name for p in (tmp_path / "docs").iterdir()] == ["notes.txt"]


def test_a_digest_that_is_not_sha256_hex_never_becomes_a_file_name(tmp_path):
    layout = tmp_path / "l"
    write_image(small_image(tmp_path, "gzip"), f"oci:{layout}:v1")
    index = json.loads((layout / "index.json").read_bytes())
    index["manifests"][0]["digest"] = "sha256:../../../../etc/passwd"
    (layout / "index.json").write_bytes(canonical_json(index))
    with pytest.raises(ImageError, match="invalid or unsupported digest"):
        read_image(f"oci:{layout}:v1")


def test_docker_archive_tags_select_the_image(tmp_path):
    image = small_image(tmp_path, "gzip")
    write_image(image, f"docker-archive:{tmp_path / 'd.tar'}:app:1")
    assert read_image(f"docker-archive:{tmp_path / 'd.tar'}:app:1").config_bytes == image.config_bytes
    assert read_image(f"docker-archive:{tmp_path / 'd.tar'}").diff_ids == image.diff_ids
    with pytest.raises(ImageError, match=r"no image tagged 'app:2' \(tags: app:1\)"):
        read_image(f"docker-archive:{tmp_path / 'd.tar'}:app:2")


def test_a_missing_layer_tar_is_named(tmp_path):
    with pytest.raises(ImageError, match="does not exist; pass the path of a tar file"):
        Layer.from_tar_file(tmp_path / "nope.tar")
