"""Generic images and deployments (docs/deploy.md): the curator's `sconify-image --generic` makes
nothing secret; each deployment's `sconify deploy` makes its own secrets and volume keys, keeps
them, never prints them, and refuses a manifest the curator did not sign.

The Kubernetes objects are validated by the `kubernetes` Python client's models (the `test` extra).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from test_attach import write_keys
from test_registry import REGISTRY, plain_registry, pushed_app  # noqa: F401 - fixtures

from sconify.conversion.pipeline import ConvertOptions, sconify_image
from sconify.errors import UsageError
from sconify.image.rootfs import RootFS
from sconify.image.transports import read_image
from sconify.outputs.manifest import Manifest
from sconify.verify import verify_image
from sconify.verify.signature import sign_manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
VOLUME = "/app/state"  # not in the demo image: a declared, empty volume


def sconify(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "sconify", *args], capture_output=True, text=True, check=False,
                          timeout=300, env=env, cwd=cwd)


def one_line_error(run: subprocess.CompletedProcess, code: int = 2) -> str:
    assert run.returncode == code, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


def convert_generic(python_image: Path, out: Path, **options) -> Path:
    """A generic conversion of the Python demo into ``out``: its image is oci:OUT/image:v."""
    sconify_image(ConvertOptions(
        source=f"oci:{python_image}:latest", destination=f"oci:{out / 'image'}:v", encrypted_dirs=[VOLUME],
        generic=True, manifest_out=str(out / "outputs" / "manifest.json"),
        session_out=str(out / "outputs" / "session.yaml"), keys_out=str(out / "outputs" / "keys.json"), **options))
    return out


@pytest.fixture(scope="module")
def curator(python_image, tmp_path_factory) -> dict:
    """A generic image, its outputs, and the curator's signature of its manifest."""
    out = convert_generic(python_image, tmp_path_factory.mktemp("curator"))
    outputs = out / "outputs"
    key, public = write_keys(out, "curator")
    sign_manifest(str(outputs / "manifest.json"), str(key), str(outputs / "manifest.json.intoto.jsonl"))
    return {"image": f"oci:{out / 'image'}:v", "outputs": outputs, "manifest": outputs / "manifest.json",
            "public": public, "key": key, "root": out}


@pytest.fixture(scope="module")
def second_version(python_image, tmp_path_factory) -> dict:
    """Another version of the generic image (another heap: another MRENCLAVE)."""
    out = convert_generic(python_image, tmp_path_factory.mktemp("curator-v2"), heap_size=128 << 20)
    return {"image": f"oci:{out / 'image'}:v", "manifest": out / "outputs" / "manifest.json"}


def init(curator: dict, directory: Path, *extra: str, name: str = "deployment-a") -> subprocess.CompletedProcess:
    return sconify("deploy", "init", curator["image"], "--name", name, "--manifest", str(curator["manifest"]),
                   "--signer", str(curator["public"]), "--out", str(directory), *extra)


FULL = ("--secret", "DB_PASSWORD:ascii", "--secret", "api_token:binary:16", "--secret",
        "server_tls:x509:app.example.com", "--env", "DB_PASSWORD=$$SCONE::DB_PASSWORD$$")


def secret_values(directory: Path) -> list[str]:
    """Every secret value of a deployment, in each form a command could print it."""
    doc = json.loads((directory / "secrets.json").read_text())
    values = []
    for entry in doc["secrets"].values():
        if entry["kind"] == "ascii":
            values.append(entry["value"])
        elif entry["kind"] == "binary":
            raw = bytes.fromhex(entry["value_hex"])
            values += [entry["value_hex"], base64.b64encode(raw).decode()]
        else:
            body = "".join(entry["private_key"].splitlines()[1:-1])
            values += [body[:48], body[-48:]]
    return values


def assert_no_value(values: list[str], *runs: subprocess.CompletedProcess) -> None:
    for run in runs:
        for value in values:
            assert value not in run.stdout and value not in run.stderr, "a command printed a secret value"


# --- the curator ----------------------------------------------------------------------------------


def test_a_generic_image_has_no_key_and_declared_volumes(curator):
    outputs = curator["outputs"]
    assert sorted(p.name for p in outputs.iterdir()) == ["manifest.json", "manifest.json.intoto.jsonl", "session.yaml"]
    manifest = Manifest.read(curator["manifest"])
    doc = json.loads(curator["manifest"].read_text())
    assert doc["generic"] is True and doc["workdir"] == "/app"
    assert [(v.path, v.tag, v.files) for v in manifest.volumes] == [(VOLUME, "", {})]
    image = read_image(curator["image"])
    with RootFS.from_image(image) as fs:
        runtime = json.loads(fs.read(".sconify/runtime.json"))
        assert fs.entries["app/state"].kind == "dir"
        assert not any(path.startswith("app/state/") for path in fs.entries)  # no fspf, no file
    assert runtime["volumes"] == [{"path": VOLUME, "fspf_path": f"{VOLUME}/.sconify.fspf",
                                   "protection": "encrypted", "generic": True}]
    session = yaml.safe_load((outputs / "session.yaml").read_text())
    assert session["volumes"] == [{"name": "app_state", "fspf_path": f"{VOLUME}/.sconify.fspf",
                                   "fspf_key": "$$SCONE::app_state_key:hex$$"}]
    assert "--generic" in (outputs / "session.yaml").read_text().splitlines()[0]


def walk(doc, path=""):
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for item in doc:
            yield from walk(item, f"{path}[]")
    else:
        yield path, doc


def test_nothing_the_curator_writes_is_secret(curator):
    assert_no_key_material(curator["outputs"], curator["image"])


def assert_no_key_material(outputs: Path, image_ref: str) -> None:
    """Every file of the curator's output dir is scanned: no private key, no key value (only
    references), no field that holds a key; and the image's runtime config holds none either."""
    files = list(outputs.iterdir())
    for path in files:
        text = path.read_text()
        assert "PRIVATE KEY" not in text, path
        doc = yaml.safe_load(text)  # JSON and JSONL-of-one-line are YAML too
        for where, value in walk(doc):
            field = where.rsplit(".", 1)[-1]
            if "key" in field.lower() and field not in ("keyid",):
                assert isinstance(value, str) and value.startswith("$$SCONE::"), (path, where)
        assert not re.search(r"fspf_key\W+[0-9a-f]{64}", text), path
    image = read_image(image_ref)
    with RootFS.from_image(image) as fs:
        runtime = fs.read(".sconify/runtime.json").decode()
    assert "key" not in runtime.lower()


def test_a_generic_image_verifies_without_keys(curator):
    manifest = Manifest.read(curator["manifest"])
    report = verify_image(curator["image"], manifest, session=yaml.safe_load((curator["outputs"] / "session.yaml").read_text()))
    assert report.ok, [c for c in report.checks if not c.ok]
    assert any(c.name == f"volume {VOLUME}: declared (generic)" for c in report.checks)
    run = sconify("verify", curator["image"], "--manifest", str(curator["manifest"]), "--signer",
                  str(curator["public"]), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "keys" in one_line_error(sconify("verify", curator["image"], "--manifest", str(curator["manifest"]),
                                            "--keys", str(curator["manifest"])))


def test_files_under_a_generic_volume_are_refused_and_nothing_is_written(python_image, tmp_path):
    run = sconify("image", "--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'image'}:v",
                  "--generic", "--dir", "/app/data", "--out-dir", str(tmp_path / "out"))
    line = one_line_error(run)
    assert "/app/data" in line and "start empty" in line
    run = sconify("image", "--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'image'}:v",
                  "--generic", "--dir", "/app/data", "--public-initial-content", "--out-dir", str(tmp_path / "out"))
    assert "not supported yet" in one_line_error(run)
    for option in (["--inline-keys"], ["--runtime", "none"], ["--encrypted-code", "/app"]):
        run = sconify("image", "--from", f"oci:{python_image}:latest", "--to", f"oci:{tmp_path / 'image'}:v",
                      "--generic", "--dir", VOLUME, *option, "--out-dir", str(tmp_path / "out"))
        assert option[0] in one_line_error(run)
    assert not (tmp_path / "image").exists() and not (tmp_path / "out").exists()


# --- a deployment ---------------------------------------------------------------------------------


def test_init_writes_the_policy_and_the_secrets(curator, tmp_path):
    directory = tmp_path / "a"
    run = init(curator, directory, *FULL)
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE((directory / "secrets.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "policy.yaml").stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    manifest = Manifest.read(curator["manifest"])
    policy = yaml.safe_load((directory / "policy.yaml").read_text())
    service = policy["services"][0]
    assert policy["name"] == "deployment-a" and policy["version"] == "0.3"
    assert service["mrenclaves"] == [manifest.measurement.mrenclave]
    assert service["command"] == "/usr/bin/python3.11 /app/main.py" and service["pwd"] == "/app"
    assert service["environment"]["DB_PASSWORD"] == "$$SCONE::DB_PASSWORD$$"
    assert service["volumes"] == [{"name": "app_state", "path": VOLUME}]
    assert policy["volumes"] == [{"name": "app_state", "fspf_path": f"{VOLUME}/.sconify.fspf",
                                  "fspf_key": "$$SCONE::app_state_key:hex$$"}]
    assert {s["name"]: s["kind"] for s in policy["secrets"]} == {
        "app_state_key": "binary", "DB_PASSWORD": "ascii", "api_token": "binary", "server_tls": "x509"}
    [measurement] = policy["sconify"]["measurements"]
    assert measurement["mrenclave"] == manifest.measurement.mrenclave
    assert measurement["executable_sha256"] == manifest.executable.sconified_sha256
    assert measurement["runtime_config_sha256"] == manifest.runtime.files["/.sconify/runtime.json"]
    assert measurement["manifest_sha256"] == hashlib.sha256(curator["manifest"].read_bytes()).hexdigest()
    assert policy["sconify"]["state"] == {"dir": "/var/lib/sconify"}
    secrets = json.loads((directory / "secrets.json").read_text())
    assert secrets["schema"] == "sconify.secrets/v1" and secrets["policy"] == "deployment-a"
    values = secrets["secrets"]
    assert re.fullmatch(r"[A-Za-z0-9]{24}", values["DB_PASSWORD"]["value"])
    assert len(bytes.fromhex(values["api_token"]["value_hex"])) == 16
    assert len(bytes.fromhex(values["app_state_key"]["value_hex"])) == 32
    certificate = x509.load_pem_x509_certificate(values["server_tls"]["certificate"].encode())
    key = serialization.load_pem_private_key(values["server_tls"]["private_key"].encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert certificate.public_key() == key.public_key()
    assert certificate.subject.rfc4514_string() == "CN=app.example.com"
    assert "signed:" in run.stdout
    assert_no_value(secret_values(directory), run)


def test_init_again_keeps_every_secret_and_the_edits(curator, tmp_path):
    directory = tmp_path / "a"
    assert init(curator, directory, *FULL).returncode == 0
    before = json.loads((directory / "secrets.json").read_text())
    # The service provider edits the policy: a variable, and a secret with a value typed in.
    policy = yaml.safe_load((directory / "policy.yaml").read_text())
    policy["services"][0]["environment"]["MODE"] = "production"
    policy["secrets"].append({"name": "LICENSE", "kind": "ascii", "value": "typed-license-4711"})
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    again = init(curator, directory, "--secret", "extra:binary")
    assert again.returncode == 0, again.stderr
    after = json.loads((directory / "secrets.json").read_text())
    for name, entry in before["secrets"].items():
        assert after["secrets"][name] == entry, name
    assert after["secrets"]["LICENSE"] == {"kind": "ascii", "value": "typed-license-4711"}
    assert len(bytes.fromhex(after["secrets"]["extra"]["value_hex"])) == 32
    text = (directory / "policy.yaml").read_text()
    assert "typed-license-4711" not in text and "MODE: production" in text
    assert "secrets kept: " in again.stdout and "moved from policy.yaml: LICENSE" in again.stdout
    assert_no_value(secret_values(directory), again)
    # a third run with nothing new changes nothing
    files = {name: (directory / name).read_bytes() for name in ("policy.yaml", "secrets.json")}
    assert init(curator, directory).returncode == 0
    assert files == {name: (directory / name).read_bytes() for name in files}


def test_show_never_prints_a_value(curator, tmp_path):
    directory = tmp_path / "a"
    assert init(curator, directory, *FULL).returncode == 0
    password = json.loads((directory / "secrets.json").read_text())["secrets"]["DB_PASSWORD"]["value"]
    policy = yaml.safe_load((directory / "policy.yaml").read_text())
    policy["services"][0]["environment"]["LITERAL"] = password  # typed in by hand: still masked
    policy["secrets"].append({"name": "PENDING", "kind": "ascii", "value": "not-moved-yet-1234"})
    (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    run = sconify("deploy", "show", str(directory))
    assert run.returncode == 0, run.stderr
    assert "DB_PASSWORD" in run.stdout and "ascii, 24 characters" in run.stdout
    assert "x509, CN=app.example.com" in run.stdout and "binary, 32 bytes" in run.stdout
    assert "not-moved-yet-1234" not in run.stdout and "LITERAL: <hidden>" in run.stdout
    assert_no_value(secret_values(directory), run)


def test_add_accepts_another_version(curator, second_version, tmp_path):
    directory = tmp_path / "a"
    assert init(curator, directory, *FULL).returncode == 0
    keys = json.loads((directory / "secrets.json").read_text())
    run = sconify("deploy", "add", second_version["image"], str(directory), "--manifest",
                  str(second_version["manifest"]))
    assert run.returncode == 0, run.stderr
    assert "was not checked" in run.stderr  # no --signer: said, not silent
    first, second = Manifest.read(curator["manifest"]), Manifest.read(second_version["manifest"])
    assert first.measurement.mrenclave != second.measurement.mrenclave
    policy = yaml.safe_load((directory / "policy.yaml").read_text())
    assert policy["services"][0]["mrenclaves"] == [first.measurement.mrenclave, second.measurement.mrenclave]
    assert [m["mrenclave"] for m in policy["sconify"]["measurements"]] == policy["services"][0]["mrenclaves"]
    assert json.loads((directory / "secrets.json").read_text()) == keys
    again = sconify("deploy", "add", second_version["image"], str(directory), "--manifest",
                    str(second_version["manifest"]))
    assert again.returncode == 0 and "already accepted" in again.stdout
    assert len(yaml.safe_load((directory / "policy.yaml").read_text())["sconify"]["measurements"]) == 2
    assert_no_value(secret_values(directory), run, again)


def test_two_deployments_of_one_image_have_their_own_keys(curator, tmp_path):
    assert init(curator, tmp_path / "a", *FULL).returncode == 0
    assert init(curator, tmp_path / "b", *FULL, name="deployment-b").returncode == 0
    a = json.loads((tmp_path / "a" / "secrets.json").read_text())["secrets"]
    b = json.loads((tmp_path / "b" / "secrets.json").read_text())["secrets"]
    assert set(a) == set(b)
    for name in a:
        assert a[name] != b[name], name
    policy_a = yaml.safe_load((tmp_path / "a" / "policy.yaml").read_text())
    policy_b = yaml.safe_load((tmp_path / "b" / "policy.yaml").read_text())
    assert policy_a["sconify"]["measurements"] == policy_b["sconify"]["measurements"]


# --- signatures ---------------------------------------------------------------------------------


def test_a_bad_or_missing_signature_is_refused_and_nothing_is_written(curator, tmp_path):
    _, other = write_keys(tmp_path, "other")
    run = sconify("deploy", "init", curator["image"], "--name", "x", "--manifest", str(curator["manifest"]),
                  "--signer", str(other), "--out", str(tmp_path / "bad-key"))
    assert "signature" in one_line_error(run, 1)
    # a manifest changed after it was signed
    changed = tmp_path / "changed" / "manifest.json"
    changed.parent.mkdir()
    doc = json.loads(curator["manifest"].read_text())
    doc["workdir"] = "/tmp"
    changed.write_text(json.dumps(doc))
    (changed.parent / "manifest.json.intoto.jsonl").write_bytes(
        (curator["outputs"] / "manifest.json.intoto.jsonl").read_bytes())
    run = sconify("deploy", "init", curator["image"], "--name", "x", "--manifest", str(changed),
                  "--signer", str(curator["public"]), "--out", str(tmp_path / "changed-out"))
    assert "does not match" in one_line_error(run, 1)
    # no signature file at all
    unsigned = tmp_path / "unsigned" / "manifest.json"
    unsigned.parent.mkdir()
    unsigned.write_bytes(curator["manifest"].read_bytes())
    run = sconify("deploy", "init", curator["image"], "--name", "x", "--manifest", str(unsigned),
                  "--signer", str(curator["public"]), "--out", str(tmp_path / "unsigned-out"))
    assert "cannot read" in one_line_error(run, 1)
    for out in ("bad-key", "changed-out", "unsigned-out"):
        assert not (tmp_path / out).exists()


@pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed (.ci/run installs it)")
def test_init_reads_the_signed_manifest_attached_in_the_registry(plain_registry, pushed_app, tmp_path):  # noqa: F811
    key, public = write_keys(tmp_path, "curator")
    _, other = write_keys(tmp_path, "other")
    image = plain_registry.ref("app:1-generic")
    run = sconify("image", "--from", plain_registry.ref("app:1"), "--to", image, "--generic", "--dir", VOLUME,
                  "--out-dir", str(tmp_path / "out"), "--sign", str(key))
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "out" / "keys.json").exists()
    verified = sconify("verify", image, "--signer", str(public))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    run = sconify("deploy", "init", image, "--name", "reg", "--signer", str(public), "--out", str(tmp_path / "d"))
    assert run.returncode == 0, run.stderr
    assert "signed: ecdsa" in run.stdout.lower()
    policy = yaml.safe_load((tmp_path / "d" / "policy.yaml").read_text())
    manifest = Manifest.read(tmp_path / "out" / "manifest.json")
    assert policy["services"][0]["mrenclaves"] == [manifest.measurement.mrenclave]
    refused = sconify("deploy", "init", image, "--name", "reg", "--signer", str(other), "--out", str(tmp_path / "e"))
    assert "attestation signature" in one_line_error(refused, 1)
    assert not (tmp_path / "e").exists()


# --- Kubernetes ---------------------------------------------------------------------------------


def kubernetes_model(doc: dict):
    """``doc`` read by the kubernetes client into its model (V1Deployment...), as the API server's
    schema types it; a misspelt or mistyped field raises."""
    from kubernetes import client

    kind = {"Deployment": "V1Deployment", "Secret": "V1Secret", "PersistentVolumeClaim": "V1PersistentVolumeClaim"}
    model = client.ApiClient().deserialize(json.dumps(doc), kind[doc["kind"]], "application/json")
    assert client.ApiClient().sanitize_for_serialization(model) == doc, "a field the model does not know"
    return model


def test_k8s_writes_a_deployment_a_secret_and_claims(curator, tmp_path):
    pytest.importorskip("kubernetes", reason="pip install kubernetes (the test extra)")
    directory = tmp_path / "a"
    assert init(curator, directory, *FULL).returncode == 0
    out = tmp_path / "k8s.yaml"
    run = sconify("deploy", "k8s", str(directory), "--image", "registry.example.com/app:1", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    docs = list(yaml.safe_load_all(out.read_text()))
    models = {(doc["kind"], doc["metadata"]["name"]): kubernetes_model(doc) for doc in docs}
    assert set(models) == {("Secret", "deployment-a-sconify"), ("PersistentVolumeClaim", "deployment-a-app-state"),
                           ("PersistentVolumeClaim", "deployment-a-sconify-state"), ("Deployment", "deployment-a")}
    secret = models[("Secret", "deployment-a-sconify")]
    assert base64.b64decode(secret.data["policy.yaml"]) == (directory / "policy.yaml").read_bytes()
    assert base64.b64decode(secret.data["secrets.json"]) == (directory / "secrets.json").read_bytes()
    pod = models[("Deployment", "deployment-a")].spec.template.spec
    assert pod.enable_service_links is False and pod.automount_service_account_token is False
    [container] = pod.containers
    assert container.image == "registry.example.com/app:1" and container.env is None
    mounts = {m.mount_path: (m.name, m.read_only) for m in container.volume_mounts}
    assert mounts == {"/run/secrets/sconify": ("sconify-policy", True), VOLUME: ("app-state", None),
                      "/var/lib/sconify": ("sconify-state", None)}
    claims = {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim}
    assert claims == {"app-state": "deployment-a-app-state", "sconify-state": "deployment-a-sconify-state"}
    assert_no_value(secret_values(directory), run)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_writes_nothing(curator, python_image, tmp_path):
    # a manifest of an image that is not generic
    plain = tmp_path / "plain"
    sconify_image(ConvertOptions(source=f"oci:{python_image}:latest", destination=f"oci:{plain / 'image'}:v",
                                 encrypted_dirs=["/app/data"], manifest_out=str(plain / "manifest.json"),
                                 session_out=str(plain / "session.yaml"), keys_out=str(plain / "keys.json")))
    target = tmp_path / "d"
    runs = {
        "not a generic image": sconify("deploy", "init", f"oci:{plain / 'image'}:v", "--name", "d", "--manifest",
                                       str(plain / "manifest.json"), "--out", str(target)),
        "--secret": init(curator, target, "--secret", "bad"),
        "9a": init(curator, target, "--secret", "9a:ascii"),
        "does not declare": init(curator, target, "--env", "X=$$SCONE::nope$$"),
        "as it is": init(curator, target, "--secret", "bin:binary", "--env", "X=$$SCONE::bin$$"),
        "cannot read": init(curator, target, "--inject", "/app/x.ini=@/nonexistent/x.ini"),
        "PATH=@FILE": init(curator, target, "--inject", "relative=@x"),
        "session name": init(curator, target, name="bad name"),
        "--manifest": sconify("deploy", "init", curator["image"], "--name", "d", "--manifest",
                              str(tmp_path / "none.json"), "--out", str(target)),
        "holds no policy.yaml": sconify("deploy", "show", str(tmp_path / "nowhere")),
        "holds no policy.yaml ": sconify("deploy", "k8s", str(tmp_path / "nowhere"), "--image", "x"),
        "holds no policy.yaml  ": sconify("deploy", "add", curator["image"], str(tmp_path / "nowhere"),
                                          "--manifest", str(curator["manifest"])),
    }
    for expected, run in runs.items():
        assert expected.strip() in one_line_error(run), expected
    assert not target.exists()
    # a hand-broken policy, and another deployment's secrets
    assert init(curator, target).returncode == 0
    (target / "policy.yaml").write_text("name: [unclosed\n")
    assert "YAML" in one_line_error(sconify("deploy", "show", str(target)))
    assert init(curator, tmp_path / "e", name="e").returncode == 0
    (target / "policy.yaml").write_bytes((tmp_path / "e" / "policy.yaml").read_bytes())
    assert "deployment 'deployment-a', not 'e'" in one_line_error(sconify("deploy", "show", str(target)))
    # a secret declared by hand and not made yet: k8s would ship a deployment that cannot start
    (target / "policy.yaml").write_bytes((tmp_path / "e" / "policy.yaml").read_bytes())
    (target / "secrets.json").write_bytes((tmp_path / "e" / "secrets.json").read_bytes())
    policy = yaml.safe_load((target / "policy.yaml").read_text())
    policy["secrets"].append({"name": "LATER", "kind": "ascii"})
    (target / "policy.yaml").write_text(yaml.safe_dump(policy))
    line = one_line_error(sconify("deploy", "k8s", str(target), "--image", "x", "--out", str(tmp_path / "k.yaml")))
    assert "LATER" in line and "rerun `sconify deploy init`" in line
    assert not (tmp_path / "k.yaml").exists()


def test_a_policy_reference_checks_the_kind(curator, tmp_path):
    from sconify.deploy.policy import check_references
    from sconify.deploy.secrets import Secret

    doc = {"services": [{"command": "run $$SCONE::tls.crt$$", "environment": {"A": "$$SCONE::key:base64$$"}}],
           "images": [{"injection_files": [{"path": "/x", "content": "$$SCONE::pw$$ $$SCONE::tls.key$$"}]}]}
    secrets = [Secret("tls", "x509"), Secret("key", "binary", 32), Secret("pw", "ascii", 8)]
    check_references(doc, secrets, "policy")
    with pytest.raises(UsageError, match="pw.crt, which the policy does not declare"):
        check_references({"services": [{"command": "$$SCONE::pw.crt$$"}]}, secrets, "policy")
    with pytest.raises(UsageError, match="as hex"):
        check_references({"services": [{"command": "$$SCONE::tls:hex$$"}]}, secrets, "policy")
    with pytest.raises(UsageError, match="as it is"):
        check_references({"volumes": [{"name": "v", "fspf_key": "$$SCONE::key$$"}]}, secrets, "policy")
