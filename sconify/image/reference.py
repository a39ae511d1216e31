"""Image references in skopeo syntax: ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``,
``docker-archive:FILE[:NAME:TAG]``, ``docker-daemon:NAME[:TAG]``."""

from __future__ import annotations

from dataclasses import dataclass

from sconify.errors import ImageError

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker-daemon")
DEFAULT_PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class Reference:
    """Where an image lives: a transport, a path or name, and an optional tag."""

    transport: str
    path: str  # directory or file; the image name for docker-daemon
    tag: str | None = None  # OCI ref name, or "name:tag" for docker-archive/docker-daemon

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")


def parse_reference(text: str) -> Reference:
    """Split a reference into transport, path and tag; raise ImageError when malformed."""
    transport, sep, rest = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise ImageError(
            f"image reference {text!r} has no known transport; "
            f"write it as one of {', '.join(t + ':...' for t in TRANSPORTS)}"
        )
    if not rest:
        raise ImageError(f"image reference {text!r} names no image; write {transport}:PATH[:TAG]")
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
