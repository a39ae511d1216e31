"""sconify-image end to end, on the real Debian-built Python and Node.js images.

Each conversion runs once per session (module fixtures) and the tests read its outputs: the
image (through our reader, skopeo, umoci and the Docker engine), the manifest, the session and
the keys file.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from embedfs.elf import open_embedded
from embedfs.measure import measure_elf
from sconify.conversion import pipeline
from sconify.fspf import Shield
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.outputs.keys import KeysFile
from sconify.outputs.manifest import KEY_DEPENDENT_FIELDS, Manifest
from sconify.conversion.pipeline import ConvertOptions, sconify_image
from sconify.conversion.plan import contents_to_keep
from test_direct import cached_bytes, takes_direct_io


@dataclass
class Converted:
    ref: str
    manifest: Manifest
    keys: KeysFile
    session: dict
    workdir: Path
    source: str


def sconify_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sconify", "image", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
        check=False,
    )


def convert(tmp: Path, source: str, name: str, *extra: str) -> Converted:
    tmp.mkdir(parents=True, exist_ok=True)
    ref = f"oci:{tmp / 'out'}:{name}"
    result = sconify_cli(
        "--from",
        source,
        "--to",
        ref,
        *extra,
        "--manifest-out",
        str(tmp / "manifest.json"),
        "--session-out",
        str(tmp / "session.yaml"),
        "--keys-out",
        str(tmp / "keys.json"),
    )
    assert result.returncode == 0, result.stderr
    return Converted(
        ref=ref,
        manifest=Manifest.read(tmp / "manifest.json"),
        keys=KeysFile.read(tmp / "keys.json"),
        session=yaml.safe_load((tmp / "session.yaml").read_text()),
        workdir=tmp,
        source=source,
    )


@pytest.fixture(scope="module")
def python_converted(python_image, tmp_path_factory) -> Converted:
    return convert(
        tmp_path_factory.mktemp("py"), f"oci:{python_image}:latest", "python", "--dir", "/app/data"
    )


@pytest.fixture(scope="module")
def node_converted(node_image, tmp_path_factory) -> Converted:
    tmp = tmp_path_factory.mktemp("node")
    archive = tmp / "input.tar"
    write_image(read_image(f"oci:{node_image}:latest"), f"oci-archive:{archive}:node")
    return convert(
        tmp,
        f"oci-archive:{archive}:node",
        "node",
        "--dir",
        "/app/data",
        "--authenticated",
        "/etc/sconify-demo",
    )


def file_bytes(fs: RootFS, path: str) -> bytes:
    return fs.read(path.lstrip("/"))


def shield_of(converted: Converted, volume: str, out: RootFS | None = None) -> Shield:
    """The shield of one volume of the output image, opened with its key from the keys file."""
    out = out or RootFS.from_image(read_image(converted.ref))
    keys = converted.keys.volume(volume)
    return Shield(
        file_bytes(out, keys.fspf_path),
        keys.fspf_key,
        keys.fspf_tag,
        opener=lambda p: io.BytesIO(file_bytes(out, p)),
    )


def extract_executable(converted: Converted, tmp: Path) -> Path:
    fs = RootFS.from_image(read_image(converted.ref))
    target = tmp / "exe"
    target.write_bytes(file_bytes(fs, converted.manifest.executable.path))
    return target


# --- the Python service -------------------------------------------------------------------


def test_python_executable_carries_the_embedded_code_and_its_measurement(python_converted, tmp_path):
    m = python_converted.manifest
    assert m.executable.path == "/usr/bin/python3.11"
    assert m.executable.recipe == "python"
    exe = extract_executable(python_converted, tmp_path)
    import hashlib

    assert hashlib.sha256(exe.read_bytes()).hexdigest() == m.executable.sconified_sha256
    archive = open_embedded(exe)
    assert archive.root_hash == m.embedfs.root_hash
    archive.verify()
    names = {"/" + member.path for member in archive.list()}
    assert "/usr/lib/python3.11/json/__init__.py" in names
    assert "/app/main.py" in names and "/app/service/store.py" in names
    assert any(name.startswith("/usr/lib/python3.11/lib-dynload/_sqlite3") for name in names)
    # libraries the extension modules need, found through DT_NEEDED
    assert any("libsqlite3.so" in name for name in names)
    assert not any(name.startswith("/app/data") for name in names), "data must not be embedded"
    assert not any("/test/" in name for name in names)
    assert names == set(m.embedfs.files)
    params = m.measurement
    again = measure_elf(exe, heap_size=params.heap_size, stack_size=params.stack_size, threads=params.threads)
    assert again.mrenclave == m.measurement.mrenclave


def test_python_embedded_code_is_gone_from_the_rootfs_and_data_is_ciphertext(python_converted, python_image):
    out = RootFS.from_image(read_image(python_converted.ref))
    original = RootFS.from_image(read_image(f"oci:{python_image}:latest"))
    assert not out.exists("usr/lib/python3.11/json/__init__.py")
    assert not out.exists("app/main.py")
    # shared libraries stay where the dynamic loader needs them (and are measured in the embedfs)
    assert out.exists("usr/lib/x86_64-linux-gnu/libsqlite3.so.0")
    for path in python_converted.manifest.protected_files():
        stored = file_bytes(out, path)
        plain = file_bytes(original, path)
        assert stored != plain
        if len(plain) >= 64:
            assert plain[:64] not in stored, f"{path} leaks plaintext"
    assert out.exists("app/data/.sconify.fspf")
    assert not out.exists("etc/sconify/volume.fspf"), "no fspf for the whole image any more"


def test_new_layers_code_compressed_data_plain_tar_unless_asked(python_converted, python_image, tmp_path):
    """Ciphertext does not compress: the data layer is a plain tar (no CPU spent on it), the
    code layer takes the output's compression; --compression applies to every layer."""
    image = read_image(python_converted.ref)
    compression = {layer.diff_id: layer.compression for layer in image.layers}
    manifest = python_converted.manifest
    assert [compression[manifest.code_layer], compression[manifest.data_layer]] == ["zstd", "none"]
    assert compression[manifest.runtime.layer] == "zstd"
    converted = convert(tmp_path, f"oci:{python_image}:latest", "gz", "--dir", "/app/data", "--compression", "gzip")
    if takes_direct_io(tmp_path):
        # Every layer blob of the new layout went to disk past the page cache (sconify.conversion.direct).
        blobs = {path.name: cached_bytes(path) for path in (tmp_path / "out" / "blobs" / "sha256").iterdir()
                 if path.stat().st_size > 1 << 20}
        assert len(blobs) >= 3 and set(blobs.values()) == {0}, blobs
    assert {layer.compression for layer in read_image(converted.ref).layers} == {"gzip"}


def test_input_blobs_in_the_output_layout_are_copies_not_links(python_converted, python_image):
    """The input blobs reach the output layout through private copies made during the
    conversion (sconify.image.prefetch): the output holds the only link to each, the input's
    blobs keep theirs (the layer rewritten without /app/data is a new blob)."""
    output = Path(python_converted.ref.split(":")[1]) / "blobs" / "sha256"
    rewritten = {layer["index"] for layer in python_converted.manifest.rewritten_layers}
    assert rewritten == {1}
    for index, layer in enumerate(read_image(f"oci:{python_image}:latest").layers):
        if index in rewritten:
            continue
        name = layer.digest[7:]
        assert (output / name).stat().st_nlink == 1
        assert not os.path.samefile(output / name, Path(python_image) / "blobs" / "sha256" / name)


def test_python_shield_reads_the_data_back_with_the_keys_file(python_converted, python_image):
    shield = shield_of(python_converted, "/app/data")
    original = RootFS.from_image(read_image(f"oci:{python_image}:latest"))
    files = python_converted.manifest.volume("/app/data").files
    assert set(files) >= {"/app/data/readings.csv", "/app/data/blob.bin", "/app/data/config.json"}
    for path in files:
        assert shield.read(path) == file_bytes(original, path)


def test_python_manifest_session_and_keys_agree(python_converted):
    m, keys, session = python_converted.manifest, python_converted.keys, python_converted.session
    [volume] = m.volumes
    assert (volume.path, volume.fspf_path, volume.protection) == ("/app/data", "/app/data/.sconify.fspf", "encrypted")
    assert [(k.path, k.fspf_path, k.fspf_tag.hex(), k.protection) for k in keys.volumes] == [
        (volume.path, volume.fspf_path, volume.tag, volume.protection)
    ]
    assert keys.mrenclave == m.measurement.mrenclave
    service = session["services"][0]
    assert service["mrenclaves"] == [m.measurement.mrenclave]
    assert service["volumes"] == [{"name": "app_data", "path": "/app/data"}]
    assert session["volumes"] == [{"name": "app_data", "fspf_path": "/app/data/.sconify.fspf",
                                   "fspf_key": "$$SCONE::app_data_key:hex$$", "fspf_tag": volume.tag}]
    assert session["secrets"] == [{"name": "app_data_key", "kind": "binary", "export_public": False}]
    assert "fspf_path" not in service and "fspf_key" not in service
    assert service["command"] == "/usr/bin/python3.11 /app/main.py" and service["pwd"] == "/app"  # the measured executable
    # The policy: what the launcher grants the keys to, bound to the keys by runtime.json's SHA-256.
    assert keys.runtime_config_sha256 == m.runtime.files["/.sconify/runtime.json"]
    assert m.runtime.policy["command"] == ["python3", "/app/main.py"] and not m.runtime.policy["allow_args"]
    assert m.runtime.policy["service_command"] == ["/usr/bin/python3.11", "/app/main.py"]
    assert service["environment"] == m.runtime.policy["environment"] and "PATH" in service["environment"]
    assert stat.S_IMODE((python_converted.workdir / "keys.json").stat().st_mode) == 0o600
    regions = {r["path"]: (r["kind"], r["protection"]) for r in m.all_regions()}
    assert regions == {
        "/": ("kernel", "not-protected"),
        "/app/data": ("kernel", "encrypted"),
        "/tmp": ("ephemeral", "encrypted"),
    }
    assert m.regions == [{"path": "/", "kind": "kernel", "protection": "not-protected"},
                         {"path": "/tmp", "kind": "ephemeral", "protection": "encrypted"}]


def test_no_key_reaches_the_image_manifest_or_session(python_converted):
    needles = [needle for v in python_converted.keys.volumes for needle in (v.fspf_key, v.fspf_key.hex().encode())]
    assert needles
    texts = [(python_converted.workdir / n).read_bytes() for n in ("manifest.json", "session.yaml")]
    layout = Path(python_converted.ref.split(":")[1])
    texts += [blob.read_bytes() for blob in (layout / "blobs" / "sha256").iterdir()]
    for text in texts:
        for needle in needles:
            assert needle not in text


def test_python_output_is_accepted_by_skopeo_and_umoci(python_converted, tmp_path):
    layout = python_converted.ref.split(":")[1]
    inspect = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout}:python"], capture_output=True, text=True, check=False
    )
    assert inspect.returncode == 0, inspect.stderr
    assert (
        json.loads(inspect.stdout)["Labels"]["io.sconify.mrenclave"]
        == python_converted.manifest.measurement.mrenclave
    )
    # umoci 0.4.7 does not read zstd layers: give it a gzip copy made by skopeo, the oracle
    gz = tmp_path / "gz"
    copy = subprocess.run(
        ["skopeo", "copy", "--dest-compress-format", "gzip", f"oci:{layout}:python", f"oci:{gz}:python"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert copy.returncode == 0, copy.stderr
    unpack = subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", f"{gz}:python", str(tmp_path / "bundle")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert unpack.returncode == 0, unpack.stderr
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "usr/bin/python3.11").is_file()
    assert not (rootfs / "app/main.py").exists()
    assert (rootfs / "app/data/.sconify.fspf").is_file()


def keys_mount(converted: Converted) -> dict:
    """The conversion's keys directory where the runtime looks for it (docs/runtime.md)."""
    return {str(converted.workdir): {"bind": "/run/secrets/sconify", "mode": "ro"}}


def test_python_output_runs_in_docker(python_converted, run_in_docker):
    out = run_in_docker(python_converted.ref, ["python3", "--version"], volumes=keys_mount(python_converted))
    assert out.startswith("Python 3.11")


def test_keep_embedded_output_runs_the_app(python_image, tmp_path, run_in_docker, python_converted):
    kept = convert(tmp_path, f"oci:{python_image}:latest", "kept", "--keep-embedded")
    report = json.loads(run_in_docker(kept.ref))  # the image's own CMD: python3 /app/main.py
    assert report["rows"] > 0 and report["openssl"].startswith("OpenSSL")
    # the same code is embedded either way, so the measurement does not change
    assert kept.manifest.embedfs.root_hash == python_converted.manifest.embedfs.root_hash
    assert kept.manifest.measurement.mrenclave == python_converted.manifest.measurement.mrenclave


# --- the Node.js service ------------------------------------------------------------------


def test_node_from_oci_archive_embeds_node_modules_and_libnode(node_converted, tmp_path):
    m = node_converted.manifest
    assert m.executable.recipe == "node"
    assert m.executable.path.startswith("/usr/bin/node")
    names = set(m.embedfs.files)
    assert "/app/index.js" in names
    assert any(n.startswith("/app/node_modules/ms/") for n in names)
    assert any("libnode.so" in n for n in names), "Debian's node keeps its engine in libnode"
    exe = extract_executable(node_converted, tmp_path)
    open_embedded(exe).verify()
    volumes = {v.path: v.protection for v in m.volumes}
    assert volumes == {"/app/data": "encrypted", "/etc/sconify-demo": "authenticated"}
    protections = {f["protection"] for f in m.protected_files().values()}
    assert protections == {"encrypted", "authenticated"}


def test_node_output_runs_in_docker(node_converted, run_in_docker):
    # The app, its node_modules and /usr/share/nodejs are served from the embedfs by the runtime;
    # /app/data is encrypted and /etc/sconify-demo authenticated, both read through the shield.
    report = json.loads(run_in_docker(node_converted.ref, volumes=keys_mount(node_converted)))
    assert report["rows"] == 400 and report["greeting"] == "hello from the app layer"


def test_node_authenticated_files_stay_plaintext_and_verify(node_converted, node_image):
    out = RootFS.from_image(read_image(node_converted.ref))
    original = RootFS.from_image(read_image(f"oci:{node_image}:latest"))
    for path, info in node_converted.manifest.protected_files().items():
        if info["protection"] == "authenticated":
            assert file_bytes(out, path) == file_bytes(original, path)
        assert shield_of(node_converted, info["volume"], out).read(path) == file_bytes(original, path)


@pytest.mark.docker
def test_node_from_docker_daemon_to_docker_daemon(node_image, docker_client, tmp_path):
    write_image(read_image(f"oci:{node_image}:latest"), "docker-daemon:sconify-test/node-in:1")
    try:
        result = sconify_cli(
            "--from",
            "docker-daemon:sconify-test/node-in:1",
            "--to",
            "docker-daemon:sconify-test/node-out:1",
            "--dir",
            "/app/data",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr
        manifest = Manifest.read(tmp_path / "manifest.json")
        out = docker_client.containers.run(
            "sconify-test/node-out:1", ["node", "--version"], remove=True, network_disabled=True,
            volumes={str(tmp_path): {"bind": "/run/secrets/sconify", "mode": "ro"}},
        )
        assert out.decode().startswith("v18.")
        labels = docker_client.images.get("sconify-test/node-out:1").labels
        assert labels["io.sconify.mrenclave"] == manifest.measurement.mrenclave
    finally:
        for name in ("sconify-test/node-in:1", "sconify-test/node-out:1"):
            try:
                docker_client.images.remove(name, force=True)
            except Exception:  # not created: nothing to remove
                pass


def test_python_from_docker_archive(python_image, tmp_path):
    archive = tmp_path / "in.tar"
    write_image(read_image(f"oci:{python_image}:latest"), f"docker-archive:{archive}:demo/python:1")
    converted = convert(tmp_path / "conv", f"docker-archive:{archive}", "py", "--dir", "/app/data")
    assert converted.manifest.executable.path == "/usr/bin/python3.11"


# --- reproducibility ----------------------------------------------------------------------


def run_api(source: str, tmp: Path, **options) -> Manifest:
    tmp.mkdir(parents=True, exist_ok=True)
    result = sconify_image(
        ConvertOptions(
            source=source,
            destination=f"oci:{tmp / 'out'}:x",
            manifest_out=str(tmp / "m.json"),
            session_out=str(tmp / "s.yaml"),
            keys_out=str(tmp / "k.json"),
            encrypted_dirs=["/app/data"],
            **options,
        )
    )
    return result.manifest


def drop_key_dependent(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for dotted in KEY_DEPENDENT_FIELDS:
        section, name = dotted.split(".")
        for part in doc[section[:-2]] if section.endswith("[]") else [doc[section]]:
            part.pop(name, None)
    doc["output"].pop("reference")
    return doc


def test_same_input_twice_gives_the_same_measurement_and_stable_fields(python_image, tmp_path):
    source = f"oci:{python_image}:latest"
    first, second = run_api(source, tmp_path / "a"), run_api(source, tmp_path / "b")
    assert first.measurement.mrenclave == second.measurement.mrenclave
    assert first.code_layer == second.code_layer
    assert first.volumes[0].tag != second.volumes[0].tag, "fresh keys give a fresh fspf"
    assert drop_key_dependent(first.to_dict()) == drop_key_dependent(second.to_dict())


def test_deterministic_keys_give_identical_images(python_image, tmp_path):
    seed = tmp_path / "seed.bin"
    seed.write_bytes(bytes(range(32)))
    source = f"oci:{python_image}:latest"
    first = run_api(source, tmp_path / "a", deterministic_keys_from=str(seed))
    second = run_api(source, tmp_path / "b", deterministic_keys_from=str(seed))
    assert first.output.manifest_digest == second.output.manifest_digest
    assert (tmp_path / "a" / "m.json").read_bytes().replace(b"/a/", b"/b/") == (
        tmp_path / "b" / "m.json"
    ).read_bytes()
    assert (tmp_path / "a" / "k.json").read_bytes() == (tmp_path / "b" / "k.json").read_bytes()


@pytest.mark.parametrize("kind", ["python", "node"])
def test_the_index_pass_keeps_what_the_conversion_may_read(kind, python_image, node_image):
    """contents_to_keep guesses from the config and options which files' bytes the kept layer
    tars need: the recipe's code, data regions, libraries, PATH, the command's files."""
    image = read_image(f"oci:{python_image if kind == 'python' else node_image}:latest")
    keep = contents_to_keep(image.config, ConvertOptions(source="s", destination="d", encrypted_dirs=["/srv/secret"]))
    common = ["srv/secret/key.pem", "usr/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libm.so.6",
              "usr/bin/" + ("python3.11" if kind == "python" else "node"), "app/" + ("main.py" if kind == "python" else "index.js"),
              # what sconify.conversion.codepaths may follow beyond the recipe: venvs, .pth, application places
              "opt/venv/pyvenv.cfg", "opt/venv/lib/python3.11/site-packages/easy.pth", "srv/app/__init__.py",
              "usr/src/app/server.js", "usr/local/bin/docker-entrypoint.sh"]
    wanted = {"python": ["usr/lib/python3.11/json/decoder.py", "etc/python3.11/sitecustomize.py", "usr/lib/python3/dist-packages/yaml/__init__.py",
                         "usr/local/lib/python3.11/site-packages/mod.cpython-311-x86_64-linux-gnu.so"],
              "node": ["app/node_modules/left-pad/index.js", "app/package.json", "usr/share/nodejs/acorn/dist/acorn.js"]}[kind]
    unwanted = ["usr/share/doc/libc6/copyright", "etc/passwd", "var/lib/dpkg/status", "app/static/logo.png",
                "app/README.md"]
    assert all(keep(path) for path in common + wanted), [p for p in common + wanted if not keep(p)]
    assert not any(keep(path) for path in unwanted), [p for p in unwanted if keep(p)]


def test_no_guess_when_everything_is_read_or_the_command_is_unknown(python_image):
    config = read_image(f"oci:{python_image}:latest").config
    assert contents_to_keep(config, ConvertOptions(source="s", destination="d", authenticate_root=True)) is None
    assert contents_to_keep({"config": {"Cmd": ["/start.sh"]}}, ConvertOptions(source="s", destination="d")) is None
    assert contents_to_keep({"config": {"Cmd": ["/start.sh"]}}, ConvertOptions(source="s", destination="d", binary="node"))


def test_a_wrong_guess_costs_time_not_correctness(python_image, tmp_path, monkeypatch):
    """Files the index pass did not keep are read by a second pass over their layer: a guess
    that keeps nothing gives the same measurement and embedded files, and the output verifies."""
    source = f"oci:{python_image}:latest"
    seed = tmp_path / "seed.bin"
    seed.write_bytes(bytes(range(32)))
    guessed = run_api(source, tmp_path / "guessed", deterministic_keys_from=str(seed))
    monkeypatch.setattr(pipeline, "contents_to_keep", lambda config, options: lambda path: False)
    wrong = run_api(source, tmp_path / "wrong", deterministic_keys_from=str(seed))
    assert wrong.output.manifest_digest == guessed.output.manifest_digest
    assert wrong.measurement.mrenclave == guessed.measurement.mrenclave
    out = tmp_path / "wrong"
    result = subprocess.run(
        [sys.executable, "-m", "sconify", "verify", f"oci:{out / 'out'}:x", "--manifest", str(out / "m.json"),
         "--keys", str(out / "k.json")], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_measurement_parameters_change_mrenclave(python_image, tmp_path):
    source = f"oci:{python_image}:latest"
    base = run_api(source, tmp_path / "a", dry_run=False)
    bigger = run_api(source, tmp_path / "b", heap_size=128 << 20, threads=4)
    assert bigger.measurement.heap_size == 128 << 20 and bigger.measurement.threads == 4
    assert bigger.measurement.mrenclave != base.measurement.mrenclave
    assert bigger.embedfs.root_hash == base.embedfs.root_hash


# --- bad input ----------------------------------------------------------------------------


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_script_entrypoint_is_followed_to_its_interpreter_and_measured(python_image, tmp_path):
    from sconify.image.mutate import with_config

    image = read_image(f"oci:{python_image}:latest")
    config = image.config
    config["config"]["Entrypoint"] = ["/usr/bin/py3compile"]  # Debian's, a #!/usr/bin/python3 script
    config["config"]["Cmd"] = []
    write_image(with_config(image, config), f"oci:{tmp_path / 'script'}:s")
    converted = convert(tmp_path / "conv", f"oci:{tmp_path / 'script'}:s", "s")
    executable = converted.manifest.executable
    assert executable.path == "/usr/bin/python3.11"
    assert any("py3compile" in step for step in executable.why) and any("#!" in step for step in executable.why)
    assert "/usr/bin/py3compile" in converted.manifest.embedfs.files  # the script is code: measured
    assert converted.session["services"][0]["command"].startswith("/usr/bin/python3.11 /usr/bin/py3compile")


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--dir", "/no/such/dir"], "--dir /no/such/dir is not a directory in the image"),
        (["--recipe", "cobol"], "recipe 'cobol'"),
        (["--binary", "/usr/bin/nothing"], "--binary /usr/bin/nothing does not exist"),
        (["--heap", "lots"], "is not a size"),
        (["--heap", "64T"], "must be a positive multiple of 4 KiB of at most"),
        (["--threads", "100000"], "--threads must be between 1 and"),
        (["--fs-dir", "/nope"], "--fs-dir /nope does not exist in the image"),
        (["--fs-file", "/app/data/config.json", "--dir", "/app/data"], "is both code"),
        (["--dir", "/usr/bin"], "the executable /usr/bin/python3.11 lies in the encrypted region /usr/bin"),
        (["--allow-env", "NODE OPTIONS"], "--allow-env 'NODE OPTIONS' is not an environment variable name"),
        (["--allow-env", "PYTHONPATH=/x"], "--allow-env 'PYTHONPATH=/x' is not an environment variable name"),
    ],
)
def test_bad_options_give_one_line_and_no_output(python_image, tmp_path, extra, expected):
    result = sconify_cli(
        "--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'o'}:o", *extra, cwd=tmp_path
    )
    line = one_line_error(result)
    assert expected in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_allow_args_without_a_recorded_command_is_refused(python_image, tmp_path):
    """With no ENTRYPOINT or CMD, every argv starts with the (empty) recorded command: appended
    host arguments would make any command the measured one."""
    from sconify.image.mutate import with_config

    image = read_image(f"oci:{python_image}:latest")
    config = image.config
    config["config"]["Cmd"] = []
    source = tmp_path / "src"
    write_image(with_config(image, config), f"oci:{source}:s")
    out = tmp_path / "out"
    out.mkdir()
    line = one_line_error(sconify_cli("--from", f"oci:{source}:s", "--to", f"oci:{out / 'o'}:o", "--binary",
                                      "/usr/bin/python3.11", "--allow-args", cwd=out))
    assert "--allow-args" in line and "no ENTRYPOINT or CMD" in line
    assert sorted(p.name for p in out.iterdir()) == []


def test_output_equal_to_input_is_refused(python_image, tmp_path):
    before = sorted(p.stat().st_mtime_ns for p in Path(python_image).rglob("*"))
    line = one_line_error(
        sconify_cli(
            "--from", f"oci:{python_image}:latest", "--to", f"oci:{python_image}:latest", cwd=tmp_path
        )
    )
    assert "would overwrite the input image" in line
    assert sorted(p.stat().st_mtime_ns for p in Path(python_image).rglob("*")) == before


def test_dry_run_writes_nothing_and_json_reports_the_plan(python_image, tmp_path):
    result = sconify_cli(
        "--from",
        f"oci:{python_image}:latest",
        "--to",
        f"oci:{tmp_path / 'o'}:o",
        "--dir",
        "/app/data",
        "--dry-run",
        "--json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["executable"] == "/usr/bin/python3.11" and plan["code_files"] > 300
    assert plan["data_files"]["/app/data"] >= 3
    assert list(tmp_path.iterdir()) == []


def test_authenticate_root_and_inline_keys(python_image, tmp_path):
    from sconify.verify import verify_image

    converted = convert(
        tmp_path,
        f"oci:{python_image}:latest",
        "root",
        "--dir",
        "/app/data",
        "--authenticate-root",
        "--inline-keys",
        "--name",
        "audited-python",
    )
    m = converted.manifest
    volumes = {v.path: (v.fspf_path, v.protection) for v in m.volumes}
    assert volumes == {"/": ("/.sconify.fspf", "authenticated"), "/app/data": ("/app/data/.sconify.fspf", "encrypted")}
    files = m.protected_files()
    authenticated = [p for p, f in files.items() if f["protection"] == "authenticated"]
    assert "/etc/group" in authenticated and "/bin/tar" in authenticated
    assert "/usr/bin/python3.11" not in files, "the executable is measured, not shielded"
    assert not set(files) & set(m.embedfs.removed), "embedded files are gone from the rootfs"
    assert "/usr/lib/python3.11/test/__init__.py" in authenticated, "files the recipe excludes stay, shielded"
    assert not set(m.volume("/").files) & set(m.volume("/app/data").files), "each file in one volume"
    assert "/.sconify.fspf" not in files and "/app/data/.sconify.fspf" not in files
    assert converted.session["name"] == "audited-python"
    inline = {v["fspf_path"]: v["fspf_key"] for v in converted.session["volumes"]}
    assert inline == {k.fspf_path: k.fspf_key.hex() for k in converted.keys.volumes}
    assert {v["name"] for v in converted.session["volumes"]} == {"root", "app_data"}
    assert "secrets" not in converted.session
    assert stat.S_IMODE((tmp_path / "session.yaml").stat().st_mode) == 0o600
    report = verify_image(converted.ref, m, keys=converted.keys)
    assert report.ok, [c for c in report.checks if not c.ok]


def test_fs_file_and_fs_dir_reach_the_plan(python_image, tmp_path):
    base = sconify_cli("--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'o'}:o",
                       "--dry-run", "--json", cwd=tmp_path)
    more = sconify_cli("--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'o'}:o",
                       "--fs-file", "/etc/sconify-demo/defaults.json", "--fs-dir", "/etc/dpkg",
                       "--dry-run", "--json", cwd=tmp_path)
    assert base.returncode == more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["code_files"] > json.loads(base.stdout)["code_files"] + 1


def test_out_dir_that_is_a_file_is_refused(python_image, tmp_path):
    (tmp_path / "taken").write_text("")
    line = one_line_error(sconify_cli("--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'o'}:o",
                                      "--out-dir", str(tmp_path / "taken"), cwd=tmp_path))
    assert "is not a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_deterministic_keys_depend_on_what_is_built():
    from sconify.outputs.keys import DeterministicRandom

    seed = bytes(range(32))
    assert DeterministicRandom(seed, b"input A")(32) == DeterministicRandom(seed, b"input A")(32)
    assert DeterministicRandom(seed, b"input A")(32) != DeterministicRandom(seed, b"input B")(32)
