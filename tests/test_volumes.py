"""One fspf per protected region (a volume), as SCONE volumes have: its own file, key and tag.

Converts the Python demo image with several volumes and reads each volume back with
``sconify.fspf.Shield`` from its own fspf, key and tag; checks the keys file (schema v2), the
CAS session's volumes, the image config, nested volumes, and the refusals.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sconify.errors import UsageError
from sconify.fspf import FspfError, Shield
from sconify.image.model import Layer
from sconify.image.mutate import append_layers
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.outputs.keys import KeysFile, VolumeKeys
from sconify.outputs.manifest import Manifest
from sconify.conversion.pipeline import ConvertOptions, sconify_image
from sconify.outputs.session import volume_names


@dataclass
class Output:
    ref: str
    tmp: Path
    manifest: Manifest
    keys: KeysFile
    session: dict


def convert(source: str, tmp: Path, **options) -> Output:
    tmp.mkdir(parents=True, exist_ok=True)
    ref = f"oci:{tmp / 'out'}:v"
    sconify_image(ConvertOptions(
        source=source, destination=ref, manifest_out=str(tmp / "manifest.json"),
        session_out=str(tmp / "session.yaml"), keys_out=str(tmp / "keys.json"), **options,
    ))
    return Output(ref, tmp, Manifest.read(tmp / "manifest.json"), KeysFile.read(tmp / "keys.json"),
                  yaml.safe_load((tmp / "session.yaml").read_text()))


@pytest.fixture(scope="module")
def three(python_image, tmp_path_factory) -> Output:
    """Two encrypted volumes and an authenticated one."""
    return convert(f"oci:{python_image}:latest", tmp_path_factory.mktemp("three"),
                   encrypted_dirs=["/app/data", "/usr/share/doc"], authenticated_dirs=["/etc/sconify-demo"])


@pytest.fixture(scope="module")
def nested(python_image, tmp_path_factory) -> Output:
    return convert(f"oci:{python_image}:latest", tmp_path_factory.mktemp("nested"),
                   encrypted_dirs=["/app/data", "/app/data/notes"])


def shield(out: Output, fs: RootFS, volume: str) -> Shield:
    keys = out.keys.volume(volume)
    return Shield(fs.read(keys.fspf_path.lstrip("/")), keys.fspf_key, keys.fspf_tag,
                  opener=lambda stored: io.BytesIO(fs.read(stored.lstrip("/"))))


def test_each_volume_has_its_own_fspf_key_and_tag(three, python_image):
    out = RootFS.from_image(read_image(three.ref))
    original = RootFS.from_image(read_image(f"oci:{python_image}:latest"))
    volumes = {v.path: v for v in three.manifest.volumes}
    assert list(volumes) == ["/app/data", "/etc/sconify-demo", "/usr/share/doc"]
    assert {v.path: v.protection for v in three.manifest.volumes} == {
        "/app/data": "encrypted", "/etc/sconify-demo": "authenticated", "/usr/share/doc": "encrypted"}
    keys = {v.path: v for v in three.keys.volumes}
    assert len({k.fspf_key for k in keys.values()}) == 3 and len({k.fspf_tag for k in keys.values()}) == 3
    for path, volume in volumes.items():
        assert volume.fspf_path == f"{path}/.sconify.fspf" and out.exists(volume.fspf_path.lstrip("/"))
        assert keys[path].fspf_tag.hex() == volume.tag
        opened = shield(three, out, path)
        [region] = opened.fspf.regions  # exactly the volume's own region
        assert (region.path, region.kind, region.protection, region.kernel_path) == (
            path, "kernel", volume.protection, path)
        recorded = {record.path: record.size for record in opened.fspf.files}
        assert recorded == {p: info["size"] for p, info in volume.files.items()} and recorded
        assert volume.fspf_path not in recorded, "a volume's fspf is never one of its files"
        for file in recorded:
            assert opened.read(file) == original.read(file.lstrip("/"))
        assert opened.verify_all(present=list(recorded)).ok
        # Another volume's key does not open it.
        other = next(k for p, k in keys.items() if p != path)
        with pytest.raises(FspfError):
            Shield(out.read(volume.fspf_path.lstrip("/")), other.fspf_key, volume.tag,
                   opener=lambda stored: io.BytesIO(b""))


def test_keys_file_v2(three):
    doc = json.loads((three.tmp / "keys.json").read_text())
    assert set(doc) == {"schema", "session", "mrenclave", "executable_sha256", "runtime_config_sha256", "volumes"}
    assert doc["executable_sha256"] == three.manifest.executable.sconified_sha256
    assert len(doc["runtime_config_sha256"]) == 64  # the /.sconify/runtime.json the launcher then requires
    assert doc["schema"] == "sconify.keys/v2" and doc["mrenclave"] == three.manifest.measurement.mrenclave
    assert [v["path"] for v in doc["volumes"]] == ["/app/data", "/etc/sconify-demo", "/usr/share/doc"]
    for entry in doc["volumes"]:
        assert set(entry) == {"path", "fspf_path", "fspf_key", "fspf_tag", "fspf_tag_image", "protection"}
        assert entry["fspf_tag_image"] == entry["fspf_tag"]
        assert len(bytes.fromhex(entry["fspf_key"])) == 32 and len(bytes.fromhex(entry["fspf_tag"])) == 16
        assert entry["fspf_tag"] == three.manifest.volume(entry["path"]).tag
    assert (three.tmp / "keys.json").stat().st_mode & 0o777 == 0o600
    assert three.keys.volume("/etc/sconify-demo").protection == "authenticated"
    assert three.keys.volume("/nowhere") is None
    assert KeysFile.read(three.tmp / "keys.json") == three.keys


def test_session_lists_every_volume_with_a_secret_for_its_key(three):
    session = three.session
    names = {"/app/data": "app_data", "/etc/sconify-demo": "etc_sconify-demo", "/usr/share/doc": "usr_share_doc"}
    service = session["services"][0]
    assert service["volumes"] == [{"name": name, "path": path} for path, name in names.items()]
    assert session["images"] == [{"name": three.ref, "volumes": service["volumes"]}]
    assert session["volumes"] == [
        {"name": name, "fspf_path": f"{path}/.sconify.fspf", "fspf_key": f"$$SCONE::{name}_key:hex$$",
         "fspf_tag": three.manifest.volume(path).tag}
        for path, name in names.items()
    ]
    assert [s["name"] for s in session["secrets"]] == [f"{name}_key" for name in names.values()]
    assert service["command"] == "/usr/bin/python3.11 /app/main.py"  # the measured executable
    text = (three.tmp / "session.yaml").read_text()
    assert "&id" not in text and "*id" not in text, "plain YAML, no anchors"
    for key in three.keys.volumes:
        assert key.fspf_key.hex() not in text


def test_image_config_names_the_volumes_and_no_single_fspf(three):
    config = read_image(three.ref).config["config"]
    labels = config["Labels"]
    assert labels["io.sconify.volumes"] == "/app/data,/etc/sconify-demo,/usr/share/doc"
    assert "io.sconify.fspf.path" not in labels
    assert not any(item.startswith("SCONE_FSPF=") for item in config.get("Env") or [])


def test_data_layer_holds_each_fspf_after_its_files(three):
    image = read_image(three.ref)
    data = image.layers[image.diff_ids.index(three.manifest.data_layer)]
    with data.open_tar() as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        names = ["/" + info.name for info in tar]
    expected = [
        name
        for volume in three.manifest.volumes
        for name in [*(sorted(volume.files) if volume.protection == "encrypted" else []), volume.fspf_path]
    ]
    assert names == expected and "/app/data/readings.csv" in names


def test_nested_volumes_keep_their_files_apart(nested, python_image):
    from sconify.verify import verify_image

    outer, inner = nested.manifest.volume("/app/data"), nested.manifest.volume("/app/data/notes")
    assert set(inner.files) == {"/app/data/notes/README.txt"}
    assert "/app/data/notes/README.txt" not in outer.files and "/app/data/config.json" in outer.files
    out = RootFS.from_image(read_image(nested.ref))
    assert {r.path for r in shield(nested, out, "/app/data").fspf.files} == set(outer.files)
    notes = shield(nested, out, "/app/data/notes")
    assert notes.read("/app/data/notes/README.txt") == RootFS.from_image(
        read_image(f"oci:{python_image}:latest")).read("app/data/notes/README.txt")
    report = verify_image(nested.ref, nested.manifest, keys=nested.keys)
    assert report.ok, [c for c in report.checks if not c.ok]
    assert {c.name for c in report.checks} >= {"volume /app/data: protected files (through the shield)",
                                              "volume /app/data/notes: protected files (through the shield)"}


def test_no_volume_no_fspf(python_image, tmp_path):
    """Without a protected region there is no volume: only '/' and /tmp, listed as regions."""
    out = convert(f"oci:{python_image}:latest", tmp_path, keep_embedded=True)
    assert out.manifest.volumes == [] and out.keys.volumes == ()
    assert [r["path"] for r in out.manifest.regions] == ["/", "/tmp"]
    assert "volumes" not in out.session and "secrets" not in out.session
    assert read_image(out.ref).config["config"]["Labels"]["io.sconify.volumes"] == ""


def image_with(python_image: Path, tmp: Path, members: dict[str, bytes | None]) -> str:
    """The Python demo image with one more layer holding ``members`` (None: a directory)."""
    image = read_image(f"oci:{python_image}:latest")
    tar_path = tmp / "extra.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ref = f"oci:{tmp / 'in'}:x"
    write_image(append_layers(image, [Layer.from_tar_file(tar_path, "zstd")]), ref)
    return ref


def one_line_error(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "sconify", "image", *args], capture_output=True, text=True,
                            cwd=cwd, timeout=600, check=False)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize("members, options, expected", [
    ({"app/data/.sconify.fspf": b"mine"}, ["--dir", "/app/data"], "the image already has /app/data/.sconify.fspf"),
    ({".sconify.fspf": b"mine"}, ["--authenticate-root"], "the image already has /.sconify.fspf"),
    ({"srv/a,b": None, "srv/a,b/x": b"x"}, ["--authenticated", "/srv/a,b"], "cannot hold ','"),
])
def test_refusals_give_one_line_and_no_output(python_image, tmp_path, members, options, expected):
    source = image_with(python_image, tmp_path, members)
    work = tmp_path / "work"
    work.mkdir()
    line = one_line_error("--from", source, "--to", f"oci:{tmp_path / 'o'}:o", *options, cwd=work)
    assert expected in line
    assert list(work.iterdir()) == [] and not (tmp_path / "o").exists()


def test_volume_names_are_session_safe_and_unique():
    names = volume_names(["/app/data", "/", "/root", "/app_data", "/srv/é x", "/a-b/c.d"])
    assert names == {"/": "root", "/a-b/c.d": "a-b_c_d", "/app/data": "app_data", "/app_data": "app_data_2",
                     "/root": "root_2", "/srv/é x": "srv___x"}


def test_keys_file_round_trip_and_refusals(tmp_path):
    keys = KeysFile(volumes=(VolumeKeys("/b", "/b/.sconify.fspf", b"k" * 32, b"t" * 16, "authenticated"),
                             VolumeKeys("/a", "/a/.sconify.fspf", b"K" * 32, b"T" * 16, "encrypted")),
                    mrenclave="00" * 32, session_name="s")
    assert [v.path for v in keys.volumes] == ["/a", "/b"]
    path = tmp_path / "keys.json"
    keys.write(path)
    assert KeysFile.read(path) == keys
    assert "kkkk" not in repr(keys) and "KKKK" not in repr(keys), "keys stay out of reprs"
    doc = json.loads(path.read_text())
    doc["schema"] = "sconify.keys/v1"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="re-convert"):
        KeysFile.read(path)
    doc["schema"] = "sconify.keys/v2"
    doc["volumes"][0]["fspf_key"] = "00"
    path.write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="not a sconify keys file"):
        KeysFile.read(path)
