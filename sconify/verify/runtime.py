"""The runtime layer, if the conversion added one: its files byte for byte as recorded, and a
runtime config that agrees with the manifest."""

from __future__ import annotations

import hashlib
import json

from sconify.image.rootfs import PathNotFound, RootFS
from sconify.outputs.manifest import Manifest
from sconify.conversion.runtime import CONFIG_PATH as RUNTIME_CONFIG_PATH
from sconify.conversion.select import is_regular, rel
from sconify.outputs.session import session_command, session_environment
from sconify.verify.report import VerifyReport, summarise


def runtime_paths(manifest: Manifest) -> set[str]:
    """The runtime layer's files (relative paths), if the conversion added one."""
    return {rel(path) for path in manifest.runtime.files} if manifest.runtime is not None else set()


def check_runtime(report: VerifyReport, fs: RootFS, manifest: Manifest, session: dict | None = None) -> None:
    """The runtime layer: each file byte for byte as recorded, and a runtime config that names
    the measured executable, the measurement and the volumes the manifest records (the launcher
    checks the measurement against the keys, so a wrong config only stops the service), and
    whose policy is what the manifest and the session (``session``: session.yaml, parsed) say."""
    runtime = manifest.runtime
    problems = []
    for path, digest in sorted(runtime.files.items()):
        entry = fs.entries.get(rel(path))
        if entry is None or not is_regular(entry):
            problems.append(f"{path} missing")
        elif hashlib.sha256(fs.read(rel(path))).hexdigest() != digest:
            problems.append(f"{path} differs from the recorded SHA-256")
    report.add("runtime files", not problems,
               f"{len(runtime.files)} files as recorded" if not problems else summarise(problems))
    try:
        config = json.loads(fs.read(rel(RUNTIME_CONFIG_PATH)))
        expected = {
            "executable": manifest.executable.path,
            "executable_sha256": manifest.executable.sconified_sha256,
            "mrenclave": manifest.measurement.mrenclave,
            "heap_size": manifest.measurement.heap_size,
            "stack_size": manifest.measurement.stack_size,
            "threads": manifest.measurement.threads,
            "volumes": [[v.path, v.fspf_path, v.protection, manifest.generic] for v in manifest.volumes],
        }
        found = {
            "executable": config["executable"],
            "executable_sha256": config["executable_sha256"],
            "mrenclave": config["mrenclave"],
            **{key: config["measurement"][key] for key in ("heap_size", "stack_size", "threads")},
            "volumes": [[v["path"], v["fspf_path"], v["protection"], v.get("generic", False)] for v in config["volumes"]],
        }
        wrong = [key for key in expected if expected[key] != found[key]]
        report.add("runtime config", not wrong,
                   "names the measured executable, its measurement and volumes" if not wrong
                   else f"{RUNTIME_CONFIG_PATH}: {', '.join(wrong)} differ from the manifest")
    except (PathNotFound, KeyError, TypeError, ValueError) as exc:
        report.add("runtime config", False, f"{RUNTIME_CONFIG_PATH} is missing or malformed ({exc})")
        return
    check_policy(report, config.get("policy"), manifest, session)


def check_policy(report: VerifyReport, policy, manifest: Manifest, session: dict | None) -> None:
    """What the launcher grants the keys to (runtime.json's policy) must be what the manifest
    records and what the session says the service runs: ``command`` (``@@1`` at the end with
    --allow-args) and ``environment`` (``@@NAME`` for --allow-env NAME)."""
    if not isinstance(policy, dict):
        report.add("runtime policy", False, f"{RUNTIME_CONFIG_PATH} records no policy (command, environment); "
                                            "re-convert the image with this sconify-image")
        return
    problems = []
    if manifest.runtime.policy is not None and manifest.runtime.policy != policy:
        problems.append("the manifest's policy differs from it")
    if session is not None:
        try:
            service = session["services"][0]
            command = session_command(list(policy["service_command"]), bool(policy["allow_args"]))
            environment = session_environment(dict(policy["environment"]), list(policy["allow_env"]))
            if service.get("command") != command:
                problems.append(f"session.yaml's command {str(service.get('command'))[:120]!r} is not {command[:120]!r}")
            if dict(service.get("environment") or {}) != environment:
                names = sorted(set(environment) ^ set(service.get("environment") or {}) | {
                    name for name in environment if (service.get("environment") or {}).get(name) != environment[name]})
                problems.append(f"session.yaml's environment differs in {', '.join(names)[:200]}")
        except (KeyError, IndexError, TypeError, AttributeError, ValueError):
            problems.append("session.yaml has no service with a command and an environment")
    report.add("runtime policy", not problems,
               "the command and environment the keys are granted to match the manifest"
               + (" and the session" if session is not None else "")
               if not problems else f"{RUNTIME_CONFIG_PATH}: {summarise(problems)}")
