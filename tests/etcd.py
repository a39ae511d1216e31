"""A real etcd (Debian's etcd-server, etcd 3.4) on 127.0.0.1, for the state store's tests:
``start_etcd`` starts a single-member cluster on two free ports with a data directory of its own
and waits until its JSON gateway answers; ``stop`` ends it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from registryd import free_port, stop

ETCD = shutil.which("etcd")


@dataclass
class Etcd:
    process: subprocess.Popen
    endpoint: str  # http://127.0.0.1:PORT
    data_dir: Path

    def get(self, key: str) -> bytes | None:
        """The value at key, or None: read straight from the gateway, not through the code under test."""
        answer = requests.post(f"{self.endpoint}/v3/kv/range",
                               json={"key": base64.b64encode(key.encode()).decode()}, timeout=5).json()
        kvs = answer.get("kvs")
        return base64.b64decode(kvs[0].get("value", "")) if kvs else None

    def put(self, key: str, value: bytes) -> None:
        requests.post(f"{self.endpoint}/v3/kv/put", json={"key": base64.b64encode(key.encode()).decode(),
                                                           "value": base64.b64encode(value).decode()},
                      timeout=5).raise_for_status()


def start_etcd(root: Path) -> Etcd:
    client, peer = free_port(), free_port()
    data = root / "etcd-data"
    log = (root / "etcd.log").open("wb")
    process = subprocess.Popen(
        [ETCD, "--name", "sconify-test", "--data-dir", str(data),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"sconify-test=http://127.0.0.1:{peer}", "--log-level", "error"],
        stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{client}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.post(f"{endpoint}/v3/kv/range", data=json.dumps({"key": "AA=="}), timeout=1).raise_for_status()
            return Etcd(process, endpoint, data)
        except requests.exceptions.RequestException:
            if process.poll() is not None:
                raise RuntimeError(f"etcd exited: {(root / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.1)
    stop(process)
    raise RuntimeError("etcd did not answer within 30 s")

