"""Where registry credentials come from, and the registry's auth challenges.

Sources, first match wins (docs/image-transports.md):
1. ``--creds USER:PASS`` (``RegistryOptions.creds``);
2. ``--authfile FILE``, else ``$REGISTRY_AUTH_FILE``: that file alone;
3. else ``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``,
   ``${DOCKER_CONFIG:-~/.docker}/config.json``.
In each file: ``credHelpers[HOST]``, then an ``auths`` entry for the repository or the host
(base64 ``auth`` or ``identitytoken``), then ``credsStore``. A helper is run as
``docker-credential-NAME get`` with the server on stdin.

Secrets live only in ``Credentials`` (its repr hides them); messages name the source, never
the user name or the secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sconify.errors import EnvironmentProblem, ImageError
from sconify.image.reference import DOCKER_HUB

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key docker login writes for Docker Hub
HELPER_TIMEOUT = 60


@dataclass(frozen=True)
class Credentials:
    """A user name and a password, or an identity (refresh) token; ``source`` names where they
    came from, for messages."""

    username: str = field(repr=False, default="")
    password: str = field(repr=False, default="")
    identity_token: str = field(repr=False, default="")
    source: str = ""


def parse_creds(text: str, source: str = "--creds") -> Credentials:
    """``USER:PASS`` -> Credentials (UsageError-like ImageError when malformed)."""
    username, sep, password = text.partition(":")
    if not sep or not username:
        raise ImageError(f"{source} must be USER:PASSWORD (the password may be empty after the ':')")
    return Credentials(username, password, source=source)


def default_auth_files(authfile: str | None) -> list[Path]:
    """The auth files to search, in order (see the module docstring)."""
    chosen = authfile or os.environ.get("REGISTRY_AUTH_FILE")
    if chosen:
        return [Path(chosen)]
    files = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        files.append(Path(runtime, "containers", "auth.json"))
    home = Path(os.path.expanduser("~"))
    files.append(home / ".config" / "containers" / "auth.json")
    docker_dir = os.environ.get("DOCKER_CONFIG")
    files.append(Path(docker_dir) / "config.json" if docker_dir else home / ".docker" / "config.json")
    return files


def find_credentials(registry: str, repository: str, creds: str | None, authfile: str | None) -> Credentials | None:
    """Credentials for ``registry`` (HOST[:PORT]) and ``repository``, or None for anonymous."""
    if creds is not None:
        return parse_creds(creds)
    explicit = bool(authfile or os.environ.get("REGISTRY_AUTH_FILE"))
    for path in default_auth_files(authfile):
        found = _from_file(path, registry, repository, required=explicit)
        if found is not None:
            return found
    return None


def _normal_key(key: str) -> str:
    """An ``auths`` key as HOST[:PORT][/PATH]: scheme and docker's /v1/ or /v2/ suffix dropped."""
    key = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    key = re.sub(r"/v[12]$", "", key)
    host, slash, rest = key.partition("/")
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    return host + slash + rest


def _from_file(path: Path, registry: str, repository: str, required: bool) -> Credentials | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ImageError(f"auth file {path} does not exist; check --authfile / REGISTRY_AUTH_FILE") from None
        return None
    except OSError as exc:
        raise ImageError(f"auth file {path} cannot be read ({exc.strerror}); check its permissions") from None
    try:
        document = json.loads(text) if text.strip() else {}
    except ValueError:
        raise ImageError(f"auth file {path} is not valid JSON; fix it or log in again (docker login)") from None
    if not isinstance(document, dict):
        raise ImageError(f"auth file {path} is not a JSON object; fix it or log in again (docker login)")
    helpers = document.get("credHelpers")
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if _normal_key(key) == registry and isinstance(helper, str) and helper:
                return run_helper(helper, registry, f"{path} credHelpers")
    auths = document.get("auths")
    if isinstance(auths, dict):
        # The longest matching key wins: a repository or namespace entry over the host entry.
        target = f"{registry}/{repository}"
        best: tuple[int, dict] | None = None
        for key, entry in auths.items():
            normal = _normal_key(key)
            matches = isinstance(entry, dict) and (target == normal or target.startswith(normal + "/"))
            if matches and (best is None or len(normal) > best[0]):
                best = (len(normal), entry)
        if best is not None:
            found = _decode_entry(best[1], path)
            if found is not None:
                return found
    store = document.get("credsStore")
    if isinstance(store, str) and store:
        return run_helper(store, registry, f"{path} credsStore")
    return None


def _decode_entry(entry: dict, path: Path) -> Credentials | None:
    token = entry.get("identitytoken")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ImageError(f"auth file {path} has an 'auth' entry that is not base64 USER:PASSWORD; "
                             "log in again (docker login)") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ImageError(f"auth file {path} has an 'auth' entry without USER:PASSWORD; log in again")
        return Credentials(username, password, token if isinstance(token, str) else "", source=str(path))
    if isinstance(token, str) and token:
        return Credentials(identity_token=token, source=str(path))
    return None


def run_helper(name: str, registry: str, where: str) -> Credentials | None:
    """``docker-credential-NAME get`` for ``registry``; None when it has nothing for it."""
    program = f"docker-credential-{name}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ImageError(f"credential helper name {name!r} in {where} is invalid; fix the auth file")
    executable = shutil.which(program)
    if executable is None:
        raise EnvironmentProblem(f"credential helper {program} (named in {where}) is not installed; "
                                 "install it, or remove it from the auth file and use --creds")
    server = DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry
    try:
        result = subprocess.run([executable, "get"], input=server.encode(), capture_output=True,
                                timeout=HELPER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise ImageError(f"credential helper {program} did not answer within {HELPER_TIMEOUT} s; "
                         "check it (is it waiting for a keyring unlock?)") from None
    if result.returncode != 0:
        message = result.stdout.decode(errors="replace") + result.stderr.decode(errors="replace")
        if "not found" in message.lower():
            return None  # the helper knows no credentials for this server: anonymous
        raise ImageError(f"credential helper {program} failed (exit {result.returncode}); "
                         f"run `echo {server} | {program} get` to see why")
    try:
        answer = json.loads(result.stdout)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"credential helper {program} answered something else than "
                         "{\"Username\": ..., \"Secret\": ...}; check the helper") from None
    if username == "<token>":  # docker's convention for an identity token
        return Credentials(identity_token=secret, source=f"credential helper {program}")
    return Credentials(username, secret, source=f"credential helper {program}")


# --- challenges ----------------------------------------------------------------------------

_PARAM_RE = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``Basic`` or ``Bearer`` with its parameters."""

    scheme: str  # lower case
    params: dict[str, str]


def parse_challenges(header: str) -> list[Challenge]:
    """The challenges of a ``WWW-Authenticate`` header (``Bearer realm="...",service="..."``)."""
    challenges = []
    for match in re.finditer(r"([A-Za-z]+)\s+((?:[A-Za-z_]+\s*=\s*(?:\"(?:[^\"\\]|\\.)*\"|[^\s,]+)\s*,?\s*)*)",
                             header or ""):
        params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
                  for m in _PARAM_RE.finditer(match.group(2))}
        challenges.append(Challenge(match.group(1).lower(), params))
    if not challenges and header and header.strip().lower().startswith("basic"):
        challenges.append(Challenge("basic", {}))
    return challenges
