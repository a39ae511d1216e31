"""Confidential for real (issue 22): no blob of a converted image holds the plaintext of a file
under an encrypted volume, whatever the transport; the input layers that held it are rewritten
(and recorded in the manifest), the others reused byte for byte; verify without keys names a
layer that still holds such plaintext.

One conversion per demo image and output transport, shared by the module: python and node to an
OCI layout, python to the Docker engine, node to a real registry.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from isal import igzip

from sconify.image.model import canonical_json, make_image
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.outputs.manifest import Manifest
from sconify.conversion.pipeline import ConvertOptions, sconify_image
from registryd import REGISTRY, Registry, start_registry, stop

WINDOW = 32  # bytes of one needle: distinctive in any image


@dataclass
class Converted:
    source: str
    ref: str
    tmp: Path

    @property
    def manifest(self) -> Manifest:
        return Manifest.read(self.tmp / "manifest.json")


def convert(source: str, destination: str, tmp: Path) -> Converted:
    sconify_image(ConvertOptions(
        source=source, destination=destination, encrypted_dirs=["/app/data"],
        manifest_out=str(tmp / "manifest.json"), session_out=str(tmp / "session.yaml"),
        keys_out=str(tmp / "keys.json"),
    ))
    return Converted(source, destination, tmp)


def needles(source: str) -> dict[bytes, str]:
    """A few 32-byte pieces (start, thirds, end) of every file the input holds under /app/data."""
    fs = RootFS.from_image(read_image(source))
    found = {}
    for path, entry in fs.entries.items():
        if path.startswith("app/data/") and entry.is_regular:
            data = fs.read(path)
            assert len(data) >= WINDOW, f"{path} is too short to search for"
            for start in {min(at, len(data) - WINDOW) for at in (0, len(data) // 3, 2 * len(data) // 3, len(data))}:
                found[data[start:start + WINDOW]] = "/" + path
    assert len(set(found.values())) >= 4
    return found


def inflate(blob: bytes) -> bytes:
    if blob.startswith(b"\x1f\x8b"):
        return igzip.decompress(blob)
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob), read_across_frames=True).read()
    return blob


def plaintext_in(blobs: dict[str, bytes], source: str) -> list[str]:
    """"<blob> holds <file>" for every needle found in a blob (decompressed)."""
    pieces = needles(source)
    return sorted({f"{name} holds {path}" for name, blob in blobs.items() for data in [inflate(blob)]
                   for piece, path in pieces.items() if piece in data})


def layout_blobs(ref: str) -> dict[str, bytes]:
    root = Path(ref.removeprefix("oci:").rpartition(":")[0])
    return {path.name: path.read_bytes() for path in (root / "blobs" / "sha256").iterdir()}


@pytest.fixture(scope="module")
def python_oci(python_image, tmp_path_factory) -> Converted:
    tmp = tmp_path_factory.mktemp("confidential-py")
    return convert(f"oci:{python_image}:latest", f"oci:{tmp / 'out'}:v", tmp)


@pytest.fixture(scope="module")
def node_oci(node_image, tmp_path_factory) -> Converted:
    tmp = tmp_path_factory.mktemp("confidential-node")
    return convert(f"oci:{node_image}:latest", f"oci:{tmp / 'out'}:v", tmp)


@pytest.mark.parametrize("which", ["python_oci", "node_oci"])
def test_no_blob_of_an_oci_output_holds_protected_plaintext(which, request):
    out = request.getfixturevalue(which)
    assert plaintext_in(layout_blobs(out.source), out.source), "the input itself must hold the plaintext"
    assert plaintext_in(layout_blobs(out.ref), out.source) == []


@pytest.mark.parametrize("which", ["python_oci", "node_oci"])
def test_only_the_layer_with_protected_files_is_rewritten_and_recorded(which, request):
    out = request.getfixturevalue(which)
    manifest = out.manifest
    source, output = read_image(out.source), read_image(out.ref)
    (rewritten,) = manifest.rewritten_layers
    assert rewritten["index"] == 1 and rewritten["regions"] == ["/app/data"]
    assert rewritten["removed_entries"] == 5  # blob.bin, config.json, README.txt, the csv and its hardlink
    assert rewritten["input_diff_id"] == source.diff_ids[1]
    assert rewritten["output_diff_id"] == output.diff_ids[1] != source.diff_ids[1]
    assert output.layers[0].digest == source.layers[0].digest  # the base layer byte for byte
    assert output.layers[1].compression == source.layers[1].compression
    # everything else of the app layer is still there: the code (embedded, then whited out
    # above) and the data directory itself with its mode
    fs_in, fs_out = RootFS.from_image(source), RootFS.from_image(output)
    assert fs_out.entries["app/data"].mode == fs_in.entries["app/data"].mode
    assert fs_out.entries["app/data/notes"].kind == "dir"


def test_the_rewrite_is_deterministic(python_image, python_oci, tmp_path):
    again = convert(f"oci:{python_image}:latest", f"oci:{tmp_path / 'out'}:v", tmp_path)
    assert again.manifest.rewritten_layers == python_oci.manifest.rewritten_layers
    assert read_image(again.ref).layers[1].digest == read_image(python_oci.ref).layers[1].digest


def test_dry_run_names_the_layers_to_rewrite(python_image, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", f"oci:{python_image}:latest",
         "--to", f"oci:{tmp_path / 'out'}:v", "--dir", "/app/data", "--dry-run", "--json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["rewritten_layers"] == [{"index": 1, "removed_entries": 5, "materialized_hardlinks": [],
                                         "regions": ["/app/data"]}]
    assert not (tmp_path / "out").exists()


@pytest.mark.docker
def test_no_blob_the_engine_holds_has_protected_plaintext(python_image, docker_client, tmp_path):
    tag = f"sconify-test/confidential-{uuid.uuid4().hex[:12]}:1"
    source = f"oci:{python_image}:latest"
    convert(source, f"docker-daemon:{tag}", tmp_path)
    try:
        saved = tmp_path / "saved.tar"
        with saved.open("wb") as out:
            for chunk in docker_client.images.get(tag).save(named=True):
                out.write(chunk)
        with tarfile.open(saved) as tar:
            blobs = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}
        assert plaintext_in(blobs, source) == []
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory):
    if REGISTRY is None:
        pytest.skip("docker-registry is not installed (.ci/run installs it)")
    root = tmp_path_factory.mktemp("confidential-registry")
    process, host = start_registry(root)
    yield Registry(host, root / "data")
    stop(process)


def test_no_blob_a_registry_holds_has_protected_plaintext(node_image, plain_registry, tmp_path):
    source = f"oci:{node_image}:latest"
    out = convert(source, plain_registry.ref(f"confidential/node:{uuid.uuid4().hex[:8]}"), tmp_path)
    blobs = {digest: plain_registry.blob_path(digest).read_bytes() for digest in plain_registry.blobs()}
    assert plaintext_in(blobs, source) == []
    (rewritten,) = out.manifest.rewritten_layers
    assert read_image(out.ref).diff_ids[1] == rewritten["output_diff_id"]


def verify(ref: str, manifest: Path, *extra: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "sconify", "verify", ref, "--manifest", str(manifest),
                             "--json", *extra], capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_verify_without_keys_names_a_layer_that_still_holds_plaintext(python_oci, tmp_path):
    code, report = verify(python_oci.ref, python_oci.tmp / "manifest.json")
    assert code == 0 and "no plaintext of encrypted volumes in any layer" in {c["name"] for c in report["checks"]}
    # the output as sconify built it before issue 22: the input's app layer under the new ones
    output, source = read_image(python_oci.ref), read_image(python_oci.source)
    config = output.config
    config["rootfs"]["diff_ids"][1] = source.diff_ids[1]
    layers = output.layers[:1] + source.layers[1:2] + output.layers[2:]
    old_way = f"oci:{tmp_path / 'old'}:v"
    write_image(make_image(canonical_json(config), layers, "old way"), old_way)
    code, report = verify(old_way, python_oci.tmp / "manifest.json")
    assert code == 1
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["ok"]}
    detail = failed["no plaintext of encrypted volumes in any layer"]
    assert f"layer 1 ({source.diff_ids[1]}) holds plaintext /app/data/config.json" in detail
