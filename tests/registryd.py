"""A real distribution registry (Debian's docker-registry) on 127.0.0.1, for the tests and the
benchmark: ``start_registry`` writes its config, starts it and waits until /v2/ answers."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import requests

REGISTRY = shutil.which("docker-registry")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    storage: Path
    cert_dir: Path | None = None
    token_server: object = None  # test_registry.TokenServer, for token auth

    def ref(self, name: str) -> str:
        return f"docker://{self.host}/{name}"

    def blobs(self) -> dict[str, int]:
        """Every blob in the registry's storage: digest -> size."""
        root = self.storage / "docker/registry/v2/blobs/sha256"
        if not root.is_dir():
            return {}
        return {f"sha256:{d.name}": (d / "data").stat().st_size for d in root.glob("*/*") if (d / "data").exists()}

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.partition(":")[2]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def tags(self, repository: str) -> list[str]:
        tags = self.storage / "docker/registry/v2/repositories" / repository / "_manifests/tags"
        return sorted(p.name for p in tags.iterdir()) if tags.is_dir() else []


def start_registry(root: Path, auth: dict | None = None, tls: tuple[Path, Path] | None = None):
    port = free_port()
    http_config: dict = {"addr": f"127.0.0.1:{port}", "secret": "test-secret"}
    if tls:
        http_config["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": http_config,
    }
    if auth:
        config["auth"] = auth
    (root / "config.yml").write_text(json.dumps(config))  # JSON is YAML
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY, "serve", str(root / "config.yml")], stdout=log, stderr=log)
    scheme = "https" if tls else "http"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                requests.get(f"{scheme}://127.0.0.1:{port}/v2/", timeout=1, verify=False)
            break
        except requests.exceptions.RequestException:
            if process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(root / 'registry.log').read_text()[-2000:]}")
            time.sleep(0.05)
    else:
        process.kill()
        raise RuntimeError("docker-registry did not answer within 20 s")
    return process, f"127.0.0.1:{port}"


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
