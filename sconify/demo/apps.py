"""The demo applications inside sconify's demo and test images: their sources and their data.

Two small services that summarise the same readings and print one JSON line: a Python one
(``/app/main.py`` and the package ``/app/service``: settings, an in-memory SQLite store, file
digests) and a Node.js one (``/app/index.js`` and its ``package.json``; its ``node_modules`` are
the pinned npm packages ``sconify.demo.debimage`` places under ``/app``). Both read ``/app/data`` (a
config, readings in a CSV file and its hardlink, an incompressible blob) and
``/etc/sconify-demo/defaults.json``.

Each app layer exercises layer semantics later steps must honour: a symlink, a hardlink, a
whiteout of a file of the base layer and an opaque ``/etc/sconify-demo`` that hides what the
base layer put there (``base_extras``, which also gives the base layer its minimal ``/etc``,
``/root`` and ``/tmp``). Everything is deterministic: the same source text, the same bytes.
"""

from __future__ import annotations

import hashlib
import json

from sconify.demo.layerentries import LayerEntry, directory, hardlinks, opaque, regular_file, symlink, whiteout


def demo_bytes(seed: str, size: int) -> bytes:
    """Deterministic incompressible bytes (SHAKE-256 of ``seed``)."""
    return hashlib.shake_256(seed.encode()).digest(size)


def readings_csv(rows: int = 400) -> str:
    lines = ["sensor,hour,celsius"]
    for i in range(rows):
        lines.append(f"s{i % 7},{i % 24},{(i * 37 % 400) / 10:.1f}")
    return "\n".join(lines) + "\n"


DEMO_DEFAULTS_BASE = '{"greeting": "hello from the base layer", "layer": "base"}\n'
DEMO_DEFAULTS_APP = '{"greeting": "hello from the app layer", "layer": "app"}\n'


def base_extras(for_app: bool) -> list[LayerEntry]:
    """Files a minimal image needs besides the packages (and the directory an app layer replaces)."""
    extras = [
        regular_file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        regular_file("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        regular_file("etc/hostname", "sconify-demo\n"),
        directory("root", 0o700),
        directory("tmp", 0o1777),
    ]
    if for_app:
        extras += [
            regular_file("etc/sconify-demo/defaults.json", DEMO_DEFAULTS_BASE),
            regular_file("etc/sconify-demo/legacy.conf", "# replaced by the app layer's opaque directory\n"),
        ]
    return extras


def common_app_entries(name: str) -> list[LayerEntry]:
    """Data dir, opaque /etc/sconify-demo, a hardlink and symlinks shared by both apps."""
    csv = readings_csv()
    return [
        regular_file("app/data/config.json", json.dumps({"app": name, "units": "celsius", "top": 3}, sort_keys=True) + "\n"),
        *hardlinks(["app/data/readings.csv", "app/data/readings-latest.csv"], csv),
        regular_file("app/data/blob.bin", demo_bytes(f"sconify-demo-{name}", 3 * 1024 * 1024 // 2)),
        regular_file("app/data/notes/README.txt", "Data files the app reads at run time.\n"),
        symlink("app/config.json", "data/config.json"),
        opaque("etc/sconify-demo"),
        regular_file("etc/sconify-demo/defaults.json", DEMO_DEFAULTS_APP),
    ]


PYTHON_MAIN = '''\
"""sconify demo service: summarises the readings in /app/data."""
import json
import ssl
import sys

from service import config, digest, store


def main() -> int:
    settings = config.load()
    db = store.load_readings(config.DATA_DIR / "readings.csv")
    report = {
        "app": settings["app"],
        "greeting": config.defaults()["greeting"],
        "hottest": store.hottest(db, settings["top"]),
        "rows": store.count(db),
        "blob_sha256": digest.file_sha256(config.DATA_DIR / "blob.bin"),
        "openssl": ssl.OPENSSL_VERSION,
    }
    json.dump(report, sys.stdout, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

PYTHON_SERVICE = {
    "app/service/__init__.py": '"""The demo service\'s modules."""\n',
    "app/service/config.py": '''\
"""Settings from /app/data/config.json and /etc/sconify-demo/defaults.json."""
import json
from pathlib import Path

DATA_DIR = Path("/app/data")


def load() -> dict:
    return json.loads((DATA_DIR / "config.json").read_text())


def defaults() -> dict:
    return json.loads(Path("/etc/sconify-demo/defaults.json").read_text())
''',
    "app/service/store.py": '''\
"""Readings in an in-memory SQLite database."""
import csv
import sqlite3
from pathlib import Path


def load_readings(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE readings (sensor TEXT, hour INTEGER, celsius REAL)")
    with path.open(newline="") as handle:
        rows = [(r["sensor"], int(r["hour"]), float(r["celsius"])) for r in csv.DictReader(handle)]
    db.executemany("INSERT INTO readings VALUES (?, ?, ?)", rows)
    return db


def count(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COUNT(*) FROM readings").fetchone()[0]


def hottest(db: sqlite3.Connection, top: int) -> list:
    query = "SELECT sensor, MAX(celsius) AS m FROM readings GROUP BY sensor ORDER BY m DESC, sensor LIMIT ?"
    return [list(row) for row in db.execute(query, (top,))]
''',
    "app/service/digest.py": '''\
"""File digests."""
import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 16), b""):
            sha.update(chunk)
    return sha.hexdigest()
''',
}

NODE_INDEX = '''\
// sconify demo service: summarises the readings in /app/data.
"use strict";
const assert = require("assert");
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");
const ms = require("ms");
const isNumber = require("is-number");
const debug = require("debug")("demo");

const DATA_DIR = "/app/data";
const config = JSON.parse(fs.readFileSync(path.join(DATA_DIR, "config.json"), "utf8"));
const defaults = JSON.parse(fs.readFileSync("/etc/sconify-demo/defaults.json", "utf8"));
const rows = fs.readFileSync(path.join(DATA_DIR, "readings.csv"), "utf8").trim().split("\\n").slice(1)
  .map((line) => line.split(","))
  .filter((cols) => isNumber(cols[2]));
assert.ok(rows.length > 0, "no readings");
const hottest = {};
for (const [sensor, , celsius] of rows) {
  hottest[sensor] = Math.max(hottest[sensor] ?? -Infinity, Number(celsius));
}
const top = Object.entries(hottest).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).slice(0, config.top);
const blob = crypto.createHash("sha256").update(fs.readFileSync(path.join(DATA_DIR, "blob.bin"))).digest("hex");
debug("read %d rows", rows.length);
console.log(JSON.stringify({
  app: config.app, blob_sha256: blob, greeting: defaults.greeting, hottest: top,
  rows: rows.length, uptime_budget: ms(ms("2 days")),
}));
'''

NODE_PACKAGE_JSON = json.dumps(
    {"name": "sconify-demo", "version": "1.0.0", "private": True, "main": "index.js",
     "dependencies": {"debug": "4.3.4", "is-number": "7.0.0", "ms": "2.1.3"}},
    indent=2, sort_keys=True,
) + "\n"


def python_app_entries() -> list[LayerEntry]:
    """The Python app: main.py, the service package, the shared data and a whiteout."""
    return [
        regular_file("app/main.py", PYTHON_MAIN),
        *(regular_file(path, text) for path, text in PYTHON_SERVICE.items()),
        *common_app_entries("python"),
        whiteout("usr/bin/pydoc3.11"),
    ]


def node_app_entries() -> list[LayerEntry]:
    """The Node.js app without its node_modules (the builder adds the npm packages)."""
    return [
        regular_file("app/index.js", NODE_INDEX),
        regular_file("app/package.json", NODE_PACKAGE_JSON),
        *common_app_entries("node"),
        whiteout("usr/bin/nodejs"),
    ]


# The CPython regression tests that exercise files, directories, processes and imports (issue 23's
# list; Debian's libpython3.11-testsuite has no test_sqlite3). `sconify demo python-tests` runs them.
CPYTHON_ORACLE_TESTS = (
    "test_os", "test_io", "test_fileio", "test_tempfile", "test_shutil", "test_pathlib", "test_glob",
    "test_zipfile", "test_tarfile", "test_json", "test_importlib", "test_zipimport", "test_compileall",
    "test_py_compile", "test_mmap", "test_posix", "test_stat", "test_fcntl", "test_unicode_file", "test_site",
    "test_subprocess", "test_signal", "test_threading", "test_multiprocessing_spawn",
)
# The subset tests/test_cpython_oracle.py runs in CI (about a minute per column converted): modules
# of the list above that exercise files, directories, locks and temporary files and pass in both
# columns (docs/runtime.md); the slowest first, so that the two workers finish together.
CPYTHON_ORACLE_CI_TESTS = (
    "test_tempfile", "test_tarfile", "test_json", "test_glob", "test_fileio", "test_stat", "test_fcntl",
    "test_py_compile",
)


def python_tests_app_entries() -> list[LayerEntry]:
    """The CPython test image's app layer: only a data directory to protect (and run the tests in)."""
    return [
        regular_file("app/data/README.txt", "CPython's regression tests write here when TMPDIR points into this volume.\n"),
        directory("app/data/tmp", 0o1777),
    ]
