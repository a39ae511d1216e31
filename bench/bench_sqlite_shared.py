"""Four processes of the service inserting into one SQLite database on a Docker volume (issue 23,
"One volume, many processes"): rows per second, the original image against the converted one
(the launcher's shared plaintext cache), each on a fresh volume, fork and spawn, both journals.

    python bench/bench_sqlite_shared.py [--rows-per-process 250] [--repeat 3]

Needs a Docker engine at $DOCKER_HOST. Builds the images of tests/test_runtime_sqlite.py (the
Python demo with its SQLITE_CHECK script, converted with --dir /app/data --allow-args); the
timed part is the workers' run (scenario ``rate``: from their start to their join), every row in
its own transaction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import docker  # noqa: E402

from sconify.demo import debimage  # noqa: E402
from engine_images import EngineImages  # noqa: E402
from test_runtime_docker import run  # noqa: E402
from test_runtime_sqlite import SCRIPT, SQLITE_CHECK  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-process", type=int, default=250)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    client = docker.from_env()
    name = f"sconify-bench-sqlite-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        images = EngineImages(client, work)
        try:
            original = images.derived(images.loaded(f"oci:{debimage.build_image('python')}:latest"),
                                      {SCRIPT: (SQLITE_CHECK.encode(), 0o644)}, cmd=["python3", SCRIPT])
            converted_image = images.converted(original, "--dir", "/app/data", "--allow-args")
            tag, keys = converted_image.tag, converted_image.out
            print(f"{'case':<14} {'original rows/s':>16} {'converted rows/s':>17} {'ratio':>6}  rows")
            for mode, method in (("delete", "fork"), ("delete", "spawn"), ("wal", "fork"), ("wal", "spawn")):
                rates: dict[bool, list[float]] = {False: [], True: []}
                rows: dict[bool, int] = {}
                for _ in range(args.repeat):
                    for converted in (False, True):
                        volume = client.volumes.create(f"{name}-{uuid.uuid4().hex[:6]}").name
                        secrets = work / f"secrets-{uuid.uuid4().hex[:6]}"  # the keys as written: a fresh volume's tag
                        secrets.mkdir()
                        (secrets / "keys.json").write_bytes((keys / "keys.json").read_bytes())
                        try:
                            status, out, err = run(client, tag if converted else original,
                                                   ["python3", SCRIPT, "rate", f"/app/data/{mode}.db", mode, "marker",
                                                    method, str(args.rows_per_process)],
                                                   secrets=secrets if converted else None,
                                                   volumes={volume: {"bind": "/app/data", "mode": "rw"}})
                        finally:
                            client.volumes.get(volume).remove(force=True)
                        if status != 0:
                            print(err[-2000:], file=sys.stderr)
                            return 1
                        result = json.loads(out)
                        rates[converted].append(result["rows"] / result["seconds"])
                        rows[converted] = result["rows"]
                o, c = statistics.median(rates[False]), statistics.median(rates[True])
                print(f"{mode + ' ' + method:<14} {o:>16.0f} {c:>17.0f} {c / o:>6.2f}  {rows[False]} / {rows[True]}")
        finally:
            images.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
