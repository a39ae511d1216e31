"""The CAS session: SCONE's policy document that releases the volumes' fspf keys to the measured
enclave.

Written in SCONE's session language (version 0.3): one service with the MRENCLAVE, command,
environment, working directory and the volumes it mounts, and one top-level volume per
protected region with its fspf path, fspf tag and fspf key. Each key is a reference to a session
secret (``$$SCONE::<volume>_key:hex$$``) whose value the operator supplies when uploading the
session, unless ``--inline-keys`` puts the keys in the file. Layout: docs/session.md.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field

import yaml

from sconify.atomic import StagedFiles, atomic_write_bytes
from sconify.errors import UsageError

SESSION_LANGUAGE_VERSION = "0.3"
SESSION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
MAX_VOLUME_NAME = 64


@dataclass(frozen=True)
class SessionVolume:
    name: str  # letters, digits, '_' and '-' (volume_names)
    path: str  # where the service mounts it: the region's path
    fspf_path: str
    fspf_tag: str  # "" in a template (--generic): the deployment's launcher makes the fspf
    fspf_key: bytes | None = field(default=None, repr=False)  # None: a secret reference (no --inline-keys)

    @property
    def key_secret_name(self) -> str:
        return volume_key_name(self.name)


def volume_key_name(volume: str) -> str:
    """The name of a volume's key secret in a session or a deployment's policy."""
    return f"{volume}_key"


@dataclass(frozen=True)
class SessionSpec:
    name: str
    service: str
    image_name: str
    mrenclave: str
    command: list[str]
    environment: dict[str, str]
    pwd: str
    volumes: tuple[SessionVolume, ...] = ()
    allow_args: bool = False  # the command ends in @@1: the host's arguments follow
    allow_env: tuple[str, ...] = ()  # environment NAME: "@@NAME": the host's value
    generic: bool = False  # a template (--generic): no tag, every key a secret each deployment makes

    @property
    def inline_keys(self) -> bool:
        return any(volume.fspf_key is not None for volume in self.volumes)


def check_session_name(name: str) -> str:
    if not SESSION_NAME_PATTERN.match(name):
        raise UsageError(
            f"session name {name!r} is not valid; use letters, digits, '_', '.', '-' "
            "(at most 128 characters, not starting with '.' or '-')"
        )
    return name


def volume_names(paths: list[str]) -> dict[str, str]:
    """A session name for each volume path: the path's components joined by '_' with every
    character but ASCII letters, digits, '_' and '-' made '_' (/app/data -> app_data, / -> root);
    a name taken by an earlier path (in sorted order) gets _2, _3..."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths):
        base = re.sub(r"[^A-Za-z0-9_-]", "_", path.strip("/").replace("/", "_"))[:MAX_VOLUME_NAME] or "root"
        name, number = base, 1
        while name in taken:
            number += 1
            name = f"{base}_{number}"
        taken.add(name)
        names[path] = name
    return names


HOST_ARGUMENTS = "@@1"


def session_command(command: list[str], allow_args: bool) -> str:
    """The service's command as the session writes it: ``@@1`` at the end when the host may
    append arguments (--allow-args)."""
    return shlex.join(command) + (f" {HOST_ARGUMENTS}" if allow_args else "")


def session_environment(environment: dict[str, str], allow_env: tuple[str, ...] | list[str]) -> dict[str, str]:
    """The environment the service gets: the image's values, ``@@NAME`` for a variable the host
    may set (--allow-env NAME)."""
    return dict(sorted({**environment, **{name: f"@@{name}" for name in allow_env}}.items()))


def session_document(spec: SessionSpec) -> dict:
    """The session as a plain dict, in the order SCONE's documentation writes it."""
    service = {
        "name": spec.service,
        "image_name": str(spec.image_name),  # a reference may be an ImageRef (a str subclass)
        "mrenclaves": [spec.mrenclave],
        "command": session_command(spec.command, spec.allow_args),
        "environment": session_environment(spec.environment, spec.allow_env),
        "pwd": spec.pwd,
    }
    mounts = [{"name": volume.name, "path": volume.path} for volume in spec.volumes]
    if mounts:
        service["volumes"] = mounts
    doc = {
        "name": spec.name,
        "version": SESSION_LANGUAGE_VERSION,
        "services": [service],
    }
    if spec.volumes:
        doc["volumes"] = [
            {
                "name": volume.name,
                "fspf_path": volume.fspf_path,
                "fspf_key": (
                    volume.fspf_key.hex()
                    if volume.fspf_key is not None
                    else f"$$SCONE::{volume.key_secret_name}:hex$$"
                ),
                **({"fspf_tag": volume.fspf_tag} if volume.fspf_tag else {}),
            }
            for volume in spec.volumes
        ]
    # SCONE attaches volumes to an image as well: the same list, so either reader finds it.
    doc["images"] = [{"name": str(spec.image_name), **({"volumes": [dict(m) for m in mounts]} if mounts else {})}]
    secrets = [
        {"name": volume.key_secret_name, "kind": "binary", "export_public": False}
        for volume in spec.volumes
        if volume.fspf_key is None
    ]
    if secrets:
        doc["secrets"] = secrets
    return doc


def render_session(spec: SessionSpec) -> bytes:
    header = "# CAS session written by sconify-image."
    if spec.generic:
        header = ("# CAS session template written by sconify-image --generic: no key, no fspf tag. Each deployment "
                  "makes its own secrets and volume keys (sconify deploy init, docs/deploy.md).")
    elif spec.inline_keys:
        header += " The fspf keys are INLINE: keep this file as secret as the keys file."
    elif spec.volumes:
        wanted = ", ".join(f"{v.key_secret_name!r} (volume {v.path!r})" for v in spec.volumes)
        header += f" When uploading, supply each volume's fspf_key from the keys file as secret {wanted}."
    body = yaml.safe_dump(session_document(spec), sort_keys=False, default_flow_style=False)
    return (header + "\n" + body).encode()


def write_session(spec: SessionSpec, path: str | os.PathLike, staged: StagedFiles | None = None) -> None:
    mode = 0o600 if spec.inline_keys else 0o644
    atomic_write_bytes(path, render_session(spec), mode=mode, staged=staged)
