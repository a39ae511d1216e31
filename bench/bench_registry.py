"""Registry to registry: ``sconify-image --from docker://R/app:1 --to docker://R/app:1-conf``
against a real registry (Debian's docker-registry on 127.0.0.1, started here), next to skopeo
copying the same input image, in the same run.

The rows:

* **sconify-image registry -> registry** (same registry, the base layers there): wall, CPU, peak
  RSS, and what it moved: bytes downloaded (every input layer: the conversion reads them all)
  and bytes uploaded (the new layers, the config and the manifest only).
* **skopeo copy to another registry**: the input image's every blob read from R and written to
  a second registry R2, the cost of moving its bytes; the issue's 1.5x target is taken against it.
* **skopeo copy in the same registry**: R/app:1 -> R/app:copy moves no blob (the registry has
  them all; skopeo asks and writes the manifest), shown for what it is: the floor of any copy.
* **sconify-image oci: -> oci:**: the same conversion without a registry, so the registry's
  share of our time shows (ours minus this, against skopeo's transfer).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import repeat

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))  # the registry starter the tests use

TARGET_RATIO = 1.5


def registry_rows(work: Path, times: int, cases: list[tuple[str, Path, list[str]]], Row) -> tuple[list, list[str]]:
    """Rows for each (name, OCI layout, extra sconify-image arguments); notes of what was not run."""
    from registryd import REGISTRY, start_registry, stop

    if REGISTRY is None or shutil.which("skopeo") is None:
        return [], ["registry group not run: it needs docker-registry and skopeo (apt-get install docker-registry skopeo)"]
    rows: list = []
    first, second = Path(tempfile.mkdtemp(dir=work)), Path(tempfile.mkdtemp(dir=work))
    processes = []
    try:
        process, host = start_registry(first)
        processes.append(process)
        other_process, other_host = start_registry(second)
        processes.append(other_process)
        for name, layout, extra in cases:
            rows += _case(work, times, name, layout, extra, host, first / "data", other_host, second / "data", Row)
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(first, ignore_errors=True)
        shutil.rmtree(second, ignore_errors=True)
    return rows, []


def _case(work: Path, times: int, name: str, layout: Path, extra: list[str], host: str, storage: Path,
          other_host: str, other_storage: Path, Row) -> list:
    repository = name.replace(" ", "-").lower()
    source = f"docker://{host}/{repository}:1"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest", source],
                   check=True)
    input_blobs = _stored_size(layout)
    outdir = work / f"registry-{repository}"
    outdir.mkdir(parents=True, exist_ok=True)
    side = [outdir / "manifest.json", outdir / "session.yaml", outdir / "keys.json"]
    result = outdir / "result.json"

    def clear() -> None:
        for path in side:
            path.unlink(missing_ok=True)

    present = _blob_dirs(storage)

    def clear_outputs() -> None:
        """Each run finds the registry as the first did: the input's blobs only (its storage is
        read from disk at every request), so every run uploads the same new blobs."""
        clear()
        for blob in _blob_dirs(storage) - present:
            shutil.rmtree(blob, ignore_errors=True)

    argv = ["sh", "-c", 'exec "$@" > ' + str(result), "sh", sys.executable, "-m", "sconify", "image",
            "--from", source, "--to", f"docker://{host}/{repository}:1-conf", *extra, "--json", "--no-attach",
            "--manifest-out", str(side[0]), "--session-out", str(side[1]), "--keys-out", str(side[2])]
    ours = repeat(argv, times, before_each=clear_outputs)
    push = json.loads(result.read_text())["push"]
    # The second registry starts empty each time (its storage is read from disk at every request).
    other = repeat(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", source,
                    f"docker://{other_host}/{repository}:1"], times,
                   before_each=lambda: shutil.rmtree(other_storage, ignore_errors=True))
    same = repeat(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", source,
                   f"docker://{host}/{repository}:copy"], times)
    local_out = outdir / "local"
    local = repeat([sys.executable, "-m", "sconify", "image", "--from", f"oci:{layout}:latest", "--to",
                    f"oci:{local_out}:x", *extra, "--json", "--manifest-out", str(side[0]), "--session-out",
                    str(side[1]), "--keys-out", str(side[2])], times,
                   before_each=lambda: (clear(), shutil.rmtree(local_out, ignore_errors=True)))
    shutil.rmtree(outdir, ignore_errors=True)
    label = f"{name} via registry ({input_blobs / 1e6:.0f} MB of input blobs)"
    moved = (f"sconify-image registry -> registry: {input_blobs / 1e6:.1f} MB downloaded, "
             f"{push['uploaded_bytes'] / 1e6:.1f} MB uploaded in {push['uploaded_blobs']} blobs "
             f"({push['existing_blobs']} already there)")
    ratio = ours.wall / other.wall
    return [
        Row.of(label, moved, ours, None, "skopeo copy to another registry", other.wall, ratio,
               target=f"<= {TARGET_RATIO}x skopeo", met=ratio <= TARGET_RATIO),
        Row.of(label, "sconify-image registry -> registry", ours, None, "skopeo copy in the same registry (no blob moves)",
               same.wall, ours.wall / same.wall),
        Row.of(label, "sconify-image registry -> registry", ours, None, "sconify-image oci: -> oci: (no registry)",
               local.wall, ours.wall / local.wall),
        Row.of(label, "sconify-image registry RSS", ours, target="< 600 MB", met=ours.peak_rss_mb < 600),
        Row.of(label, "  skopeo copy to another registry", other),
        Row.of(label, "  skopeo copy in the same registry", same),
        Row.of(label, "  sconify-image oci: -> oci:", local),
    ]


def _blob_dirs(storage: Path) -> set[Path]:
    return set((storage / "docker/registry/v2/blobs/sha256").glob("*/*"))


def _stored_size(layout: Path) -> int:
    """The bytes of the image's layer blobs in an OCI layout (what a pull downloads)."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs" / "sha256" / index["manifests"][0]["digest"].partition(":")[2]).read_text())
    return sum(layer["size"] for layer in manifest["layers"])
