"""Read and write images by reference, whatever the transport."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.model import BeforeCommit, Image, Layer, WriteResult
from sconify.image.reference import Reference, parse_reference
from sconify.image.registry.options import RegistryOptions

# Compressions each output transport can carry, and what an uncompressed or unsupported
# layer becomes when no compression is asked for.
ACCEPTED_COMPRESSIONS = {
    "oci": ("none", "gzip", "zstd"),
    "oci-archive": ("none", "gzip", "zstd"),
    "docker-archive": ("none", "gzip"),  # skopeo refuses zstd in docker-archive
    "docker-daemon": ("none", "gzip"),  # docker load 20.10 here fails on zstd layers
    "docker": ("none", "gzip", "zstd"),
}
DEFAULT_COMPRESSION = {
    "oci": "zstd",
    "oci-archive": "zstd",
    "docker-archive": "gzip",
    "docker-daemon": "none",
    "docker": "gzip",  # what every registry client and docker pull take
}


class ImageRef(str):
    """A reference string that carries the RegistryOptions to reach it: it passes through code
    that handles references as text (the conversion pipeline, verify) unchanged."""

    registry_options: RegistryOptions

    def __new__(cls, text: str, options: RegistryOptions) -> ImageRef:  # noqa: PYI034
        bound = super().__new__(cls, text)
        bound.registry_options = options
        return bound


def registry_options_of(ref: str, given: RegistryOptions | None) -> RegistryOptions:
    """``given``, else the options an ImageRef carries, else the defaults (auth files, TLS on)."""
    return given or getattr(ref, "registry_options", None) or RegistryOptions()


def read_image(ref: str, platform: str | None = None, limits: L.LayerLimits | None = None,
               registry: RegistryOptions | None = None) -> Image:
    """Open the image at ``ref`` (layers stay streams; ``platform`` picks from an index).

    Every layer carries ``limits`` (default ``LayerLimits()``): how far it may decompress.
    ``registry`` (or the options an ImageRef carries): credentials and TLS for ``docker://``.
    """
    reference = parse_reference(ref)
    if reference.transport == "docker":
        from sconify.image.registry.pull import read_registry

        image = read_registry(reference, platform, registry_options_of(ref, registry))
    else:
        image = _read(reference, platform)
    if limits is None:
        return image
    return replace(image, layers=tuple(replace(layer, limits=limits) for layer in image.layers))


def _read(reference: Reference, platform: str | None) -> Image:
    if reference.transport == "oci":
        from sconify.image.oci import read_oci_dir

        return read_oci_dir(reference.path, reference.tag, platform)
    if reference.transport == "oci-archive":
        from sconify.image.archive import read_oci_archive

        return read_oci_archive(reference.path, reference.tag, platform)
    if reference.transport == "docker-archive":
        from sconify.image.archive import read_docker_archive

        return read_docker_archive(reference.path, reference.tag)
    from sconify.image.daemon import read_docker_daemon

    return read_docker_daemon(reference.path, reference.tag or "latest")


def output_compression(layer: Layer, transport: str, compression: str | None) -> str:
    """The compression ``layer`` gets in ``transport``: the asked one, else kept when accepted."""
    if compression is not None:
        return L.check_compression(compression)
    default = DEFAULT_COMPRESSION[transport]
    if layer.compression == "none" and default != "none" and layer.compressible:
        return default
    if layer.compression in ACCEPTED_COMPRESSIONS[transport]:
        return layer.compression
    return default


def prepare_layers(image: Image, transport: str, compression: str | None) -> Image:
    """The image with every layer checked and in its output compression (recompressed only where
    needed); the layers returned are marked ``trusted`` so writers do not read them again."""
    if compression is not None:
        L.check_compression(compression)
        if compression not in ACCEPTED_COMPRESSIONS[transport]:
            raise ImageError(
                f"{transport} cannot carry {compression} layers; use --compression "
                + " or ".join(ACCEPTED_COMPRESSIONS[transport])
            )
    def prepare(layer: Layer) -> Layer:
        converted = layer.recompressed(output_compression(layer, transport, compression))
        if converted is layer and not layer.trusted:
            if layer.file_range is None:
                # A stream (a registry, a daemon): read once, to a temp copy, while checked.
                return layer.spooled()
            layer.verify()  # digest and diff_id, before anything is written
            converted = replace(layer, trusted=True)
        return converted

    # zlib, zstd and hashlib release the GIL: two layers at a time use both cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        layers = tuple(pool.map(prepare, image.layers))
    return replace(image, layers=layers)


def write_image(image: Image, ref: str, compression: str | None = None,
                registry: RegistryOptions | None = None, before_commit: BeforeCommit | None = None) -> WriteResult:
    """Write ``image`` to ``ref``; ``compression`` None keeps accepted layer blobs byte for byte.

    The output appears whole or not at all; the input is never modified. A ``docker://``
    output checks and uploads only the blobs the registry lacks (registry.push).
    ``before_commit`` gets the WriteResult before the write's last, atomic step (the rename of
    index.json or of the archive, docker load, the manifest and its tag): if it raises, the
    destination is left as it was.
    """
    reference = parse_reference(ref)
    if reference.transport == "docker":
        from sconify.image.registry.push import write_registry

        return write_registry(image, reference, compression, registry_options_of(ref, registry), before_commit)
    prepared = prepare_layers(image, reference.transport, compression)
    return _write(prepared, reference, before_commit)


def _write(image: Image, reference: Reference, before_commit: BeforeCommit | None) -> WriteResult:
    if reference.transport == "oci":
        from sconify.image.oci import write_oci_dir

        return write_oci_dir(image, reference.path, reference.tag, before_commit)
    if reference.transport == "oci-archive":
        from sconify.image.archive import write_oci_archive

        return write_oci_archive(image, reference.path, reference.tag, before_commit)
    if reference.transport == "docker-archive":
        from sconify.image.archive import write_docker_archive

        return write_docker_archive(image, reference.path, reference.tag, before_commit)
    from sconify.image.daemon import write_docker_daemon

    return write_docker_daemon(image, reference.path, reference.tag or "latest", before_commit)
