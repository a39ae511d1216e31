"""sconify verify / measure / diff / sign: an auditor recomputes every figure from the image.

A clean conversion of each real image verifies; then each single change an attacker (or a
broken build) could make is caught, and the failing check names what differs.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embedfs.archive import ArchiveEntry, pack
from embedfs.elf import inject, open_embedded, restore_original
from sconify.image.model import Layer, canonical_json, make_image
from sconify.image.mutate import append_layers
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.outputs.manifest import Manifest
from sconify.conversion.pipeline import ConvertOptions, sconify_image


@dataclass
class Output:
    ref: str
    manifest_path: Path
    keys_path: Path
    tmp: Path

    @property
    def manifest(self) -> Manifest:
        return Manifest.read(self.manifest_path)


def convert(source: str, tmp: Path) -> Output:
    tmp.mkdir(parents=True, exist_ok=True)
    ref = f"oci:{tmp / 'out'}:v"
    sconify_image(
        ConvertOptions(
            source=source,
            destination=ref,
            encrypted_dirs=["/app/data"],
            authenticated_dirs=["/etc/sconify-demo"],
            manifest_out=str(tmp / "manifest.json"),
            session_out=str(tmp / "session.yaml"),
            keys_out=str(tmp / "keys.json"),
        )
    )
    return Output(ref, tmp / "manifest.json", tmp / "keys.json", tmp)


@pytest.fixture(scope="module")
def python_out(python_image, tmp_path_factory) -> Output:
    return convert(f"oci:{python_image}:latest", tmp_path_factory.mktemp("verify-py"))


@pytest.fixture(scope="module")
def node_out(node_image, tmp_path_factory) -> Output:
    return convert(f"oci:{node_image}:latest", tmp_path_factory.mktemp("verify-node"))


def sconify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sconify", *args], capture_output=True, text=True, timeout=600, check=False
    )


def verify(ref: str, manifest: Path, *extra: str) -> tuple[int, dict]:
    result = sconify("verify", ref, "--manifest", str(manifest), "--json", *extra)
    assert "Traceback" not in result.stderr, result.stderr
    if result.returncode == 2:
        pytest.fail(f"verify could not read its input: {result.stderr}")
    return result.returncode, json.loads(result.stdout)


def failed(report: dict) -> dict[str, str]:
    return {check["name"]: check["detail"] for check in report["checks"] if not check["ok"]}


def with_files(out: Output, files: dict[str, bytes], tmp: Path, name: str) -> str:
    """The output image with one more layer that replaces ``files`` (a tampered copy)."""
    image = read_image(out.ref)
    fs = RootFS.from_image(image)
    tar_path = tmp / f"{name}.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in sorted(files.items()):
            entry = fs.entries.get(path.lstrip("/"))
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), entry.mode if entry else 0o644
            tar.addfile(info, io.BytesIO(data))
    ref = f"oci:{tmp / (name + '-image')}:t"
    write_image(append_layers(image, [Layer.from_tar_file(tar_path, "zstd")]), ref)
    return ref


def read_file(ref: str, path: str) -> bytes:
    return RootFS.from_image(read_image(ref)).read(path.lstrip("/"))


# --- clean outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["python_out", "node_out"])
def test_clean_output_verifies_with_and_without_keys(which, request, tmp_path):
    out = request.getfixturevalue(which)
    code, report = verify(out.ref, out.manifest_path)
    assert code == 0, failed(report)
    # Read where it was written (an OCI layout): every blob, the data layer's plain tar too.
    assert {"layer blob digests", "input layers' blobs"} <= {check["name"] for check in report["checks"]}
    code, report = verify(
        out.ref, out.manifest_path, "--keys", str(out.keys_path), "--sgxs", str(tmp_path / "enclave.sgxs")
    )
    assert code == 0, failed(report)
    names = {check["name"] for check in report["checks"]}
    assert {"MRENCLAVE", "embedfs root hash", "config label io.sconify.volumes"} <= names
    for volume in ("/app/data", "/etc/sconify-demo"):
        assert {f"volume {volume}: fspf tag", f"volume {volume}: protected files (through the shield)"} <= names
    import hashlib

    assert (
        hashlib.sha256((tmp_path / "enclave.sgxs").read_bytes()).hexdigest()
        == out.manifest.measurement.mrenclave
    )


def test_verify_reads_the_image_through_another_transport(python_out, tmp_path):
    archive = tmp_path / "out.tar"
    write_image(read_image(python_out.ref), f"docker-archive:{archive}:audit/python:1")
    code, report = verify(
        f"docker-archive:{archive}", python_out.manifest_path, "--keys", str(python_out.keys_path)
    )
    assert code == 0, failed(report)
    code, report = verify(f"docker-archive:{archive}", python_out.manifest_path)
    assert code == 0, failed(report)


def test_input_blobs_without_recorded_digests_are_inflated(python_out, tmp_path):
    """Without keys every lower layer is inflated (its tar headers searched for plaintext of an
    encrypted volume), but its diff_id is recomputed only when its blob is not the one the
    manifest records for the input (its diff_id is then the input's): the app layer rewritten
    without /app/data, or an input read from the Docker engine, which has no blob digests."""
    details = {check["name"]: check["detail"] for check in verify(python_out.ref, python_out.manifest_path)[1]["checks"]}
    assert "1 diff_ids recomputed" in details["input layers' blobs"]
    doc = json.loads(python_out.manifest_path.read_text())
    doc["input"]["layer_digests"] = []
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(doc))
    code, report = verify(python_out.ref, manifest)
    assert code == 0, failed(report)
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "2 diff_ids recomputed" in details["input layers' blobs"]


def test_a_corrupt_input_blob_is_named_without_keys(python_out, tmp_path):
    """Without keys the input's layers are not indexed, but every byte of their blobs is hashed."""
    layout = tmp_path / "layout"
    shutil.copytree(python_out.ref.split(":")[1], layout)
    digest = read_image(python_out.ref).layers[0].digest
    blob = layout / "blobs" / "sha256" / digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    result = sconify("verify", f"oci:{layout}:v", "--manifest", str(python_out.manifest_path))
    assert result.returncode == 2, result.stdout
    assert digest in result.stderr and "Traceback" not in result.stderr


# --- single changes, each caught and named ------------------------------------------------


def test_one_byte_in_one_embedded_file_is_named(python_out, tmp_path):
    manifest = python_out.manifest
    exe = tmp_path / "exe"
    exe.write_bytes(read_file(python_out.ref, manifest.executable.path))
    victim = "usr/lib/python3.11/json/decoder.py"
    with open_embedded(exe) as archive:
        entries = []
        for member in archive.list():
            if member.kind == "symlink":
                entries.append(
                    ArchiveEntry(
                        member.path, "symlink", member.mode, member.uid, member.gid, 0, member.linkname
                    )
                )
                continue
            data = bytearray(archive.read(member.path))
            if member.path == victim:
                data[100] ^= 0x01
            entries.append(
                ArchiveEntry(
                    member.path, "file", member.mode, member.uid, member.gid, len(data), source=bytes(data)
                )
            )
    with (tmp_path / "evil.embedfs").open("wb") as handle:
        pack(entries, handle)
    restore_original(exe, tmp_path / "orig")
    inject(tmp_path / "orig", tmp_path / "evil.embedfs", tmp_path / "evil")
    ref = with_files(
        python_out, {manifest.executable.path: (tmp_path / "evil").read_bytes()}, tmp_path, "evil"
    )
    code, report = verify(ref, python_out.manifest_path)
    assert code == 1
    problems = failed(report)
    assert "/" + victim in problems["embedded files match the manifest"]
    assert "MRENCLAVE" in problems and "embedfs root hash" in problems


def test_heap_size_changed_in_the_manifest_is_caught(python_out, tmp_path):
    doc = json.loads(python_out.manifest_path.read_text())
    doc["measurement"]["heap_size"] *= 2
    tampered = tmp_path / "manifest.json"
    tampered.write_text(json.dumps(doc))
    code, report = verify(python_out.ref, tampered)
    assert code == 1
    problems = failed(report)
    # The runtime config in the image records the heap the executable was measured with.
    assert {"MRENCLAVE"} <= set(problems) <= {"MRENCLAVE", "enclave size", "runtime config"}
    assert f"heap {doc['measurement']['heap_size']}" in problems["MRENCLAVE"]


def test_file_added_to_an_authenticated_region_is_named(python_out, tmp_path):
    ref = with_files(python_out, {"/etc/sconify-demo/extra.json": b"{}"}, tmp_path, "added")
    code, report = verify(ref, python_out.manifest_path, "--keys", str(python_out.keys_path))
    assert code == 1
    problems = failed(report)
    assert "/etc/sconify-demo/extra.json" in problems["volume /etc/sconify-demo: protected files (through the shield)"]
    assert [name for name in problems if name.startswith("volume")] == [
        "volume /etc/sconify-demo: protected files (through the shield)"]


def test_an_encrypted_file_whited_out_is_named_missing(python_out, tmp_path):
    """A recorded file the layers never stream (here: deleted by a whiteout) is missing."""
    image = read_image(python_out.ref)
    tar_path = tmp_path / "whiteout.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("app/data/.wh.config.json"))
    ref = f"oci:{tmp_path / 'whiteout-image'}:t"
    write_image(append_layers(image, [Layer.from_tar_file(tar_path, "zstd")]), ref)
    code, report = verify(ref, python_out.manifest_path, "--keys", str(python_out.keys_path))
    assert code == 1
    problems = failed(report)
    assert "/app/data/config.json" in problems["volume /app/data: protected files (through the shield)"]
    assert "missing" in problems["volume /app/data: protected files (through the shield)"]
    assert "/app/data/config.json missing" in problems["volume /app/data: protected files present"]


@pytest.mark.parametrize("path, volume", [("/app/data/readings.csv", "/app/data"),
                                          ("/etc/sconify-demo/defaults.json", "/etc/sconify-demo")])
def test_one_byte_in_a_protected_file_is_named_with_its_volume(node_out, tmp_path, path, volume):
    data = bytearray(read_file(node_out.ref, path))
    data[len(data) // 2] ^= 0x80
    ref = with_files(node_out, {path: bytes(data)}, tmp_path, "flip")
    code, report = verify(ref, node_out.manifest_path, "--keys", str(node_out.keys_path))
    assert code == 1
    problems = failed(report)
    assert path in problems[f"volume {volume}: protected files (through the shield)"]
    assert [name for name in problems if name.startswith("volume")] == [
        f"volume {volume}: protected files (through the shield)"], "the other volume still verifies"
    assert "layer diff_ids" in problems  # the image itself changed too


def test_rolled_back_fspf_of_one_volume_is_caught(python_image, python_out, tmp_path):
    """An fspf of an earlier conversion (same paths, other keys) in place of one volume's:
    its tag is not the one the manifest and the keys file record, with or without keys."""
    older = convert(f"oci:{python_image}:latest", tmp_path / "older")
    fspf = "/app/data/.sconify.fspf"
    ref = with_files(python_out, {fspf: read_file(older.ref, fspf)}, tmp_path, "rollback")
    for extra in ((), ("--keys", str(python_out.keys_path))):
        code, report = verify(ref, python_out.manifest_path, *extra)
        assert code == 1
        problems = failed(report)
        assert "older or different fspf" in problems["volume /app/data: fspf tag"]
        assert not any(name.startswith("volume /etc/sconify-demo") for name in problems), problems


def test_fspf_of_another_volume_is_caught(python_out, tmp_path):
    """Each volume has its own key and tag: one volume's fspf does not pass for another's."""
    other = read_file(python_out.ref, "/etc/sconify-demo/.sconify.fspf")
    ref = with_files(python_out, {"/app/data/.sconify.fspf": other}, tmp_path, "moved")
    code, report = verify(ref, python_out.manifest_path, "--keys", str(python_out.keys_path))
    assert code == 1
    assert "older or different fspf" in failed(report)["volume /app/data: fspf tag"]


def test_keys_of_another_conversion_name_the_volumes(python_image, python_out, tmp_path):
    older = convert(f"oci:{python_image}:latest", tmp_path / "older")
    code, report = verify(python_out.ref, python_out.manifest_path, "--keys", str(older.keys_path))
    assert code == 1
    detail = failed(report)["keys file"]
    assert "volume /app/data" in detail and "volume /etc/sconify-demo" in detail


def test_keys_file_of_schema_v1_is_refused_with_one_line(python_out, tmp_path):
    old = tmp_path / "keys.json"
    old.write_text(json.dumps({"schema": "sconify.keys/v1", "session": "s", "mrenclave": "00",
                               "fspf_path": "/etc/sconify/volume.fspf", "fspf_key": "00" * 32, "fspf_tag": "00" * 16}))
    result = sconify("verify", python_out.ref, "--manifest", str(python_out.manifest_path), "--keys", str(old))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sconify.keys/v1" in lines[0] and "re-convert" in lines[0]


def test_swapped_layer_is_named(python_image, python_out, tmp_path):
    other = convert(f"oci:{python_image}:latest", tmp_path / "other")
    mine, theirs = read_image(python_out.ref), read_image(other.ref)
    data = mine.diff_ids.index(Manifest.read(python_out.manifest_path).data_layer)  # the runtime layer is above it
    config = mine.config
    config["rootfs"]["diff_ids"][data] = theirs.layers[data].diff_id
    layers = mine.layers[:data] + theirs.layers[data:data + 1] + mine.layers[data + 1:]
    swapped = make_image(canonical_json(config), layers, "swapped")
    ref = f"oci:{tmp_path / 'swapped'}:s"
    write_image(swapped, ref)
    code, report = verify(ref, python_out.manifest_path)
    assert code == 1
    problems = failed(report)
    assert "layer 3" in problems["layer diff_ids"]
    assert "volume /app/data: fspf tag" in problems and "volume /etc/sconify-demo: fspf tag" in problems


def test_manifest_signature(python_out, tmp_path):
    key = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp_path / "signer.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    other = Ed25519PrivateKey.generate()
    (tmp_path / "other.pem").write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    manifest = tmp_path / "manifest.json"
    shutil.copy(python_out.manifest_path, manifest)
    signed = sconify("sign", str(manifest), "--key", str(tmp_path / "key.pem"))
    assert signed.returncode == 0, signed.stderr
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "signer.pem"))
    assert code == 0, failed(report)
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "other.pem"))
    assert code == 1 and "signed by another key" in failed(report)["manifest signature"]
    doc = json.loads(manifest.read_text())
    doc["tool"]["version"] = "9.9.9"
    manifest.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "signer.pem"))
    assert code == 1 and "does not match" in failed(report)["manifest signature"]



def test_legacy_ed25519_signature_files_stay_readable_and_ecdsa_keys_sign(python_out, tmp_path):
    """The sconify.signature/v1 .sig (Ed25519 over the manifest's bytes) still verifies; an
    ECDSA P-256 key signs a DSSE envelope."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    manifest = tmp_path / "manifest.json"
    shutil.copy(python_out.manifest_path, manifest)
    data = manifest.read_bytes()
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    (tmp_path / "manifest.json.sig").write_text(json.dumps({
        "schema": "sconify.signature/v1", "algorithm": "ed25519", "manifest_sha256": hashlib.sha256(data).hexdigest(),
        "public_key": raw.hex(), "signature": key.sign(data).hex()}))
    (tmp_path / "signer.pem").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "signer.pem"))
    assert code == 0, failed(report)
    assert any("legacy" in c["detail"] for c in report["checks"] if c["name"] == "manifest signature")
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.pem").write_bytes(ecdsa.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (tmp_path / "ec.pub").write_bytes(ecdsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    signed = sconify("sign", str(manifest), "--key", str(tmp_path / "ec.pem"))
    assert signed.returncode == 0, signed.stderr
    assert (tmp_path / "manifest.json.intoto.jsonl").exists()  # preferred over the .sig from now on
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "ec.pub"))
    assert code == 0, failed(report)
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "signer.pem"))
    assert code == 1 and "signed by another key" in failed(report)["manifest signature"]
    code, report = verify(python_out.ref, manifest, "--signer", str(tmp_path / "signer.pem"),
                          "--signature", str(tmp_path / "manifest.json.sig"))
    assert code == 0, failed(report)


# --- measure and diff ---------------------------------------------------------------------


def test_measure_prints_the_manifest_mrenclave_without_the_manifest(python_out):
    result = sconify("measure", python_out.ref, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mrenclave"] == python_out.manifest.measurement.mrenclave
    changed = sconify("measure", python_out.ref, "--threads", "2", "--json")
    assert json.loads(changed.stdout)["mrenclave"] != python_out.manifest.measurement.mrenclave


def test_diff_names_what_changed_between_two_conversions(python_image, python_out, tmp_path):
    same = sconify("diff", python_out.ref, python_out.ref)
    assert same.returncode == 0 and "agree" in same.stdout
    bigger = tmp_path / "bigger"
    bigger.mkdir()
    sconify_image(
        ConvertOptions(
            source=f"oci:{python_image}:latest",
            destination=f"oci:{bigger / 'out'}:v",
            encrypted_dirs=["/app/data"],
            heap_size=256 << 20,
            fs_files=["/etc/sconify-demo/defaults.json"],
            manifest_out=str(bigger / "m.json"),
            session_out=str(bigger / "s.yaml"),
            keys_out=str(bigger / "k.json"),
        )
    )
    result = sconify("diff", python_out.ref, f"oci:{bigger / 'out'}:v", "--json")
    assert result.returncode == 1
    found = {(d["what"], d["detail"]) for d in json.loads(result.stdout)["differences"]}
    whats = {what for what, _ in found}
    assert {"mrenclave", "heap-size", "embedfs.root-hash"} <= whats
    assert ("embedded file added", "/etc/sconify-demo/defaults.json") in found
    assert ("volumes", "/app/data,/etc/sconify-demo -> /app/data") in found


def test_unreadable_inputs_exit_2_with_one_line(python_out, tmp_path):
    missing = sconify("verify", f"oci:{tmp_path / 'nothing'}:x", "--manifest", str(python_out.manifest_path))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    (tmp_path / "list.json").write_text("[1]")
    listed = sconify("verify", python_out.ref, "--manifest", str(tmp_path / "list.json"))
    assert listed.returncode == 2 and "not a JSON object" in listed.stderr
    (tmp_path / "bad.json").write_text("{not json")
    bad = sconify("verify", python_out.ref, "--manifest", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "not JSON" in bad.stderr and "Traceback" not in bad.stderr


def rewrite_layer(out: Output, tmp_path: Path, index: int, *, drop: str = "", add: dict | None = None) -> str:
    """The output image with layer ``index`` rewritten: one member dropped and/or files added
    (config diff_ids updated, so only sconify's own content checks can tell)."""
    image = read_image(out.ref)
    rebuilt = tmp_path / f"layer{index}.tar"
    with image.layers[index].open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as source, \
            tarfile.open(rebuilt, "w", format=tarfile.PAX_FORMAT) as target:
        for info in source:
            if info.name != drop:
                target.addfile(info, source.extractfile(info) if info.isreg() else None)
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    layer = Layer.from_tar_file(rebuilt, "zstd")
    config = image.config
    config["rootfs"]["diff_ids"][index] = layer.diff_id
    layers = image.layers[:index] + (layer,) + image.layers[index + 1:]
    ref = f"oci:{tmp_path / f'rewritten{index}'}:t"
    write_image(make_image(canonical_json(config), layers, "rewritten"), ref)
    return ref


def test_a_code_layer_without_one_whiteout_is_named(python_out, tmp_path):
    """verify indexes only the layers sconify added when it can; a whiteout missing there is caught."""
    base = len(python_out.manifest.input.diff_ids)
    ref = rewrite_layer(python_out, tmp_path, base, drop="usr/lib/python3.11/json/.wh.decoder.py")
    code, report = verify(ref, python_out.manifest_path)
    assert code == 1
    problems = failed(report)
    assert "/usr/lib/python3.11/json/decoder.py not whited out" in problems["embedded files absent from the rootfs"]
    assert "layer 2" in problems["layer diff_ids"]


def test_a_file_slipped_into_the_data_layer_is_named(python_out, tmp_path):
    base = len(python_out.manifest.input.diff_ids)
    ref = rewrite_layer(python_out, tmp_path, base + 1, add={"app/backdoor.py": b"print('hi')\n"})
    code, report = verify(ref, python_out.manifest_path)
    assert code == 1
    assert "/app/backdoor.py added" in failed(report)["added layers hold only what the manifest lists"]


@pytest.mark.parametrize("text, expected", [
    ("services: [\n", "is not YAML"),
    ("- just a list\n", "is not a session"),
])
def test_unreadable_session_is_one_line(tmp_path, text, expected):
    from sconify.cli.verify import read_session
    from sconify.errors import UsageError

    session = tmp_path / "session.yaml"
    session.write_text(text)
    with pytest.raises(UsageError) as raised:
        read_session(str(session))
    assert expected in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(UsageError, match="cannot read --session"):
        read_session(str(tmp_path / "missing.yaml"))
