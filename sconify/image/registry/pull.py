"""Reading an image from a registry: manifest (or index, resolved to ``--platform``), config,
and layers whose blobs stream from the registry when opened, hashed on every byte."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace

import requests
import urllib3

from sconify.errors import ImageError
from sconify.image import layers as L
from sconify.image.model import Image, Layer, make_image, parse_json_object
from sconify.image.oci import (
    manifest_parts,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_INDEX_DEPTH,
    MAX_JSON_SIZE,
    OCI_INDEX,
    OCI_MANIFEST,
    select_platform,
)
from sconify.image.reference import DEFAULT_PLATFORM, Reference
from sconify.image.registry.client import RegistryClient, RegistryOptions, backoff
from sconify.image.registry.options import BlobTransfer

MAX_MANIFEST_SIZE = 4 << 20  # as the distribution registry and containerd bound manifests
ACCEPT = f"{OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}"
MAX_RESUMES = 3  # a blob download that breaks resumes from where it stopped (Range), this often


def read_registry(reference: Reference, platform: str | None, options: RegistryOptions) -> Image:
    """Open ``docker://HOST/REPO:TAG`` (or ``@DIGEST``): metadata now, layer bytes when read."""
    source = str(reference)
    client = RegistryClient(reference.registry, reference.repository, options)
    data, media_type, digest = fetch_manifest(client, reference.tag or "latest", reference.digest, source)
    for _ in range(MAX_INDEX_DEPTH):
        if media_type in MANIFEST_TYPES:
            break
        if media_type not in INDEX_TYPES:
            raise ImageError(
                f"{source}: unsupported manifest media type {media_type!r}; only OCI and Docker "
                "schema 2 manifests and indexes are supported (re-push a schema 1 image with a current docker or skopeo)"
            )
        index = parse_json_object(data, f"{source}: image index")
        descriptor = select_platform(index, platform or DEFAULT_PLATFORM, source)
        wanted = L.check_digest(descriptor.get("digest"), f"{source}: index entry")
        data, media_type, digest = fetch_manifest(client, wanted, wanted, source, descriptor.get("size"))
    else:
        raise ImageError(f"{source}: image indexes nested deeper than {MAX_INDEX_DEPTH}; refusing it")
    manifest = parse_json_object(data, f"{source}: manifest")
    config_desc, layer_descs = manifest_parts(manifest, source, "the image in the registry is broken")
    config_digest, config_size = _descriptor(config_desc, f"{source}: config")
    if config_size > MAX_JSON_SIZE:
        raise ImageError(f"{source}: config is {config_size} bytes, larger than {MAX_JSON_SIZE}; refusing it")
    with registry_blob(client, config_digest, config_size, f"config {config_digest}") as blob:
        config_bytes = blob.read()
    layers = []
    for position, desc in enumerate(layer_descs):
        what = f"{source}: layer {position}"
        if not isinstance(desc, dict):
            raise ImageError(f"{what} descriptor is not an object; the image in the registry is broken")
        layer_digest, size = _descriptor(desc, what)
        media_type_of_layer = str(desc.get("mediaType"))
        compression = L.compression_for_media_type(media_type_of_layer, what)
        opener = RegistryBlobOpener(client, layer_digest, size)
        layers.append(Layer(layer_digest, size, "", compression, media_type_of_layer, opener, what))
    return replace(make_image(config_bytes, layers, source), manifest_digest=digest)


def _descriptor(descriptor: dict, what: str) -> tuple[str, int]:
    digest = L.check_digest(descriptor.get("digest"), what)
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what} descriptor has no valid size; the image in the registry is broken")
    return digest, size


def fetch_manifest(client: RegistryClient, name: str, expected: str | None, source: str,
                   size: object = None) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of the manifest ``name`` (a tag or digest), at most 4 MiB,
    its digest checked against ``expected`` or the registry's Docker-Content-Digest."""
    response = client.request("GET", f"/v2/{client.repository}/manifests/{name}", stream=True,
                              headers={"Accept": ACCEPT, "Accept-Encoding": "identity"},
                              what=f"the manifest {name}")
    with response:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
            raise _too_large(client, source, int(declared))
        data = bytearray()
        try:
            for chunk in response.iter_content(64 << 10):
                data += chunk
                if len(data) > MAX_MANIFEST_SIZE:
                    raise _too_large(client, source, len(data))
        except requests.exceptions.RequestException as exc:
            raise client.unreachable(exc, f"sending the manifest {name}") from None
        header_digest = response.headers.get("Docker-Content-Digest", "")
        content_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
    data = bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    claimed = expected or (header_digest if header_digest.startswith("sha256:") else None)
    if claimed is not None and claimed != digest:
        raise ImageError(
            f"{client.label} sent a manifest for {source} with digest {digest}, not the {claimed} "
            f"{'asked for' if expected else 'it announced'}; the registry is broken or tampered with, do not use this image"
        )
    if isinstance(size, int) and size != len(data):
        raise ImageError(f"{client.label} sent {len(data)} bytes for manifest {digest} of {source}, the index "
                         f"records {size}; the registry's copy is broken, push the image again")
    body_type = None
    try:
        import json

        parsed = json.loads(data)
        body_type = parsed.get("mediaType") if isinstance(parsed, dict) else None
        if body_type is None and isinstance(parsed, dict):
            body_type = OCI_INDEX if "manifests" in parsed else (OCI_MANIFEST if "layers" in parsed else None)
    except ValueError:
        pass
    return data, str(body_type or content_type), digest


def _too_large(client: RegistryClient, source: str, size: int) -> ImageError:
    return ImageError(f"{client.label} sent a manifest of {size} bytes or more for {source}, over the "
                      f"{MAX_MANIFEST_SIZE >> 20} MiB limit; refusing it (no image manifest is that large)")


# A damaged blob in a registry is mended where it was pushed from.
DAMAGED_FIX = "the registry's copy is damaged or the registry is lying; push the image again and do not use this one"


def registry_blob(client: RegistryClient, digest: str, size: int, what: str) -> L.VerifyingReader:
    """The blob ``digest`` streamed from the registry, its size and SHA-256 checked at the end (an
    ImageError naming the registry); a broken connection resumes with a Range request."""
    return L.VerifyingReader(RegistryStream(client, digest, what), digest, f"{what} from {_where(client)}",
                             size=size, fix=DAMAGED_FIX)


def _where(client: RegistryClient) -> str:
    return f"{client.label} ({client.repository})"


class RegistryBlobOpener:
    """The BlobOpener of a layer stored in a registry (its bytes unchecked: ``Layer`` checks
    them); a push to another repository of the same registry mounts the blob from
    ``repository`` instead of uploading it."""

    fix = DAMAGED_FIX

    def __init__(self, client: RegistryClient, digest: str, size: int) -> None:
        self.client = client
        self.registry = client.registry
        self.repository = client.repository
        self.digest = digest
        self.size = size
        self.where = _where(client)

    def __call__(self) -> io.RawIOBase:
        return RegistryStream(self.client, self.digest, f"layer blob {self.digest}").reported(self.size)


class RegistryStream(io.RawIOBase):
    """The bytes of a blob as the registry sends them, unchecked (the reader hashes them); a
    broken connection is resumed with a Range request, up to MAX_RESUMES times."""

    def __init__(self, client: RegistryClient, digest: str, what: str) -> None:
        super().__init__()
        self._client = client
        self._digest = digest
        self._what = what
        self._size: int | None = None  # reported to on_blob as a blob of this size (``reported``)
        self._transfer: BlobTransfer | None = None
        self._count = 0
        self._resumes = 0
        self._done = False
        self._response: requests.Response | None = None

    def reported(self, size: int) -> RegistryStream:
        """This stream, its download reported to ``RegistryOptions.on_blob`` as a blob of
        ``size`` bytes, from the first read to the end (or ``close``)."""
        self._size = size
        return self

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self._count:
            headers["Range"] = f"bytes={self._count}-"
        response = self._client.request(
            "GET", f"/v2/{self._client.repository}/blobs/{self._digest}", ok=(200, 206), follow=True,
            stream=True, headers=headers, what=f"sending {self._what}")
        if self._count and response.status_code == 200:  # no Range support: skip what we have
            skip = self._count
            while skip:
                got = response.raw.read(min(skip, L.CHUNK_SIZE), decode_content=False)
                if not got:
                    break
                skip -= len(got)
        self._response = response

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self._done:
            return 0
        view = memoryview(buffer)
        if self._transfer is None and self._size is not None:
            self._transfer = self._client.options.blob_transfer("pull", self._digest, self._size)
        while True:
            if self._response is None:
                self._open()
            try:
                data = self._response.raw.read(len(view), decode_content=False)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._drop()
                self._resumes += 1
                if self._resumes > MAX_RESUMES:
                    raise self._client.unreachable(exc, f"sending {self._what}") from None
                backoff(self._resumes - 1)
                continue
            break
        if not data:
            self._done = True
            self._drop()
            self._end_transfer()
            return 0
        n = len(data)
        view[:n] = data
        self._count += n
        if self._transfer is not None:
            self._transfer.advance(n)
        return n

    def _drop(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _end_transfer(self) -> None:
        if self._transfer is not None:
            self._transfer.end()
            self._transfer = None

    def close(self) -> None:
        self._drop()
        self._end_transfer()
        super().close()
