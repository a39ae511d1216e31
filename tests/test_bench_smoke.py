"""The benchmark runner still runs: bench/run.py --quick on the Python fixture prints a table of
real measurements (sconify-image next to skopeo and the bare repack) and writes the same as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo (the baseline) is not installed")
def test_quick_python_bench_measures_sconify_next_to_its_baselines(python_image, tmp_path):
    results = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "python", "--json", str(results), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "python fixture" in done.stdout and "skopeo copy zstd" in done.stdout
    report = json.loads(results.read_text())
    rows = {(row["ours"], row["baseline"]): row for row in report["rows"]}
    ours = rows[("sconify-image", "skopeo copy zstd")]
    assert ours["wall"] > 0 and ours["cpu"] > 0 and 10 < ours["peak_rss_mb"] < 4096
    assert ours["ratio"] == pytest.approx(ours["wall"] / ours["baseline_wall"])
    assert ours["target"] == "<= 1.5x skopeo" and isinstance(ours["met"], bool)
    assert rows[("  bare repack", None)]["wall"] > 0
    # Shared VMs: each row says how much CPU the host stole, and the run how fast the machine was.
    assert ours["steal"] is None or 0 <= ours["steal"] <= 1
    for when in ("before", "after"):
        assert report["machine"][when]["sha256_gb_s"] > 0.05
        assert f"machine {when}: SHA-256" in done.stdout
    for label in ("sconify verify", "sconify verify --keys"):  # the auditor's run and the data owner's
        verify = rows[(label, "sconify-image")]
        assert verify["wall"] > 0 and verify["target"] == ">= 2x faster than sconify"
    # Progress on stderr: each row as it is measured, with the figure its target is about.
    assert f"sconify-image {ours['wall']:.2f} s, CPU {ours['cpu']:.2f} s" in done.stderr
    assert f"; skopeo copy zstd {ours['baseline_wall']:.2f} s ({ours['ratio']:.2f}x); target <= 1.5x skopeo:" in done.stderr
    assert list(tmp_path.iterdir()) == [results], "the runner leaves no outputs behind"


def test_unknown_group_is_refused_with_the_list_of_groups():
    done = subprocess.run([sys.executable, str(RUN), "--only", "nosuch"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "python" in done.stderr and "embedfs" in done.stderr
