"""--encrypted-code DIR on the demos: their code is embedded encrypted under a code key that
only the keys file holds, still measured, gone from the rootfs, and run by the shield with the
keys (the original's output) or refused without them (one line). The Python demo is converted
with --encrypted-code /app alone, the Node demo with --dir /app/data too (a volume under the
encrypted root stays a volume).

The oracle for "no plaintext" is the demo's own source (sconify.demo.apps): its distinctive
lines, and the zstd frame a plain embedfs member would have stored for each file."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import zstandard

from embedfs.archive import DEFAULT_LEVEL
from embedfs.elf import open_embedded
from sconify.demo.apps import NODE_INDEX, PYTHON_MAIN, PYTHON_SERVICE
from sconify.image.model import canonical_json, make_image
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image, write_image
from sconify.outputs.keys import KeysFile
from sconify.conversion.pipeline import ConvertOptions, sconify_image

pytestmark = pytest.mark.slow

SOURCES = {"app/main.py": PYTHON_MAIN, **PYTHON_SERVICE}
NODE_SOURCES = {"app/index.js": NODE_INDEX}


def secrets_of(sources: dict[str, str]) -> list[bytes]:
    """What must appear in no blob: each file's longer lines, and its content as a plain
    member's zstd frame."""
    found = []
    for text in sources.values():
        found += [line.strip().encode() for line in text.splitlines() if len(line.strip()) >= 24][:6]
        found.append(zstandard.ZstdCompressor(level=DEFAULT_LEVEL, write_content_size=True,
                                              write_checksum=False).compress(text.encode()))
    return found


def convert(layout: Path, out: Path, seed: Path | None = None, **options) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    sconify_image(ConvertOptions(
        source=f"oci:{layout}:latest", destination=f"oci:{out / 'image'}:latest",
        encrypted_code=["/app"], manifest_out=str(out / "manifest.json"),
        session_out=str(out / "session.yaml"), keys_out=str(out / "keys.json"),
        deterministic_keys_from=str(seed) if seed else None, **options))
    return out


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.bin"
    path.write_bytes(bytes(range(64)))
    return path


@pytest.fixture(scope="module")
def converted(python_image, seed, tmp_path_factory) -> Path:
    return convert(python_image, tmp_path_factory.mktemp("enc"), seed=seed)


@pytest.fixture(scope="module")
def node_converted(node_image, tmp_path_factory) -> Path:
    return convert(node_image, tmp_path_factory.mktemp("enc-node"), encrypted_dirs=["/app/data"])


def blobs(layout: Path) -> dict[str, bytes]:
    """Every blob of an OCI layout, layers decompressed."""
    found = {}
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        elif data[:4] == b"\x28\xb5\x2f\xfd":
            data = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
        found[blob.name] = data
    return found


def new_blobs(out: Path) -> dict[str, bytes]:
    """The blobs sconify wrote: every one but the input's layers."""
    manifest = json.loads((out / "manifest.json").read_text())
    inputs = {digest.split(":")[1] for digest in manifest["input"]["layer_digests"]}
    return {name: data for name, data in blobs(out / "image").items() if name not in inputs}


def test_the_code_key_is_in_the_keys_file_only(converted: Path) -> None:
    keys = KeysFile.read(converted / "keys.json")
    assert keys.code_key is not None and len(keys.code_key) == 32
    secret = keys.code_key.hex().encode()
    for name in ("manifest.json", "session.yaml"):
        assert secret not in (converted / name).read_bytes(), name
    for name, data in blobs(converted / "image").items():
        assert secret not in data and keys.code_key not in data, name


@pytest.mark.parametrize("kind", ["python", "node"])
def test_the_executable_and_the_new_layers_hold_no_plaintext_of_encrypted_code(kind, request) -> None:
    converted = request.getfixturevalue("converted" if kind == "python" else "node_converted")
    secrets = secrets_of(SOURCES if kind == "python" else NODE_SOURCES)
    written = new_blobs(converted)
    assert len(written) >= 5  # code, data and runtime layers, config, manifest
    for name, data in written.items():
        for secret in secrets:
            assert secret not in data, f"blob {name} holds {secret[:40]!r}"


def test_no_blob_holds_the_plaintext_of_encrypted_code(converted: Path, python_image: Path) -> None:
    # A line the Debian base layer holds too (``from pathlib import Path``) is public, not the app's.
    base = blobs(python_image)[read_image(f"oci:{python_image}:latest").layers[0].digest.split(":")[1]]
    secrets = [secret for secret in secrets_of(SOURCES) if secret not in base]
    assert len(secrets) >= 8
    for name, data in blobs(converted / "image").items():
        for secret in secrets:
            assert secret not in data, f"blob {name} holds {secret[:40]!r}"


def test_encrypted_code_is_measured_removed_and_verifiable(converted: Path, tmp_path: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    removed = set(manifest["embedfs"]["removed"])
    assert {"/" + path for path in SOURCES} <= removed
    keys = KeysFile.read(converted / "keys.json")
    fs = RootFS.from_image(read_image(f"oci:{converted / 'image'}:latest"))
    exe = tmp_path / "exe"
    with fs, exe.open("wb") as out:
        entry = fs.entries[manifest["executable"]["path"].lstrip("/")]
        for _, stream in fs.iter_files([entry.path]):
            shutil.copyfileobj(stream, out)
    assert not any(path in fs.entries and fs.entries[path].kind == "file" for path in SOURCES)
    with open_embedded(exe) as archive:
        assert {m.path for m in archive.encrypted} >= set(SOURCES)
        assert archive.verify().file_count == manifest["embedfs"]["file_count"]  # no key needed
    with open_embedded(exe, keys.code_key) as archive:
        for path, text in SOURCES.items():
            assert archive.read(path) == text.encode()


def test_verify_passes_with_and_without_the_keys(converted: Path) -> None:
    import subprocess
    import sys

    base = [sys.executable, "-m", "sconify", "verify", f"oci:{converted / 'image'}:latest",
            "--manifest", str(converted / "manifest.json"), "--json"]
    for extra in ([], ["--keys", str(converted / "keys.json")]):
        run = subprocess.run(base + extra, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
        assert checks["encrypted code"]["ok"]
        assert ("decrypted" in checks["encrypted code"]["detail"]) == bool(extra)


def test_deterministic_keys_give_the_same_image_and_keep_embedded_still_removes(
        python_image, converted: Path, seed: Path, tmp_path: Path) -> None:
    again = convert(python_image, tmp_path / "again", seed=seed, keep_embedded=True)
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (converted, again))
    assert first["measurement"]["mrenclave"] == second["measurement"]["mrenclave"]
    assert KeysFile.read(converted / "keys.json").code_key == KeysFile.read(again / "keys.json").code_key
    # --keep-embedded keeps integrity-only code in place, never encrypted code
    assert {"/" + path for path in SOURCES} <= set(second["embedfs"]["removed"])
    assert "/usr/lib/python3.11/os.py" not in second["embedfs"]["removed"]


# --- run --------------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize("kind", ["python", "node"])
def test_the_converted_image_runs_with_the_keys_and_refuses_without(kind, request, docker_client, engine_images,
                                                                    tmp_path: Path) -> None:
    from test_runtime_docker import SECRETS, run

    converted = request.getfixturevalue("converted" if kind == "python" else "node_converted")
    original = engine_images.loaded(f"oci:{request.getfixturevalue(f'{kind}_image')}:latest")
    tag = f"sconify-enc-{kind}-{uuid.uuid4().hex[:8]}:conf"
    archive = tmp_path / "conf.tar"
    write_image(read_image(f"oci:{converted / 'image'}:latest"), f"docker-archive:{archive}:{tag}")
    with archive.open("rb") as handle:
        docker_client.images.load(handle)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    shutil.copy(converted / "keys.json", secrets / "keys.json")
    try:
        status, expected, _ = run(docker_client, original)
        assert status == 0 and json.loads(expected)["rows"] > 0
        container = docker_client.containers.run(tag, detach=True, network_disabled=True,
                                                 volumes={str(secrets): {"bind": SECRETS, "mode": "rw"}})
        try:
            assert container.wait(timeout=120)["StatusCode"] == 0, container.logs().decode()
            assert container.logs(stdout=True, stderr=False).decode() == expected
            # nothing compiled from the secret code was written beside it (CPython's .pyc)
            changed = [c["Path"] for c in container.diff() or []]
            assert not [p for p in changed if p.startswith("/app") and p.endswith(".pyc")], changed
        finally:
            container.remove(force=True)
        status, out, err = run(docker_client, tag, environment={"SCONIFY_LOG": "stderr"})  # no keys mounted
        assert status != 0 and out == ""
        if kind == "python":  # no volume: the service starts, and cannot read its code (one line in the log)
            shield_lines = [line for line in err.splitlines() if line.startswith("sconify-shield:")]
            assert len(shield_lines) == 1 and "/app/main.py is encrypted code" in shield_lines[0], err
        else:  # a volume: the launcher refuses before anything runs
            assert err.startswith("sconify-run: no keys file") and len(err.splitlines()) == 1, err
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.parametrize("root, refusal", [
    ("/usr/bin", "holds /usr/bin/python3.11, the executable"),
    ("/", "is not a directory of the image"),
    ("/nowhere", "does not exist in the image"),
])
def test_what_cannot_be_encrypted_code_is_refused(python_image, tmp_path: Path, root: str, refusal: str) -> None:
    from sconify.errors import UsageError

    with pytest.raises(UsageError, match=refusal):
        sconify_image(ConvertOptions(source=f"oci:{python_image}:latest", destination=f"oci:{tmp_path / 'x'}:latest",
                                     encrypted_code=[root], dry_run=True))


def test_verify_without_keys_names_a_layer_that_holds_plaintext_of_encrypted_code(converted: Path, python_image: Path,
                                                                                  tmp_path: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["embedfs"]["encrypted_roots"] == ["/app"]
    ref = f"oci:{converted / 'image'}:latest"

    def verify(image_ref: str) -> tuple[int, dict]:
        result = subprocess.run([sys.executable, "-m", "sconify", "verify", image_ref, "--manifest",
                                 str(converted / "manifest.json"), "--json"], capture_output=True, text=True,
                                timeout=600, check=False)
        assert "Traceback" not in result.stderr, result.stderr
        return result.returncode, {c["name"]: c for c in json.loads(result.stdout)["checks"]}

    code, checks = verify(ref)
    check = checks["no plaintext of encrypted volumes in any layer"]
    assert code == 0 and check["ok"] and "1 encrypted code directories" in check["detail"]
    # the input's app layer (the plaintext of /app) put back under the new layers
    output, source = read_image(ref), read_image(f"oci:{python_image}:latest")
    config = output.config
    config["rootfs"]["diff_ids"][1] = source.diff_ids[1]
    old_way = f"oci:{tmp_path / 'old'}:v"
    write_image(make_image(canonical_json(config), output.layers[:1] + source.layers[1:2] + output.layers[2:], "old"),
                old_way)
    code, checks = verify(old_way)
    assert code == 1
    detail = checks["no plaintext of encrypted volumes in any layer"]["detail"]
    assert detail.startswith(f"layer 1 ({source.diff_ids[1]}) holds ") and " /app/" in detail


def test_the_plan_names_encrypted_code_and_its_forbidden_roots(python_image, tmp_path: Path) -> None:
    result = sconify_image(ConvertOptions(source=f"oci:{python_image}:latest",
                                          destination=f"oci:{tmp_path / 'x'}:latest", encrypted_code=["/app"],
                                          encrypted_dirs=["/app/data"], dry_run=True))
    plan = result.plan
    assert plan.encrypted_code_roots == ["/app"]
    assert {prefix.path for prefix in plan.protected} == {"/app", "/app/data"}
    assert [rewrite.index for rewrite in plan.rewrites] == [1]  # the app layer loses /app's files
    assert set(SOURCES) <= set(plan.encrypted_code) and not [p for p in plan.encrypted_code if p.startswith("app/data/")]
    assert plan.data_files["/app/data"]  # a volume under the encrypted root stays a volume
    assert set(plan.encrypted_code) <= set(plan.removed_code())
