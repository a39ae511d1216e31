"""The docker:// transport against a real registry (Debian's docker-registry, distribution 2.8)
on 127.0.0.1: plain HTTP without auth, htpasswd Basic auth over TLS (a CA made here), and
token auth (a token server run here, signing ES256 JWTs). skopeo and docker pull are the
oracles."""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from sconify.errors import ImageError
from sconify.image.model import Image, Layer, canonical_json
from sconify.image.reference import parse_reference
from sconify.image.registry.options import RegistryOptions
from sconify.image.transports import read_image, write_image

from registryd import REGISTRY, Registry, free_port, start_registry, stop

SKOPEO = shutil.which("skopeo")
USER, PASSWORD = "alice", "s3cret-Pa55word"
pytestmark = pytest.mark.skipif(REGISTRY is None, reason="docker-registry is not installed (.ci/run installs it)")


# --- certificates and tokens (cryptography) -------------------------------------------------


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, server.crt, server.key) for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sconify test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """The distribution token spec's issuer: GET /token?service=&scope= with Basic auth ->
    {"token": ES256 JWT, "expires_in": 300}. The next ``expired`` tokens it issues expired two
    minutes ago (the registry allows 60 s of clock skew), as a cached token would have."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sconify test token issuer")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=2)).sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.bundle = directory / "token-issuer.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.expired = 0
        self.requests: list[list[str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if auth != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                server.requests.append(scopes)
                body = json.dumps({"token": server.jwt(query.get("service", [""])[0], scopes),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def jwt(self, service: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        lifetime = 300
        if self.expired:
            self.expired -= 1
            now -= 420
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": "sconify-test-issuer", "sub": USER, "aud": service, "exp": now + lifetime,
                  "nbf": now - 10, "iat": now - 10, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def close(self) -> None:
        self.httpd.shutdown()


# --- fixtures ---------------------------------------------------------------------------------


def running_plain_registry(tmp_path_factory, name: str):
    root = tmp_path_factory.mktemp(name)
    process, host = start_registry(root)
    yield Registry(host, root / "data")
    stop(process)


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory):
    yield from running_plain_registry(tmp_path_factory, "registry-plain")


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-tls")
    ca, cert, key = make_ca_and_server_cert(root / "pki")
    cert_dir = root / "certs"
    cert_dir.mkdir()
    shutil.copy(ca, cert_dir / "ca.crt")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, text=True, check=True)
    (root / "htpasswd").write_text(htpasswd.stdout)
    auth = {"htpasswd": {"realm": "sconify-test", "path": str(root / "htpasswd")}}
    process, host = start_registry(root, auth=auth, tls=(cert, key))
    yield Registry(host, root / "data", cert_dir=cert_dir)
    stop(process)


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-token")
    tokens = TokenServer(root)
    auth = {"token": {"realm": tokens.realm, "service": "sconify-test-registry",
                      "issuer": "sconify-test-issuer", "rootcertbundle": str(tokens.bundle)}}
    process, host = start_registry(root, auth=auth)
    yield Registry(host, root / "data", token_server=tokens)
    stop(process)
    tokens.close()


def sconify(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sconify", *args], capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, **(env or {})})


def skopeo(*args: str) -> subprocess.CompletedProcess:
    if SKOPEO is None:
        pytest.skip("skopeo is not installed (.ci/run installs it)")
    return subprocess.run([SKOPEO, *args], capture_output=True, text=True, timeout=300, check=False)


def layout_blobs(layout: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (layout / "blobs" / "sha256").iterdir()}


def small_image(tmp_path: Path, text: bytes) -> Image:
    tar_path = tmp_path / "layer.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/unique")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    layer = Layer.from_tar_file(tar_path, "gzip")
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
              "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}
    return Image(canonical_json(config), (layer,))


def one_line_error(run: subprocess.CompletedProcess) -> str:
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    return lines[0]


# --- plain registry -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pushed_app(plain_registry, python_image) -> dict:
    """The Python demo image pushed by sconify to app:1 (the --json result)."""
    run = sconify("copy", "--json", f"oci:{python_image}:latest", plain_registry.ref("app:1"))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_sconify_pulls_what_skopeo_pushed(plain_registry, python_image, tmp_path):
    pushed = skopeo("copy", "--dest-tls-verify=false", "--digestfile", str(tmp_path / "digest"),
                    f"oci:{python_image}:latest", f"{plain_registry.ref('skopeo/python:1')}")
    assert pushed.returncode == 0, pushed.stderr
    image = read_image(plain_registry.ref("skopeo/python:1"))
    assert image.manifest_digest == (tmp_path / "digest").read_text().strip()
    source = read_image(f"oci:{python_image}:latest")
    assert image.config_bytes == source.config_bytes
    assert [layer.digest for layer in image.layers] == [layer.digest for layer in source.layers]
    run = sconify("copy", plain_registry.ref("skopeo/python:1"), f"oci:{tmp_path / 'out'}:x")
    assert run.returncode == 0, run.stderr
    assert layout_blobs(tmp_path / "out") >= {layer.digest for layer in source.layers}
    for layer in read_image(f"oci:{tmp_path / 'out'}:x").layers:
        layer.verify()


def test_push_then_skopeo_and_sconify_pull_back_the_same_bytes(plain_registry, pushed_app, python_image, tmp_path):
    source = read_image(f"oci:{python_image}:latest")
    assert pushed_app["layer_digests"] == [layer.digest for layer in source.layers]  # blobs kept byte for byte
    assert pushed_app["push"]["uploaded_blobs"] in (0, 3)  # 2 layers + config, unless a test pushed them first
    pulled = skopeo("copy", "--src-tls-verify=false", plain_registry.ref("app:1"), f"oci:{tmp_path / 'sk'}:x")
    assert pulled.returncode == 0, pulled.stderr
    inspect = skopeo("inspect", "--tls-verify=false", "--raw", plain_registry.ref("app:1"))
    assert "sha256:" + hashlib.sha256(inspect.stdout.encode()).hexdigest() == pushed_app["manifest_digest"]
    expected = {layer.digest for layer in source.layers} | {source.config_digest, pushed_app["manifest_digest"]}
    assert layout_blobs(tmp_path / "sk") == expected
    for digest in expected:  # the bytes skopeo got hash to their names
        data = (tmp_path / "sk" / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
    again = read_image(plain_registry.ref("app:1"))
    assert again.manifest_digest == pushed_app["manifest_digest"]
    assert again.config_bytes == source.config_bytes


def test_convert_registry_to_registry_uploads_only_the_new_blobs(plain_registry, pushed_app, tmp_path, docker_client):
    before = plain_registry.blobs()
    started = time.monotonic()
    run = sconify("image", "--from", plain_registry.ref("app:1"), "--to", plain_registry.ref("app:1-conf"),
                  "--out-dir", str(tmp_path / "out"), "--json", "--no-attach")
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stderr
    push = json.loads(run.stdout)["push"]
    new = {digest: size for digest, size in plain_registry.blobs().items() if digest not in before}
    # new: the code layer, the data layer, the runtime layer, the config and the manifest
    assert len(new) == 5, new
    assert push["uploaded_blobs"] == 4 and push["existing_blobs"] == 2 and push["mounted_blobs"] == 0
    assert push["uploaded_bytes"] == sum(new.values())
    print(f"\nregistry->registry conversion: {push['uploaded_bytes']} bytes uploaded "
          f"({sum(before.values())} bytes already in the registry), {elapsed:.2f} s")
    # The result is pulled by skopeo and verified by sconify from the registry.
    assert skopeo("inspect", "--tls-verify=false", plain_registry.ref("app:1-conf")).returncode == 0
    verify = sconify("verify", plain_registry.ref("app:1-conf"), "--manifest", str(tmp_path / "out/manifest.json"))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # docker pull: the test engine reaches 127.0.0.1 registries as insecure (plain HTTP) ones.
    import docker.errors

    name = f"{plain_registry.host}/app"
    try:
        image = docker_client.images.pull(name, tag="1-conf")
    except docker.errors.APIError as exc:
        pytest.skip(f"the Docker engine cannot pull from {plain_registry.host}: {exc}")
    try:
        assert image.attrs["RepoDigests"][0].endswith(json.loads(run.stdout)["output"]["manifest_digest"])
    finally:
        docker_client.images.remove(f"{name}:1-conf", force=True)


@pytest.fixture(scope="session")
def second_registry(tmp_path_factory):
    yield from running_plain_registry(tmp_path_factory, "registry-second")


def test_a_conversion_downloads_each_input_blob_once(plain_registry, second_registry, pushed_app, tmp_path,
                                                     monkeypatch):
    """Converting to a layout or to another registry, each input blob is downloaded once: read,
    checked and kept as a local copy the writer copies (to the same registry nothing is copied:
    the blobs are there)."""
    from sconify.image.registry.pull import RegistryStream
    from sconify.conversion.pipeline import ConvertOptions, sconify_image

    opened: collections.Counter = collections.Counter()
    original = RegistryStream.__init__

    def counting(self, client, digest, what):
        opened[digest] += 1
        original(self, client, digest, what)

    monkeypatch.setattr(RegistryStream, "__init__", counting)
    layers = set(pushed_app["layer_digests"])
    for name, target in (("layout", f"oci:{tmp_path / 'layout'}:x"), ("other", second_registry.ref("conf/app:1"))):
        opened.clear()
        sconify_image(ConvertOptions(source=plain_registry.ref("app:1"), destination=target,
                                     manifest_out=str(tmp_path / f"{name}.json"), session_out=str(tmp_path / f"{name}.yaml"),
                                     keys_out=str(tmp_path / f"{name}-keys.json")))
        assert set(opened) == layers | {pushed_app["config_digest"]} and set(opened.values()) == {1}, (name, opened)
    assert layers <= set(second_registry.blobs())
    assert not list(Path(tempfile.gettempdir()).glob("sconify-blob-*"))  # the copies went with the conversion
    for layer in read_image(second_registry.ref("conf/app:1")).layers:
        layer.verify()


def test_blobs_go_while_the_conversion_runs_and_a_failed_conversion_tags_nothing(plain_registry, second_registry,
                                                                                 pushed_app, tmp_path, monkeypatch):
    """To a registry, the input blobs and the data layer are sent before the code layer is built;
    when the conversion then fails, the push stops there: no manifest, no tag."""
    import sconify.conversion.pipeline as pipeline

    def fail(*args, **kwargs):
        # By now the input layers are on their way, and the data layer too.
        deadline = time.monotonic() + 30
        while not set(pushed_app["layer_digests"]) <= set(second_registry.blobs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        raise ImageError("the code layer failed (a test)")

    monkeypatch.setattr(pipeline, "build_code_layer", fail)
    with pytest.raises(ImageError, match="a test"):
        pipeline.sconify_image(pipeline.ConvertOptions(
            source=plain_registry.ref("app:1"), destination=second_registry.ref("failed/app:1"),
            manifest_out=str(tmp_path / "m.json"), session_out=str(tmp_path / "s.yaml"), keys_out=str(tmp_path / "k.json")))
    assert set(pushed_app["layer_digests"]) <= set(second_registry.blobs())  # sent early
    assert second_registry.tags("failed/app") == []  # and nothing tagged


@pytest.mark.parametrize("stream", ["works", "breaks"])
def test_the_data_layer_uploads_while_it_is_written_or_else_after(plain_registry, pushed_app, tmp_path, monkeypatch,
                                                                  stream):
    """The data layer (the large new one) streams into the registry as it is encrypted; when that
    upload breaks, the layer goes the usual way once written. Either way the result verifies."""
    import sconify.image.registry.push as push
    from sconify.conversion.pipeline import ConvertOptions, sconify_image

    outcomes = []
    succeeded = push.StreamedUpload.succeeded

    def record(self):
        outcomes.append(succeeded(self))
        return outcomes[-1]

    monkeypatch.setattr(push.StreamedUpload, "succeeded", record)
    if stream == "breaks":
        def broken(self):
            for _ in original(self):
                raise OSError("the connection broke (a test)")
        original = push.StreamedUpload._chunks
        monkeypatch.setattr(push.StreamedUpload, "_chunks", broken)
    target = plain_registry.ref(f"streamed-{stream}/app:1")
    sconify_image(ConvertOptions(
        source=plain_registry.ref("app:1"), destination=target, encrypted_dirs=["/app/data"],
        manifest_out=str(tmp_path / "m.json"), session_out=str(tmp_path / "s.yaml"), keys_out=str(tmp_path / "k.json")))
    assert outcomes == [stream == "works"]
    verify = sconify("verify", target, "--manifest", str(tmp_path / "m.json"), "--keys", str(tmp_path / "k.json"))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_push_of_a_registry_image_to_another_repository_mounts_its_blobs(plain_registry, pushed_app):
    run = sconify("copy", "--json", plain_registry.ref("app:1"), plain_registry.ref("mounted/app:1"))
    assert run.returncode == 0, run.stderr
    push = json.loads(run.stdout)["push"]
    assert push["mounted_blobs"] == 2 and push["existing_blobs"] == 0
    assert push["uploaded_blobs"] == 1  # the config (not a layer: not mounted)
    assert read_image(plain_registry.ref("mounted/app:1")).manifest_digest == pushed_app["manifest_digest"]


def test_pull_by_digest_and_an_index_with_platform(plain_registry, tmp_path):
    image = small_image(tmp_path, b"index me")
    written = write_image(image, plain_registry.ref("indexed:single"))
    by_digest = read_image(plain_registry.ref(f"indexed@{written.manifest_digest}"))
    assert by_digest.config_bytes == image.config_bytes
    manifest = skopeo("inspect", "--tls-verify=false", "--raw", plain_registry.ref("indexed:single")).stdout.encode()
    index = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": written.manifest_digest,
         "size": len(manifest), "platform": {"os": "linux", "architecture": "arm64"}}]})
    put = requests.put(f"http://{plain_registry.host}/v2/indexed/manifests/multi", data=index,
                       headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    assert put.status_code == 201, put.text
    assert read_image(plain_registry.ref("indexed:multi"), platform="linux/arm64").manifest_digest == written.manifest_digest
    with pytest.raises(ImageError, match="no image for platform linux/amd64 .available: linux/arm64"):
        read_image(plain_registry.ref("indexed:multi"))


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_damaged_blob_in_the_registry_is_one_line_naming_registry_and_digest(plain_registry, tmp_path, damage):
    image = small_image(tmp_path, f"damaged {damage}".encode() * 100)
    write_image(image, plain_registry.ref(f"damaged/{damage}:1"))
    digest = image.layers[0].digest
    path = plain_registry.blob_path(digest)
    data = bytearray(path.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    path.write_bytes(bytes(data))
    line = one_line_error(sconify("copy", plain_registry.ref(f"damaged/{damage}:1"), f"oci:{tmp_path / 'out'}:x"))
    assert plain_registry.host in line and digest in line
    assert ("truncated" if damage == "truncate" else "corrupt") in line
    assert not (tmp_path / "out").exists()


def test_an_unreachable_registry_is_one_line(tmp_path):
    port = free_port()
    line = one_line_error(sconify("copy", f"docker://127.0.0.1:{port}/x:1", f"oci:{tmp_path / 'out'}:x"))
    assert f"registry 127.0.0.1:{port} is not reachable" in line


def test_push_to_a_digest_reference_and_bad_references_are_refused():
    with pytest.raises(ImageError, match="push to a tag"):
        write_image(Image(b"{}", ()), "docker://127.0.0.1:1/x@sha256:" + "a" * 64)
    for text in ("docker://127.0.0.1:5000/UPPER:1", "docker:127.0.0.1/x", "docker://h.io/x:bad:tag"):
        with pytest.raises(ImageError):
            parse_reference(text)
    assert str(parse_reference("docker://alpine")) == "docker://docker.io/library/alpine:latest"


# --- a fake registry for what a real one never does --------------------------------------------


class FakeRegistry:
    """An HTTP server answering /v2/ with a Basic challenge, a huge manifest, and a blob redirected
    to a second server, which records the headers it got and breaks its first answer off halfway
    (then answers Range requests)."""

    def __init__(self, blob: bytes) -> None:
        self.seen_at_redirect: list[dict] = []
        self.broken_off = False
        fake = self
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        config = canonical_json({"architecture": "amd64", "os": "linux", "rootfs": {
            "type": "layers", "diff_ids": [digest]}})
        self.manifest = canonical_json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                                                   "size": len(config)},
                                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                                    "digest": digest, "size": len(blob)}]})

        class Storage(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.seen_at_redirect.append(dict(self.headers))
                start = int(self.headers.get("Range", "bytes=0-")[6:].rstrip("-"))
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(blob) - start))
                self.end_headers()
                if not fake.broken_off:
                    fake.broken_off = True
                    self.wfile.write(blob[:len(blob) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(blob[start:])

        class Api(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict | None = None, length: bool = True):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except ConnectionError:
                    pass  # the client stopped reading (the huge manifest)

            def do_GET(self):
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    return self.reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="fake"'})
                if self.path == "/v2/":
                    return self.reply(200, b"{}")
                if self.path == "/v2/huge/manifests/1":
                    # no Content-Length (the body ends when the connection closes): read and bounded
                    return self.reply(200, b" " * (5 << 20), {"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                                      length=False)
                if self.path == "/v2/app/manifests/1":
                    return self.reply(200, fake.manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
                if self.path.startswith("/v2/app/blobs/" + "sha256:" + hashlib.sha256(config).hexdigest()):
                    return self.reply(200, config)
                if self.path.startswith("/v2/app/blobs/"):
                    return self.reply(307, b"", {"Location": f"http://localhost:{fake.storage.server_address[1]}/blob?sig=1"})
                return self.reply(404, b"{}")

        self.storage = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Storage)
        self.api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
        self.host = f"127.0.0.1:{self.api.server_address[1]}"
        for server in (self.storage, self.api):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.storage.shutdown()
        self.api.shutdown()


def test_blob_redirect_to_another_host_gets_no_credentials_a_broken_download_resumes_and_huge_manifests_are_refused():
    blob = os.urandom(3 << 20)
    fake = FakeRegistry(blob)
    try:
        options = RegistryOptions(creds=f"{USER}:{PASSWORD}")
        image = read_image(f"docker://{fake.host}/app:1", registry=options)
        with image.layers[0].open_blob() as stream:
            assert stream.read() == blob
        assert fake.broken_off and [h.get("Range") for h in fake.seen_at_redirect] == [None, f"bytes={len(blob) // 2}-"]
        assert fake.seen_at_redirect and all("Authorization" not in h for h in fake.seen_at_redirect)
        with pytest.raises(ImageError, match=f"registry {fake.host} sent a manifest of .* over the 4 MiB limit"):
            read_image(f"docker://{fake.host}/huge:1", registry=options)
    finally:
        fake.close()


# --- TLS + htpasswd ---------------------------------------------------------------------------


def test_tls_basic_auth_push_and_pull_with_every_credential_source(tls_registry, tmp_path, monkeypatch):
    image = small_image(tmp_path, b"tls and basic auth")
    certs = str(tls_registry.cert_dir)
    # --creds
    run = sconify("copy", "--json", "--creds", f"{USER}:{PASSWORD}", "--cert-dir", certs,
                  f"oci:{_layout(image, tmp_path)}:x", tls_registry.ref("app:1"))
    assert run.returncode == 0, run.stderr
    assert PASSWORD not in run.stdout + run.stderr
    digest = json.loads(run.stdout)["manifest_digest"]
    # skopeo pulls it with the same CA and credentials
    pulled = skopeo("inspect", "--cert-dir", certs, "--creds", f"{USER}:{PASSWORD}", tls_registry.ref("app:1"))
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)["Digest"] == digest
    # an auth file (docker config.json: base64 auth) through --authfile and REGISTRY_AUTH_FILE
    auth = {"auths": {tls_registry.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}
    (tmp_path / "auth.json").write_text(json.dumps(auth))
    assert read_image(tls_registry.ref("app:1"), registry=RegistryOptions(
        authfile=str(tmp_path / "auth.json"), cert_dir=certs)).manifest_digest == digest
    run = sconify("copy", "--cert-dir", certs, tls_registry.ref("app:1"), f"oci:{tmp_path / 'back'}:x",
                  env={"REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
    assert run.returncode == 0, run.stderr
    # ~/.docker/config.json with a credential helper (credsStore)
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker" / "config.json").write_text(json.dumps({"credsStore": "sconifytest"}))
    helper = tmp_path / "bin" / "docker-credential-sconifytest"
    helper.parent.mkdir()
    helper.write_text(f"#!/bin/sh\nread server\n[ \"$server\" = \"{tls_registry.host}\" ] || exit 1\n"
                      f"echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    assert read_image(tls_registry.ref("app:1"), registry=RegistryOptions(cert_dir=certs)).manifest_digest == digest


def _layout(image: Image, tmp_path: Path) -> Path:
    layout = tmp_path / "layout"
    if not layout.exists():
        write_image(image, f"oci:{layout}:x")
    return layout


def test_tls_wrong_password_untrusted_ca_and_no_credentials_are_one_line_and_tag_nothing(tls_registry, tmp_path, monkeypatch):
    image = small_image(tmp_path, b"never pushed")
    layout = _layout(image, tmp_path)
    certs = str(tls_registry.cert_dir)
    monkeypatch.setenv("HOME", str(tmp_path))  # no auth files of the machine
    wrong = "wrong-Pa55word"
    line = one_line_error(sconify("copy", "--creds", f"{USER}:{wrong}", "--cert-dir", certs, f"oci:{layout}:x",
                                  tls_registry.ref("never:1")))
    assert f"registry {tls_registry.host} refused the credentials from --creds" in line
    assert wrong not in line and USER not in line
    assert tls_registry.tags("never") == []
    line = one_line_error(sconify("copy", "--creds", f"{USER}:{PASSWORD}", f"oci:{layout}:x", tls_registry.ref("never:1")))
    assert "not trusted" in line and "--cert-dir" in line and PASSWORD not in line
    line = one_line_error(sconify("copy", "--cert-dir", certs, f"oci:{layout}:x", tls_registry.ref("never:1"),
                                  env={"HOME": str(tmp_path)}))
    assert "no credentials were found" in line
    assert tls_registry.tags("never") == []


# --- token auth --------------------------------------------------------------------------------


def test_token_auth_push_pull_and_refresh_of_an_expired_token(token_registry, tmp_path):
    tokens = token_registry.token_server
    options = RegistryOptions(creds=f"{USER}:{PASSWORD}")
    image = small_image(tmp_path, b"token auth")
    written = write_image(image, token_registry.ref("team/app:1"), registry=options)
    assert any("repository:team/app:pull,push" in scopes for scopes in tokens.requests)
    # a cross-repository push mounts with a token that also grants pull on the source
    copied = write_image(read_image(token_registry.ref("team/app:1"), registry=options),
                         token_registry.ref("team/other:1"), registry=options)
    assert copied.push.mounted_blobs == 1
    assert any("repository:team/app:pull" in scopes for scopes in tokens.requests[-1:])
    asked = len(tokens.requests)
    tokens.expired = 1  # the first token of this pull has expired: the registry says 401, a new one is fetched
    pulled = read_image(token_registry.ref("team/app:1"), registry=options)
    pulled.layers[0].verify()
    assert len(tokens.requests) == asked + 2 and tokens.expired == 0
    assert pulled.manifest_digest == written.manifest_digest
    pulled_by_skopeo = skopeo("inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                              token_registry.ref("team/app:1"))
    assert pulled_by_skopeo.returncode == 0, pulled_by_skopeo.stderr
    line = one_line_error(sconify("copy", "--creds", f"{USER}:nope", token_registry.ref("team/app:1"),
                                  f"oci:{tmp_path / 'out'}:x"))
    assert f"registry {token_registry.host} refused the credentials" in line and "nope" not in line
