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
processes, as the service's own children), so it is the measured command and gets the keys: both
images are built with the module list as their command (a command passed to `docker run` would
run without keys). The runner is tests/regrtest.py; tests/test_cpython_oracle.py runs a subset
(sconify.demo.apps.CPYTHON_ORACLE_CI_TESTS) in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the oracle's runner, which tests/test_cpython_oracle.py uses too

from sconify.demo.apps import CPYTHON_ORACLE_TESTS  # noqa: E402
from regrtest import NOT_RUN, WHERE, keys_copy, oracle_images, regressions, run_tests  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", default=list(CPYTHON_ORACLE_TESTS))
    parser.add_argument("--where", choices=[*WHERE, "both"], default="both")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    wheres = list(WHERE) if args.where == "both" else [args.where]

    table: dict[str, dict[str, str]] = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sconify-oracle-") as tmp_name:
        tmp = Path(tmp_name)
        with oracle_images(args.modules, tmp) as images:
            for where in wheres:
                base = run_tests(images.original, where, None, args.timeout)
                conf = run_tests(images.converted, where, keys_copy(images.out, tmp, f"keys-{where}"), args.timeout)
                broken = regressions(args.modules, base, conf)
                print(f"\n== {where}: original {base.seconds:.0f} s, converted {conf.seconds:.0f} s")
                print(f"{'module':<28} {'original':<24} converted")
                for module in args.modules:
                    ours, theirs = conf.results.get(module, NOT_RUN), base.results.get(module, NOT_RUN)
                    print(f"{module:<28} {theirs:<24} {ours}{'   <-- ' if module in broken else ''}")
                    table.setdefault(where, {})[module] = f"{theirs} | {ours}"
                failures += [f"{where}: {module}" for module in broken]
                if not conf.results:
                    print("converted run reported no module; its last lines:\n" + conf.tail)
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
