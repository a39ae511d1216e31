"""The measurement attached to a pushed image (OCI 1.1 artifacts, the sha256-<hex> tag fallback
of distribution 2.8) and its signed DSSE/in-toto attestation, against the real registry of
test_registry; securesystemslib's DSSE verifies our envelope independently."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_registry import (  # noqa: F401 - fixtures
    PASSWORD,
    USER,
    one_line_error,
    plain_registry,
    pushed_app,
    sconify,
    small_image,
    tls_registry,
    token_registry,
)

from sconify.outputs import attest
from sconify.image.registry import referrers
from sconify.image.registry.options import RegistryOptions
from sconify.image.transports import write_image

pytestmark = pytest.mark.skipif(__import__("test_registry").REGISTRY is None,
                                reason="docker-registry is not installed (.ci/run installs it)")


def write_keys(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def get(registry, path: str, accept: str) -> requests.Response:
    return requests.get(f"http://{registry.host}{path}", headers={"Accept": accept}, timeout=30)


@pytest.fixture(scope="module")
def attached(plain_registry, pushed_app, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("attach")
    key, public = write_keys(work, "signer")
    run = sconify("image", "--from", plain_registry.ref("app:1"), "--to", plain_registry.ref("app:1-conf-att"),
                  "--out-dir", str(work / "out"), "--sign", str(key), "--json")
    assert run.returncode == 0, run.stderr
    return {"work": work, "key": key, "public": public, "result": json.loads(run.stdout)}


def test_the_fallback_index_lists_the_manifest_and_the_attestation(plain_registry, attached):  # noqa: F811
    result = attached["result"]
    digest = result["output"]["manifest_digest"]
    assert set(result["attached"]) == {"manifest", "attestation"}
    tag = "sha256-" + digest.partition(":")[2]
    assert all(item["via"] == f"tag {tag}" for item in result["attached"].values())
    # distribution 2.8 has no referrers API
    assert get(plain_registry, f"/v2/app/referrers/{digest}", "application/vnd.oci.image.index.v1+json").status_code == 404
    index = get(plain_registry, f"/v2/app/manifests/{tag}", "application/vnd.oci.image.index.v1+json").json()
    kinds = {entry["artifactType"]: entry["digest"] for entry in index["manifests"]}
    assert kinds == {referrers.SCONIFY_MANIFEST_TYPE: result["attached"]["manifest"]["digest"],
                     referrers.DSSE_TYPE: result["attached"]["attestation"]["digest"]}
    artifact = get(plain_registry, f"/v2/app/manifests/{kinds[referrers.SCONIFY_MANIFEST_TYPE]}",
                   "application/vnd.oci.image.manifest.v1+json").json()
    assert artifact["artifactType"] == referrers.SCONIFY_MANIFEST_TYPE
    assert artifact["config"]["mediaType"] == "application/vnd.oci.empty.v1+json" and artifact["config"]["size"] == 2
    assert artifact["subject"]["digest"] == digest
    layer = artifact["layers"][0]
    assert layer["mediaType"] == referrers.SCONIFY_MANIFEST_TYPE
    blob = requests.get(f"http://{plain_registry.host}/v2/app/blobs/{layer['digest']}", timeout=30).content
    assert blob == (attached["work"] / "out/manifest.json").read_bytes()


def test_verify_finds_the_attached_manifest_and_checks_the_signature(plain_registry, attached):  # noqa: F811
    ref = plain_registry.ref("app:1-conf-att")
    run = sconify("verify", ref, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    checks = {c["name"]: c for c in json.loads(run.stdout)["checks"]}
    assert checks["attached manifest"]["ok"] and "tag sha256-" in checks["attached manifest"]["detail"]
    run = sconify("verify", ref, "--json", "--signer", str(attached["public"]))
    assert run.returncode == 0, run.stdout + run.stderr
    checks = {c["name"]: c["ok"] for c in json.loads(run.stdout)["checks"]}
    assert checks["attestation signature"] and checks["attestation subject"] and checks["attestation predicate"]
    # a wrong signer key fails
    _, other = write_keys(attached["work"], "other")
    run = sconify("verify", ref, "--json", "--signer", str(other))
    assert run.returncode == 1, run.stdout + run.stderr
    failed = {c["name"]: c["detail"] for c in json.loads(run.stdout)["checks"] if not c["ok"]}
    assert list(failed) == ["attestation signature"] and "signed by another key" in failed["attestation signature"]
    # --manifest still overrides
    run = sconify("verify", ref, "--manifest", str(attached["work"] / "out/manifest.json"), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "attached manifest" not in run.stdout


def test_securesystemslib_verifies_our_envelope(plain_registry, attached):  # noqa: F811
    dsse = pytest.importorskip("securesystemslib.dsse")
    from securesystemslib.signer import SSlibKey

    digest = attached["result"]["output"]["manifest_digest"]
    found = referrers.find(plain_registry.host, "app", digest, referrers.DSSE_TYPE, RegistryOptions())
    assert found is not None
    envelope = dsse.Envelope.from_dict(json.loads(found[0]))
    public = serialization.load_pem_public_key(attached["public"].read_bytes())
    key = SSlibKey.from_crypto(public, keyid=attest.keyid(public))
    assert key.scheme == "ecdsa-sha2-nistp256"
    assert set(envelope.verify([key], 1)) == {attest.keyid(public)}
    statement = json.loads(envelope.payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["subject"] == [{"name": f"{plain_registry.host}/app", "digest": {"sha256": digest.partition(":")[2]}}]
    assert statement["predicateType"] == attest.PREDICATE_TYPE
    assert statement["predicate"] == json.loads((attached["work"] / "out/manifest.json").read_bytes())
    # the PAE as the DSSE spec writes it, computed here independently
    body = envelope.payload
    expected = b"DSSEv1 28 application/vnd.in-toto+json %d %s" % (len(body), body)
    assert envelope.pae() == expected == attest.pae(envelope.payload_type, body)


def test_a_replaced_attached_manifest_is_caught(plain_registry, attached):  # noqa: F811
    digest = attached["result"]["output"]["manifest_digest"]
    manifest = json.loads((attached["work"] / "out/manifest.json").read_bytes())
    manifest["measurement"]["mrenclave"] = "0" * 64
    forged = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    referrers.attach(plain_registry.host, "app", digest, attached["result"]["push"]["manifest_bytes"],
                     referrers.SCONIFY_MANIFEST_TYPE, forged, RegistryOptions())
    ref = plain_registry.ref("app:1-conf-att")
    run = sconify("verify", ref, "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "mrenclave" in run.stdout.lower()
    run = sconify("verify", ref, "--json", "--signer", str(attached["public"]))
    assert run.returncode == 1
    failed = {c["name"] for c in json.loads(run.stdout)["checks"] if not c["ok"]}
    assert "attestation predicate" in failed


def test_verify_without_an_attached_manifest_is_one_line(plain_registry, pushed_app):  # noqa: F811
    line = one_line_error(sconify("verify", plain_registry.ref("app:1")))
    assert f"registry {plain_registry.host} holds no sconify manifest attached" in line and "--manifest" in line


def test_sign_and_verify_a_manifest_file_as_dsse(attached, tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes((attached["work"] / "out/manifest.json").read_bytes())
    run = sconify("sign", str(manifest), "--key", str(attached["key"]))
    assert run.returncode == 0, run.stderr
    envelope = json.loads((tmp_path / "manifest.json.intoto.jsonl").read_text())
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(envelope["payload"]))
    digest = attached["result"]["output"]["manifest_digest"]
    assert statement["subject"][0]["digest"] == {"sha256": digest.partition(":")[2]}
    assert hashlib.sha256(json.dumps(statement["predicate"], sort_keys=True).encode()).digest() == \
        hashlib.sha256(json.dumps(json.loads(manifest.read_bytes()), sort_keys=True).encode()).digest()


@pytest.mark.parametrize("which", ["tls_registry", "token_registry"])
def test_attach_and_find_with_basic_and_token_auth(which, request, tmp_path):
    registry = request.getfixturevalue(which)
    options = RegistryOptions(creds=f"{USER}:{PASSWORD}", cert_dir=str(registry.cert_dir) if registry.cert_dir else None)
    written = write_image(small_image(tmp_path, which.encode()), registry.ref("att/app:1"), registry=options)
    assert referrers.find(registry.host, "att/app", written.manifest_digest, referrers.SCONIFY_MANIFEST_TYPE,
                          options) is None
    for n in (1, 2):
        done = referrers.attach(registry.host, "att/app", written.manifest_digest, written.push.manifest_bytes,
                                referrers.SCONIFY_MANIFEST_TYPE, b'{"n": %d}' % n, options)
        assert done.via == "tag sha256-" + written.manifest_digest.partition(":")[2]
    data, via = referrers.find(registry.host, "att/app", written.manifest_digest, referrers.SCONIFY_MANIFEST_TYPE,
                               options)
    assert data == b'{"n": 2}' and via.startswith("tag sha256-")  # the newest of the two
    assert "sha256-" + written.manifest_digest.partition(":")[2] in registry.tags("att/app")
