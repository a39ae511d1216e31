"""The runtime's costs (docs/runtime.md), each next to the same work without it, in one run.

- start-up: `docker run` of the converted Python demo (launcher: MRENCLAVE and SHA-256 of the
  executable, the volume's fspf; shield: the standard library from the embedfs) against
  `docker run` of the original image. Target: at most 0.3 s more. Needs a Docker engine
  (DOCKER_HOST, or ../shared/tools/start-dockerd); skipped with a note without one.
- volume throughput: a CPython reading a file of an encrypted volume through the shield, and
  writing one (protected again on close, committed with the fspf and the tag), against the same
  python reading and writing a plain file. Runs on this machine, no Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from measure import repeat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from embedfs.archive import directory_entries, pack  # noqa: E402
from embedfs.elf import inject  # noqa: E402
from embedfs.measure import measure_elf  # noqa: E402
from sconify.fspf import Fspf  # noqa: E402
from sconify.conversion.runtime import build_runtime  # noqa: E402

STARTUP_TARGET_S = 0.3


def docker_host() -> str | None:
    if os.environ.get("DOCKER_HOST"):
        return os.environ["DOCKER_HOST"]
    start = REPO.parent / "shared" / "tools" / "start-dockerd"
    if not start.is_file():
        return None
    result = subprocess.run([str(start)], capture_output=True, text=True, check=False)
    return result.stdout.split("DOCKER_HOST=", 1)[1].strip() if result.returncode == 0 else None


def startup_rows(work: Path, repeats: int, layout: Path, Row) -> list:
    host = docker_host()
    if host is None:
        return []
    env = {**os.environ, "DOCKER_HOST": host}
    tag = f"sconify-bench-runtime:{os.getpid()}"
    out = work / "startup"
    keys = out / "keys"
    convert = [sys.executable, "-m", "sconify", "image", "--from", f"oci:{layout}:latest", "--to",
               f"docker-daemon:{tag}-conf", "--dir", "/app/data", "--out-dir", str(keys), "--json"]
    original = [sys.executable, "-m", "sconify", "copy", f"oci:{layout}:latest", f"docker-daemon:{tag}-orig"]
    for argv in (convert, original):
        subprocess.run(argv, check=True, capture_output=True, env=env)
    (keys / "keys.json").chmod(0o644)
    try:
        run = ["docker", "run", "--rm", "--network", "none"]
        plain = repeat(run + [f"{tag}-orig"], repeats + 2, env=env)
        ours = repeat(run + ["-v", f"{keys}:/run/secrets/sconify", f"{tag}-conf"], repeats + 2, env=env)
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{tag}-orig", f"{tag}-conf"], capture_output=True, env=env)
    overhead = ours.wall - plain.wall
    return [Row.of("runtime start-up (Python demo)", "docker run converted", ours, None, "docker run original",
                   plain.wall, ours.wall / plain.wall, f"<= +{STARTUP_TARGET_S} s",
                   overhead <= STARTUP_TARGET_S)]


def record_policy(config: Path, keys: Path | None, command: list[str]) -> None:
    """Record ``command`` as the one the keys are granted to (the runtime config's policy, as
    sconify-image writes it), and bind the config to the keys file (its SHA-256)."""
    doc = json.loads(config.read_text())
    doc["policy"] = {"command": command, "service_command": command, "environment": {"PATH": os.environ["PATH"]},
                     "allow_args": False, "allow_env": []}
    config.write_text(json.dumps(doc))
    if keys is not None:
        bound = json.loads(keys.read_text())
        bound["runtime_config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
        keys.write_text(json.dumps(bound))


def local_startup_rows(work: Path, repeats: int, Row) -> list:
    """The runtime's own start-up cost, without Docker's container set-up: this machine's
    python3.11 with its whole standard library embedded (the shield serves every module from
    the embedfs) under sconify-run, against the same python reading its stdlib from disk."""
    python = Path(os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11"))
    stdlib = Path("/usr/lib/python3.11")
    if not stdlib.is_dir():
        return []
    tree = work / "stdlib-tree"
    target = tree / "usr" / "lib" / "python3.11"
    shutil.copytree(stdlib, target, symlinks=True,
                    ignore=shutil.ignore_patterns("test", "tests", "__pycache__", "idlelib", "tkinter", "ensurepip"))
    with (work / "stdlib.embedfs").open("wb") as out:
        pack(directory_entries(tree), out)
    exe = work / "python3.11"
    inject(python, work / "stdlib.embedfs", exe)
    exe.chmod(0o755)
    measured = measure_elf(exe)
    config = work / "startup.json"
    config.write_text(json.dumps({
        "schema": "sconify.runtime/v1", "executable": str(exe),
        "executable_sha256": hashlib.sha256(exe.read_bytes()).hexdigest(), "mrenclave": measured.mrenclave,
        "measurement": {k: measured.parameters[k] for k in ("heap_size", "stack_size", "threads", "ssa_frame_size")},
        "volumes": [], "ephemeral": [],
    }))
    env = {"PATH": os.environ["PATH"], "SCONIFY_RUNTIME_CONFIG": str(config)}
    code = "import json, ssl, sqlite3, csv, hashlib"  # what the Python demo imports
    record_policy(config, None, [str(exe), "-c", code])
    ours = repeat([str(build_runtime().launcher), str(exe), "-c", code], repeats + 2, env=env)
    plain = repeat([str(python), "-c", code], repeats + 2, env={"PATH": os.environ["PATH"]})
    return [Row.of("runtime start-up (local, stdlib embedded)", "sconify-run + shield", ours, None,
                   "python3.11 from disk", plain.wall, ours.wall / plain.wall, f"<= +{STARTUP_TARGET_S} s",
                   ours.wall - plain.wall <= STARTUP_TARGET_S)]


def volume_world(work: Path, size_mb: int) -> tuple[Path, dict, Path, Path]:
    """An injected python3.11, its runtime config and keys, an encrypted volume with one file of
    ``size_mb`` MB, and the same file in plain."""
    python = Path(os.path.realpath(shutil.which("python3.11") or "/usr/bin/python3.11"))
    tree = work / "tree" / "opt" / "bench"
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "mark.py").write_text("X = 1\n")
    with (work / "archive").open("wb") as out:
        pack(directory_entries(work / "tree"), out)
    exe = work / "python"
    inject(python, work / "archive", exe)
    exe.chmod(0o755)
    plain_dir, volume = work / "plain", work / "volume"
    plain_dir.mkdir()
    block = hashlib.shake_256(b"sconify bench runtime").digest(1 << 20)
    with (plain_dir / "data.bin").open("wb") as out:
        for _ in range(size_mb):
            out.write(block)
    fspf = Fspf.create()
    fspf.add_region(str(volume), kind="kernel", protection="encrypted")
    volume.mkdir()
    fspf.add_directory(str(volume), plain_dir, volume)
    key, tag = fspf.encrypt_to(str(volume / ".sconify.fspf"))
    measured = measure_elf(exe)
    entry = {"path": str(volume), "fspf_path": str(volume / ".sconify.fspf"), "protection": "encrypted"}
    config = work / "runtime.json"
    config.write_text(json.dumps({
        "schema": "sconify.runtime/v1", "executable": str(exe),
        "executable_sha256": hashlib.sha256(exe.read_bytes()).hexdigest(), "mrenclave": measured.mrenclave,
        "measurement": {k: measured.parameters[k] for k in ("heap_size", "stack_size", "threads", "ssa_frame_size")},
        "volumes": [entry], "ephemeral": [],
    }))
    keys = work / "keys" / "keys.json"
    keys.parent.mkdir()
    keys.write_text(json.dumps({"schema": "sconify.keys/v2", "session": "bench", "mrenclave": measured.mrenclave,
                                "volumes": [{**entry, "fspf_key": key.hex(), "fspf_tag": tag.hex()}]}))
    env = {"PATH": os.environ["PATH"], "SCONIFY_RUNTIME_CONFIG": str(config), "SCONIFY_KEYS": str(keys)}
    return exe, env, plain_dir, volume


def volume_command(env: dict, argv: list[str]) -> list[str]:
    """argv, recorded as the command the volume world's keys are granted to."""
    record_policy(Path(env["SCONIFY_RUNTIME_CONFIG"]), Path(env["SCONIFY_KEYS"]), argv)
    return argv


def volume_rows(work: Path, repeats: int, size_mb: int, Row) -> list:
    launcher = build_runtime().launcher
    exe, env, plain_dir, volume = volume_world(work / "volume-world", size_mb)
    read = "import sys; f = open(sys.argv[1], 'rb'); n = 0\nwhile (b := f.read(1 << 20)): n += len(b)\nassert n"
    write = ("import sys, os; f = open(sys.argv[1], 'wb'); b = bytes(1 << 20)\n"
             f"for _ in range({size_mb}): f.write(b)\nf.close()")
    rows = []
    for label, code, name in (("read", read, "data.bin"), ("write + close", write, "written.bin")):
        ours = repeat([str(launcher), *volume_command(env, [str(exe), "-c", code, str(volume / name)])], repeats,
                      env=env)
        plain = repeat([str(exe), "-c", code, str(plain_dir / name)], repeats)
        rows.append(Row.of(f"encrypted volume {label} {size_mb} MB", f"python {label} through the shield", ours,
                           size_mb * 1.048576 / ours.wall, f"python {label} plain file", plain.wall,
                           ours.wall / plain.wall))
    return rows
