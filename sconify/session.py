"""The CAS session: SCONE's policy document that releases the fspf key to the measured enclave.

Written in SCONE's session language (version 0.3): one service with the MRENCLAVE, command,
environment, working directory, fspf path, fspf tag and fspf key. The key is a reference to a
session secret (``$$SCONE::<name>:hex$$``) whose value the operator supplies when uploading the
session, unless ``--inline-keys`` puts it in the file. Layout: docs/session.md.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

import yaml

from sconify.atomic import atomic_write_bytes
from sconify.errors import UsageError

SESSION_LANGUAGE_VERSION = "0.3"
SESSION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class SessionSpec:
    name: str
    service: str
    image_name: str
    mrenclave: str
    command: list[str]
    environment: dict[str, str]
    pwd: str
    fspf_path: str
    fspf_tag: str
    fspf_key: bytes | None  # None: reference a secret; bytes only with --inline-keys

    @property
    def key_secret_name(self) -> str:
        return f"{self.service}_fspf_key"


def check_session_name(name: str) -> str:
    if not SESSION_NAME_PATTERN.match(name):
        raise UsageError(
            f"session name {name!r} is not valid; use letters, digits, '_', '.', '-' "
            "(at most 128 characters, not starting with '.' or '-')"
        )
    return name


def session_document(spec: SessionSpec) -> dict:
    """The session as a plain dict, in the order SCONE's documentation writes it."""
    if spec.fspf_key is None:
        key_value = f"$$SCONE::{spec.key_secret_name}:hex$$"
        secret = {
            "name": spec.key_secret_name,
            "kind": "binary",
            "export_public": False,
        }
    else:
        key_value = spec.fspf_key.hex()
        secret = None
    service = {
        "name": spec.service,
        "image_name": spec.image_name,
        "mrenclaves": [spec.mrenclave],
        "command": shlex.join(spec.command),
        "environment": dict(sorted(spec.environment.items())),
        "pwd": spec.pwd,
        "fspf_path": spec.fspf_path,
        "fspf_key": key_value,
        "fspf_tag": spec.fspf_tag,
    }
    doc = {
        "name": spec.name,
        "version": SESSION_LANGUAGE_VERSION,
        "services": [service],
        "images": [{"name": spec.image_name}],
    }
    if secret is not None:
        doc["secrets"] = [secret]
    return doc


def render_session(spec: SessionSpec) -> bytes:
    header = "# CAS session written by sconify-image. " + (
        "The fspf key is INLINE: keep this file as secret as the keys file.\n"
        if spec.fspf_key is not None
        else f"Supply the secret {spec.key_secret_name!r} (the fspf_key of the keys file) when uploading.\n"
    )
    body = yaml.safe_dump(session_document(spec), sort_keys=False, default_flow_style=False)
    return (header + body).encode()


def write_session(spec: SessionSpec, path: str | os.PathLike) -> None:
    mode = 0o600 if spec.fspf_key is not None else 0o644
    atomic_write_bytes(path, render_session(spec), mode=mode)
