"""Image references in skopeo syntax: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE[:NAME:TAG]``, ``docker-daemon:NAME[:TAG]``,
``docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sconify.errors import ImageError

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker-daemon", "docker")
DEFAULT_PLATFORM = "linux/amd64"
DOCKER_HUB = "docker.io"  # docker://NAME without a registry host, as skopeo and docker read it

# The distribution reference grammar (github.com/distribution/reference).
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                      r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Reference:
    """Where an image lives: a transport, a path or name, and an optional tag."""

    transport: str
    # directory or file; the image name for docker-daemon; HOST[:PORT]/REPO for docker
    path: str
    # OCI ref name, or "name:tag" for docker-archive/docker-daemon; for docker the tag or the
    # manifest digest (sha256:...; a tag never holds a ':')
    tag: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.path}" + (f"@{self.tag}" if self.digest else f":{self.tag}")
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")

    @property
    def digest(self) -> str | None:
        """The manifest digest a docker:// reference names instead of a tag."""
        return self.tag if self.transport == "docker" and self.tag and ":" in self.tag else None

    @property
    def registry(self) -> str:
        """HOST[:PORT] of a docker:// reference."""
        return self.path.partition("/")[0]

    @property
    def repository(self) -> str:
        """The repository path of a docker:// reference (without the registry host)."""
        return self.path.partition("/")[2]


def parse_reference(text: str) -> Reference:
    """Split a reference into transport, path and tag; raise ImageError when malformed."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ImageError(
            f"image reference {text!r} has no known transport; "
            f"write it as one of {', '.join(t + ('://...' if t == 'docker' else ':...') for t in TRANSPORTS)}"
        )
    if not rest:
        raise ImageError(f"image reference {text!r} names no image; write {transport}:PATH[:TAG]")
    if transport == "docker":
        return _parse_docker(rest, text)
    if transport == "docker-daemon":
        return Reference(transport, *_split_docker_name(rest, text))
    path, _, tag = rest.partition(":")
    if not path:
        raise ImageError(f"image reference {text!r} has an empty path; write {transport}:PATH[:TAG]")
    if transport == "docker-archive" and tag:
        name, name_tag = _split_docker_name(tag, text)
        tag = f"{name}:{name_tag}"
    elif tag and ("/" in tag or not tag.strip()):
        raise ImageError(f"image reference {text!r} has an invalid tag {tag!r}; use e.g. {transport}:{path}:latest")
    return Reference(transport, path, tag or None)


def _parse_docker(rest: str, whole: str) -> Reference:
    """``//HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`` (host docker.io and library/ implied, as docker
    does, when the first component is no host; tag ``latest`` by default)."""
    usage = "write docker://HOST[:PORT]/REPO[:TAG] or docker://HOST[:PORT]/REPO@sha256:DIGEST"
    if not rest.startswith("//") or len(rest) == 2:
        raise ImageError(f"image reference {whole!r} is malformed; {usage}")
    name = rest[2:]
    digest = None
    if "@" in name:
        name, _, digest = name.partition("@")
        if not _DIGEST_RE.fullmatch(digest):
            raise ImageError(f"image reference {whole!r} has an invalid digest {digest!r}; "
                             "only sha256:<64 lowercase hex digits> is accepted")
    tag = None
    head, slash, last = name.rpartition("/")
    if ":" in last:
        last, _, tag = last.partition(":")
        name = head + slash + last
        if not _TAG_RE.fullmatch(tag):
            raise ImageError(f"image reference {whole!r} has an invalid tag {tag!r}; {usage}")
    if tag and digest:
        raise ImageError(f"image reference {whole!r} has both a tag and a digest; keep one of them")
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        host, repository = first, remainder
    else:
        host, repository = DOCKER_HUB, name
    if host in ("index.docker.io", "registry-1.docker.io"):
        host = DOCKER_HUB
    if host == DOCKER_HUB and "/" not in repository:
        repository = "library/" + repository
    if not _HOST_RE.fullmatch(host):
        raise ImageError(f"image reference {whole!r} has an invalid registry host {host!r}; {usage}")
    if not _REPOSITORY_RE.fullmatch(repository) or len(repository) > 255:
        raise ImageError(
            f"image reference {whole!r} has an invalid repository {repository!r} (lowercase letters, "
            f"digits and . _ - separators, / between components); {usage}"
        )
    return Reference("docker", f"{host}/{repository}", digest or tag or "latest")


def _split_docker_name(text: str, whole: str) -> tuple[str, str]:
    """``name[:tag]`` -> (name, tag), tag defaulting to ``latest``; ``host:port/name`` is kept whole."""
    if "@" in text:
        raise ImageError(f"image reference {whole!r}: digests are not supported here; use NAME:TAG")
    name, sep, tag = text.rpartition(":")
    if not sep or "/" in tag:
        name, tag = text, "latest"
    if not name or not tag or any(c.isspace() for c in text) or name != name.lower():
        raise ImageError(
            f"image reference {whole!r} has an invalid image name; use a lowercase NAME:TAG such as myapp:1.0"
        )
    return name, tag


def parse_platform(text: str) -> tuple[str, str, str | None]:
    """``os/arch[/variant]`` -> (os, arch, variant)."""
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"platform {text!r} is malformed; write OS/ARCH[/VARIANT], e.g. linux/amd64")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None
