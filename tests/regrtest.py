"""CPython's regression tests (``python3 -m test``) in the original and the converted
``python-tests`` demo image, under the Docker engine: the oracle of the runtime's file semantics
(issue 23). Used by bench/cpython_oracle.py (any modules, a table) and
tests/test_cpython_oracle.py (sconify.demo.apps.CPYTHON_ORACLE_CI_TESTS, in CI).

``oracle_images(modules, tmp)`` builds the image with ``python3 -m test -j2 MODULES`` as its
command, loads it and converts it with ``--dir /app/data``: the converted run uses the image's own
command, the measured one, so it gets the keys (a command passed to `docker run` would run
without). ``run_tests`` runs an image in one column of ``WHERE``: the default ``/tmp``, or TMPDIR
and the working directory inside the encrypted volume. ``regressions`` names the modules that pass
in the original and not converted.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from sconify.demo.debimage import build_image
from sconify.image.model import Image
from sconify.image.mutate import with_config
from sconify.image.transports import read_image, write_image

# "[ 3/24] test_json passed", "[4/24/1] test_os failed (2 errors)", "... test_x crashed (Exit code -11)"
PROGRESS = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\]\s+(test_\w+)\s+(passed|failed|skipped|crashed|resource denied|interrupted|ran no tests)"
                      r"(?:\s*\(([^)]*)\))?")
WHERE = {
    "tmp": [],
    "volume": ["-e", "TMPDIR=/app/data/tmp", "-w", "/app/data/tmp"],
}
NOT_RUN = "not run"


@dataclass
class Run:
    results: dict[str, str]  # module -> passed | failed | skipped | crashed ... (+ detail)
    seconds: float
    status: int
    tail: str


@dataclass
class OracleImages:
    original: str  # docker tags
    converted: str
    out: Path  # the conversion's --out-dir: keys.json, manifest.json, session.yaml


def docker(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def parse_results(out: str) -> dict[str, str]:
    """module -> its result, from the progress lines of ``python3 -m test``'s output."""
    return {match.group(1): match.group(2) + (f" ({match.group(3)})" if match.group(3) else "")
            for match in PROGRESS.finditer(out)}


def run_tests(image: str, where: str, keys: Path | None, timeout: float) -> Run:
    """``docker run`` of the image's own command in the column ``where``; keys: a keys directory."""
    argv = ["run", "--rm", *WHERE[where]]
    if keys is not None:
        argv += ["-v", f"{keys}:/run/secrets/sconify"]
    argv.append(image)
    start = time.monotonic()
    try:
        done = docker(*argv, check=False, timeout=timeout)
        out, status = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        out, status = (exc.stdout or b"").decode(errors="replace") + "\n(timed out)", -1
    return Run(parse_results(out), time.monotonic() - start, status, "\n".join(out.splitlines()[-15:]))


def passed(run: Run, module: str) -> bool:
    return run.results.get(module, NOT_RUN).startswith("passed")


def regressions(modules: list[str], original: Run, converted: Run) -> list[str]:
    """The modules that pass in the original and do not pass converted (the promise broken)."""
    return [module for module in modules if passed(original, module) and not passed(converted, module)]


def with_modules(image: Image, modules: list[str]) -> Image:
    """The test image whose command runs these modules (the command the conversion records)."""
    config = image.config
    config["config"]["Cmd"] = ["python3", "-m", "test", "-j2", *modules]
    return with_config(image, config)


def convert(source: str, tag: str, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", source, "--to", f"docker-daemon:{tag}",
         "--dir", "/app/data", "--allow-env", "TMPDIR", "--out-dir", str(out)],  # TMPDIR: the volume run
        check=True, capture_output=True, text=True,
    )


def keys_copy(out: Path, tmp: Path, name: str) -> Path:
    """A private copy of the conversion's keys directory (the runtime records tags in it)."""
    target = tmp / name
    target.mkdir(mode=0o700)
    for item in out.iterdir():
        (target / item.name).write_bytes(item.read_bytes())
    (target / "keys.json").chmod(0o600)
    return target


@contextlib.contextmanager
def oracle_images(modules: list[str], tmp: Path) -> Iterator[OracleImages]:
    """The python-tests image running ``modules``, loaded into the engine, and its conversion
    (from the same archive); both removed from the engine at the end."""
    name = f"sconify-oracle-{uuid.uuid4().hex[:8]}"
    images = OracleImages(f"{name}:original", f"{name}:conf", tmp / "out")
    archive = tmp / "original.tar"
    image = with_modules(read_image(f"oci:{build_image('python-tests')}:latest"), modules)
    write_image(image, f"docker-archive:{archive}:{images.original}")
    try:
        docker("load", "-i", str(archive))
        convert(f"docker-archive:{archive}", images.converted, images.out)
        yield images
    finally:
        docker("rmi", "-f", images.original, images.converted, check=False)
