"""A deployment's policy (``policy.yaml``, docs/deploy.md): a SCONE session (language 0.3) with
the measurements the deployment accepts, its command, environment, injection files, volumes and
secret *declarations*, plus a ``sconify`` block for what SCONE's language has no words for (each
measurement's executable and runtime config digests, the state store).

The document stays a plain dict, in the order SCONE writes it: the user may edit it, and every
``sconify deploy`` command keeps what it does not itself change.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from sconify.atomic import StagedFiles, atomic_write_bytes
from sconify.deploy.secrets import Secret, secret_from_policy
from sconify.errors import UsageError
from sconify.outputs.manifest import Manifest
from sconify.outputs.session import (
    SESSION_LANGUAGE_VERSION,
    check_session_name,
    session_command,
    session_environment,
    volume_key_name,
    volume_names,
)

DEFAULT_STATE_DIR = "/var/lib/sconify"
VOLUME_KEY_SIZE = 32
# $$SCONE::NAME$$, $$SCONE::NAME:hex$$, $$SCONE::NAME:base64$$, $$SCONE::NAME.crt$$, $$SCONE::NAME.key$$:
# what stands between the markers, read as the runtime reads it (runtime/src/deployment.c)
REFERENCE = re.compile(r"\$\$SCONE::(.*?)\$\$", re.DOTALL)
RUNTIME_CONFIG = "/.sconify/runtime.json"


@dataclass(frozen=True)
class Measurement:
    """One accepted version of the image: what the launcher checks before it hands out a secret."""

    mrenclave: str
    executable_sha256: str
    runtime_config_sha256: str
    manifest_sha256: str

    def to_policy(self) -> dict:
        return dict(vars(self))


def measurement_of(manifest: Manifest, data: bytes, where: str) -> Measurement:
    """The measurement a generic image's manifest (``data``: its bytes) records."""
    if not manifest.generic:
        raise UsageError(f"{where} is not a generic image (its manifest lacks \"generic\": true); convert it with "
                         "`sconify-image --generic`, or run it with the keys.json of its conversion")
    runtime_config = (manifest.runtime.files.get(RUNTIME_CONFIG) if manifest.runtime is not None else None)
    if not runtime_config or manifest.runtime.policy is None:
        raise UsageError(f"{where}: the manifest records no runtime layer with a policy; re-convert the image "
                         "with this sconify-image --generic")
    return Measurement(
        mrenclave=manifest.measurement.mrenclave,
        executable_sha256=manifest.executable.sconified_sha256,
        runtime_config_sha256=runtime_config,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
    )


def new_policy(name: str, manifest: Manifest, measurement: Measurement) -> dict:
    """The policy of a new deployment of the generic image ``manifest`` describes: its command and
    environment, its volumes (each with a key secret of the deployment's), the state directory."""
    check_session_name(name)
    runtime_policy = manifest.runtime.policy
    service = {
        "name": manifest.executable.recipe,
        "image_name": name,
        "mrenclaves": [measurement.mrenclave],
        "command": session_command(list(runtime_policy["service_command"]), bool(runtime_policy["allow_args"])),
        "environment": session_environment(dict(runtime_policy["environment"]), list(runtime_policy["allow_env"])),
        "pwd": manifest.workdir or "/",
    }
    doc: dict = {"name": name, "version": SESSION_LANGUAGE_VERSION, "services": [service],
                 "images": [{"name": name}], "volumes": [], "secrets": []}
    add_volumes(doc, manifest)
    doc["sconify"] = {"measurements": [measurement.to_policy()], "state": {"dir": DEFAULT_STATE_DIR}}
    return doc


def add_volumes(doc: dict, manifest: Manifest) -> None:
    """Every volume the image declares, in the service, the image and the top-level volumes, with
    its key as a binary secret of the deployment; volumes the policy has already are kept."""
    names = volume_names([volume.path for volume in manifest.volumes])
    service, image = doc["services"][0], doc["images"][0]
    known = {volume.get("name") for volume in doc.setdefault("volumes", [])}
    for volume in manifest.volumes:
        name = names[volume.path]
        if name in known:
            continue
        mount = {"name": name, "path": volume.path}
        service.setdefault("volumes", []).append(dict(mount))
        image.setdefault("volumes", []).append(dict(mount))
        doc["volumes"].append({"name": name, "fspf_path": volume.fspf_path,
                               "fspf_key": f"$$SCONE::{volume_key_name(name)}:hex$$"})
        add_secret(doc, Secret(volume_key_name(name), "binary", size=VOLUME_KEY_SIZE, export_public=False))


def add_measurement(doc: dict, measurement: Measurement) -> bool:
    """Accept another version (its MRENCLAVE and measurement); False when it was accepted already."""
    service = doc["services"][0]
    mrenclaves = service.setdefault("mrenclaves", [])
    measurements = doc.setdefault("sconify", {}).setdefault("measurements", [])
    entry = measurement.to_policy()
    if entry in measurements:
        return False
    if measurement.mrenclave not in mrenclaves:
        mrenclaves.append(measurement.mrenclave)
    measurements.append(entry)
    return True


def add_secret(doc: dict, secret: Secret) -> None:
    """Declare ``secret``; one declared already must be of the same kind (its settings are kept)."""
    entries = doc.setdefault("secrets", [])
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == secret.name:
            if entry.get("kind") != secret.kind:
                raise UsageError(f"secret {secret.name} is declared as {entry.get('kind')} in the policy, not "
                                 f"{secret.kind}; rename one of them")
            return
    entries.append(secret.to_policy())


def set_environment(doc: dict, assignments: list[str]) -> None:
    """``--env NAME=VALUE`` (the value may reference secrets)."""
    environment = doc["services"][0].setdefault("environment", {})
    for assignment in assignments:
        name, equals, value = assignment.partition("=")
        if not equals or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise UsageError(f"--env {assignment[:60]!r}: give NAME=VALUE (e.g. --env 'DB_PASSWORD=$$SCONE::DB_PASSWORD$$')")
        environment[name] = value


def set_injection_files(doc: dict, injections: list[str]) -> None:
    """``--inject PATH=@FILE``: the file at PATH in the container holds FILE's content (which may
    reference secrets), served from memory to the measured service only."""
    if not injections:
        return
    image = doc["images"][0]
    files = image.setdefault("injection_files", [])
    for injection in injections:
        path, equals, source = injection.partition("=@")
        if not equals or not path.startswith("/") or not source:
            raise UsageError(f"--inject {injection[:80]!r}: give PATH=@FILE, PATH absolute in the container "
                             "(e.g. --inject /app/conf/secret.ini=@secret.ini)")
        try:
            content = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--inject {path}: cannot read {source}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--inject {path}: {source} is not UTF-8 text; reference binary secrets with "
                             "$$SCONE::NAME:base64$$ in a text file") from None
        files[:] = [entry for entry in files if entry.get("path") != path]
        files.append({"path": path, "content": content})


def declared_secrets(doc: dict, where: str) -> list[tuple[Secret, str | None]]:
    """Every secret the policy declares, with a value typed into it (or None)."""
    entries = doc.get("secrets") or []
    if not isinstance(entries, list):
        raise UsageError(f"{where}: secrets must be a list")
    found = [secret_from_policy(entry, where) for entry in entries]
    names = [secret.name for secret, _ in found]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise UsageError(f"{where}: secret {duplicate} is declared twice; keep one")
    return found


def references(doc: dict) -> list[tuple[str, str]]:
    """(where, what stands between ``$$SCONE::`` and ``$$``) of every secret reference in the
    command, the environment, the injection files and the volumes' keys."""
    places: list[tuple[str, object]] = []
    for service in doc.get("services") or []:
        places.append(("command", service.get("command")))
        places += [(f"environment {name}", value) for name, value in (service.get("environment") or {}).items()]
    for image in doc.get("images") or []:
        places += [(f"injection file {entry.get('path')}", entry.get("content"))
                   for entry in image.get("injection_files") or [] if isinstance(entry, dict)]
    places += [(f"volume {volume.get('name')}", volume.get("fspf_key")) for volume in doc.get("volumes") or []
               if isinstance(volume, dict)]
    return [(where, match[1]) for where, text in places if isinstance(text, str) for match in REFERENCE.finditer(text)]


def parse_reference(inner: str, kinds: dict[str, str]) -> tuple[str, str]:
    """(secret name, form) of a reference: form "" (as it is), hex, base64, crt or key; ``.crt`` and
    ``.key`` are forms only of a declared x509 secret (else part of the name), as the runtime reads them."""
    for form in ("hex", "base64"):
        if inner.endswith(f":{form}"):
            return inner[: -len(form) - 1], form
    for form in ("crt", "key"):
        if inner.endswith(f".{form}") and kinds.get(inner[:-4]) == "x509":
            return inner[:-4], form
    return inner, ""


def check_references(doc: dict, secrets: list[Secret], where: str) -> None:
    """Each reference names a declared secret in a form its kind has (docs/deploy.md)."""
    kinds = {secret.name: secret.kind for secret in secrets}
    for place, inner in references(doc):
        name, form = parse_reference(inner, kinds)
        kind = kinds.get(name)
        if kind is None:
            raise UsageError(f"{where}: {place} references secret {name[:64]}, which the policy does not declare; "
                             f"add it (--secret {name[:64]}:ascii) or fix the reference")
        if form == "" and kind != "ascii":
            raise UsageError(f"{where}: {place} references {kind} secret {name} as it is; write "
                             f"$$SCONE::{name}:hex$$ or :base64" + (" (or .crt, .key)" if kind == "x509" else ""))
        if form in ("hex", "base64") and kind == "x509":
            raise UsageError(f"{where}: {place} references x509 secret {name} as {form}; write "
                             f"$$SCONE::{name}.crt$$ or .key")


def check_shape(doc: object, where: str) -> dict:
    """The parts of a policy every command relies on (a hand-edited one gets a one-line error)."""
    if not (isinstance(doc, dict) and isinstance(doc.get("name"), str)
            and isinstance(doc.get("services"), list) and doc["services"] and isinstance(doc["services"][0], dict)
            and isinstance(doc.get("images"), list) and doc["images"] and isinstance(doc["images"][0], dict)
            and isinstance(doc.get("volumes", []), list) and isinstance(doc.get("sconify", {}), dict)
            and isinstance(doc["services"][0].get("environment", {}), dict)):
        raise UsageError(f"{where} is not a deployment policy (name, services, images, volumes, secrets, sconify); "
                         "move it away and rerun `sconify deploy init`")
    return doc


def read_policy(path: str | os.PathLike) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; it is not a deployment policy") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path} is not valid YAML{line}; fix it or move it away and rerun `sconify deploy init`"
                         ) from None
    return check_shape(doc, str(path))


def render_policy(doc: dict) -> bytes:
    header = ("# sconify deployment policy (docs/deploy.md): secret references only, the values are in "
              "secrets.json.\n")
    return (header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)).encode()


def write_policy(doc: dict, path: str | os.PathLike, staged: StagedFiles | None = None) -> None:
    atomic_write_bytes(path, render_policy(doc), mode=0o644, staged=staged)
