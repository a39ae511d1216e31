"""CPython's own regression tests as the oracle of the runtime's file semantics (issue 23).

    python bench/cpython_oracle.py                       # the issue's list, /tmp and TMPDIR in the volume
    python bench/cpython_oracle.py test_os test_json     # a few modules
    python bench/cpython_oracle.py --where tmp           # only the default /tmp run

Builds the `python-tests` demo image (the Python closure plus Debian's libpython3.11-testsuite,
from pinned packages), converts it with `--dir /app/data`, and runs `python3 -m test` on the same
modules in the original and in the converted image under the Docker engine: once with the
default `/tmp`, once with TMPDIR and the working directory inside the encrypted volume. It prints
each module's result side by side and exits 1 when a module that passes in the original does not
pass converted (the promise: every test that passes in the original passes converted).

The converted run uses the image's own command (`python3 -m test -j2` + the modules: two worker
processes, as the service's own children), so it is the measured command and gets the keys: for
another module list than sconify.demo.apps.CPYTHON_ORACLE_TESTS, both images are built with that
list as their command (a command passed to `docker run` would run without keys).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sconify.demo.debimage import build_image  # noqa: E402
from sconify.demo.apps import CPYTHON_ORACLE_TESTS  # noqa: E402
from sconify.image.model import Image  # noqa: E402
from sconify.image.mutate import with_config  # noqa: E402
from sconify.image.transports import read_image, write_image  # noqa: E402

# "[ 3/24] test_json passed", "[4/24/1] test_os failed (2 errors)", "... test_x crashed (Exit code -11)"
PROGRESS = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\]\s+(test_\w+)\s+(passed|failed|skipped|crashed|resource denied|interrupted|ran no tests)"
                      r"(?:\s*\(([^)]*)\))?")
WHERE = {
    "tmp": [],
    "volume": ["-e", "TMPDIR=/app/data/tmp", "-w", "/app/data/tmp"],
}


@dataclass
class Run:
    results: dict[str, str]  # module -> passed | failed | skipped | crashed ... (+ detail)
    seconds: float
    status: int
    tail: str


def docker(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout)


def run_tests(image: str, where: str, keys: Path | None, timeout: float) -> Run:
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
    results: dict[str, str] = {}
    for match in PROGRESS.finditer(out):
        results[match.group(1)] = match.group(2) + (f" ({match.group(3)})" if match.group(3) else "")
    return Run(results, time.monotonic() - start, status, "\n".join(out.splitlines()[-15:]))


def with_modules(image: Image, modules: list[str]) -> Image:
    """The test image whose command runs these modules (the command the conversion records)."""
    config = image.config
    config["config"]["Cmd"] = ["python3", "-m", "test", "-j2", *modules]
    return with_config(image, config)


def convert(original: str, tag: str, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "sconify", "image", "--from", f"docker-daemon:{original}", "--to", f"docker-daemon:{tag}",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(CPYTHON_ORACLE_TESTS))
    parser.add_argument("--where", choices=[*WHERE, "both"], default="both")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    wheres = list(WHERE) if args.where == "both" else [args.where]

    layout = build_image("python-tests")
    name = f"sconify-oracle-{uuid.uuid4().hex[:8]}"
    original, converted = f"{name}:original", f"{name}:conf"
    table: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sconify-oracle-") as tmp_name:
        tmp = Path(tmp_name)
        image = with_modules(read_image(f"oci:{layout}:latest"), args.modules)
        write_image(image, f"docker-archive:{tmp / 'original.tar'}:{original}")
        docker("load", "-i", str(tmp / "original.tar"))
        convert(original, converted, tmp / "out")
        try:
            for where in wheres:
                base = run_tests(original, where, None, args.timeout)
                conf = run_tests(converted, where, keys_copy(tmp / "out", tmp, f"keys-{where}"), args.timeout)
                print(f"\n== {where}: original {base.seconds:.0f} s, converted {conf.seconds:.0f} s")
                print(f"{'module':<28} {'original':<24} converted")
                for module in args.modules:
                    ours, theirs = conf.results.get(module, "not run"), base.results.get(module, "not run")
                    broken = theirs.startswith("passed") and not ours.startswith("passed")
                    print(f"{module:<28} {theirs:<24} {ours}{'   <-- ' if broken else ''}")
                    table.setdefault(where, {})[module] = f"{theirs} | {ours}"
                    if broken:
                        failures.append(f"{where}: {module}")
                if not conf.results:
                    print("converted run reported no module; its last lines:\n" + conf.tail)
        finally:
            docker("rmi", "-f", original, converted, check=False)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    passed = sum(1 for where in table for row in table[where].values() if row.split(" | ")[0].startswith("passed"))
    print(f"\n{passed - len(failures)} of {passed} module runs that pass in the original pass converted"
          + (f"; broken: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    if not os.environ.get("DOCKER_HOST"):
        sys.exit("cpython_oracle.py: needs a Docker engine: eval \"$(../shared/tools/start-dockerd)\" first")
    sys.exit(main())
