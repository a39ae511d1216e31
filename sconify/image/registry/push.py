"""Writing an image to a registry: only the blobs it lacks are uploaded, the manifest (and with
it the tag) last.

For each layer blob: HEAD it in the target repository; if absent and the layer was read from
another repository of the same registry, mount it (``POST .../blobs/uploads/?mount=&from=``);
else verify it (unless trusted), recompress it where the output asks, and upload it (``POST``
then one streamed ``PUT ?digest=``, the whole upload tried again on a dropped connection or a
429/5xx; each attempt reported to ``RegistryOptions.on_blob``). Then the config, then ``PUT
/manifests/TAG``: a push that fails earlier leaves no tag. ``RegistryPush`` does this in two
steps, so that a conversion sends blobs while it runs (sconify.conversion.pipeline.early_push).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import urllib.parse
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

from sconify.errors import ImageError
from sconify.image.model import BeforeCommit, Image, Layer, PushStats, WriteResult
from sconify.image.oci import OCI_MANIFEST, oci_manifest
from sconify.image.reference import Reference
from sconify.image.registry.client import RegistryClient, RegistryOptions, RegistryUnavailable, backoff
from sconify.image.registry.options import BlobTransfer
from sconify.image.registry.pull import RegistryBlobOpener

UPLOAD_ATTEMPTS = 3
PARALLEL_BLOBS = 3


@dataclass
class _Counter:
    uploaded_blobs: int = 0
    uploaded_bytes: int = 0
    mounted_blobs: int = 0
    existing_blobs: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class PushCancelled(Exception):
    """A blob upload stopped because the push it belongs to was given up (a failed conversion)."""


class _Body(io.RawIOBase):
    """An upload body of known length (so requests sends Content-Length, not chunks); each
    read is reported to ``transfer``."""

    def __init__(self, stream: BinaryIO, size: int, transfer: BlobTransfer,
                 cancel: threading.Event | None = None) -> None:
        super().__init__()
        self._stream = stream
        self._size = size
        self._transfer = transfer
        self._cancel = cancel
        self.sent = 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        # requests takes the body's length as len() - tell(): without this it would send chunks
        return self.sent

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:  # type: ignore[override]
        if self._cancel is not None and self._cancel.is_set():
            raise PushCancelled("the push was given up")  # stops the PUT under way
        data = self._stream.read(n if n and n > 0 else 1 << 20)
        self.sent += len(data)
        self._transfer.advance(len(data))
        return data


def _mount_source(layer: Layer, registry: str, repository: str) -> str | None:
    opener = layer.opener
    if isinstance(opener, RegistryBlobOpener) and opener.registry == registry and opener.repository != repository:
        return opener.repository
    return None


def write_registry(image: Image, reference: Reference, compression: str | None,
                   options: RegistryOptions, before_commit: BeforeCommit | None = None) -> WriteResult:
    """Push ``image`` to ``docker://HOST/REPO:TAG``."""
    with RegistryPush(reference, compression, options, image.layers) as push:
        return push.finish(image, before_commit)


class RegistryPush:
    """A push in two steps, so that blobs can go while the image is still being made: ``add``
    starts sending one layer blob on a background pool (HEAD, mount or upload) as soon as that
    layer is known; ``finish`` sends the layers not added yet, waits for them all, then sends the
    config and, last, the manifest with its tag. ``follow`` uploads a new layer while it is still
    being written (StreamedUpload). Leaving the ``with`` block by an exception (a failed
    conversion) stops the uploads under way (PushCancelled) and tags nothing; blobs sent by then
    stay untagged in the registry, as after any failed push, for its garbage collection.

    ``layers``: the layers that may be added (the input's), whose registries decide which
    repositories the push may mount from (a token's scopes are asked for once)."""

    def __init__(self, reference: Reference, compression: str | None, options: RegistryOptions,
                 layers: tuple[Layer, ...] = ()) -> None:
        from sconify.image import layers as L
        from sconify.image.transports import ACCEPTED_COMPRESSIONS

        if reference.digest:
            raise ImageError(f"{reference}: names a manifest by digest; push to a tag (docker://HOST/REPO:TAG)")
        if compression is not None:
            L.check_compression(compression)
            if compression not in ACCEPTED_COMPRESSIONS["docker"]:
                raise ImageError(f"docker cannot carry {compression} layers")
        self._reference = reference
        self._compression = compression
        self._options = options
        repository = reference.repository
        sources = {name for layer in layers if (name := _mount_source(layer, reference.registry, repository))}
        self._client = RegistryClient(reference.registry, repository, options, writing=True, mount_from=sources)
        self._counter = _Counter()
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL_BLOBS, thread_name_prefix="sconify-push")
        self._pushed: dict[str, Future[Layer]] = {}  # digest -> the layer as the registry has it
        self._cancel = threading.Event()  # set when the push is given up: uploads under way stop
        self._streams: list[StreamedUpload] = []

    def __enter__(self) -> RegistryPush:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            self._cancel.set()
        for future in self._pushed.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        for stream in self._streams:
            stream.abort()
            stream.join()
        self._client.close()

    def add(self, layer: Layer) -> None:
        """Start sending ``layer``'s blob (once per digest); a blob a ``follow`` upload already
        streamed is taken from it (and sent the usual way if that upload failed)."""
        if layer.digest in self._pushed:
            return
        streamed = next((s for s in self._streams if s.digest == layer.digest), None)
        if streamed is None:
            self._pushed[layer.digest] = self._pool.submit(self._push_layer, layer)
        else:
            self._pushed[layer.digest] = self._pool.submit(self._adopt, streamed, layer)

    def follow(self) -> StreamedUpload:
        """A BlobFollower (sconify.image.layerwriter) that uploads a new layer's blob while the
        layer is written: its bytes go in one streamed ``PATCH`` as the temp blob grows, then
        ``PUT ?digest=`` once it is complete. ``add`` of that layer then only waits for it."""
        stream = StreamedUpload(self._client, self._cancel)
        self._streams.append(stream)
        return stream

    def _adopt(self, streamed: StreamedUpload, layer: Layer) -> Layer:
        if streamed.succeeded():
            self._counter.add(uploaded_blobs=1, uploaded_bytes=layer.size)
            return layer
        return self._push_layer(layer)  # the streamed upload failed: the usual way, from the file

    def _push_layer(self, layer: Layer) -> Layer:
        from sconify.image.transports import output_compression

        client, counter, repository = self._client, self._counter, self._reference.repository
        if self._cancel.is_set():
            raise PushCancelled("the push was given up")
        target = output_compression(layer, "docker", self._compression)
        if target == layer.compression:
            if _exists(client, layer.digest):
                counter.add(existing_blobs=1)
                return layer
            source = _mount_source(layer, self._reference.registry, repository)
            location = None
            if source is not None:
                mounted, location = _mount(client, layer.digest, source)
                if mounted:
                    counter.add(mounted_blobs=1)
                    return layer
            if not layer.trusted:
                # Digest and diff_id, before a byte is uploaded; a stream (another registry, the
                # engine) is read once, into a local copy that the upload then reads.
                layer = layer.spooled() if layer.file_range is None else _verified(layer)
            _upload(client, layer.digest, layer.size, layer.open_raw, counter, f"layer blob {layer.digest}", location,
                    self._cancel)
            return layer
        converted = layer.recompressed(target)  # reads and checks the input layer
        if _exists(client, converted.digest):
            counter.add(existing_blobs=1)
        else:
            _upload(client, converted.digest, converted.size, converted.open_raw, counter,
                    f"layer blob {converted.digest}", cancel=self._cancel)
        return converted

    def finish(self, image: Image, before_commit: BeforeCommit | None = None) -> WriteResult:
        """Send what is left of ``image`` and tag it; its WriteResult (what was sent: the blobs
        added before too). ``before_commit`` gets that result once every blob is in place, before
        the manifest and its tag are sent: an exception there tags nothing."""
        client, counter, reference = self._client, self._counter, self._reference
        for layer in image.layers:
            self.add(layer)
        pushed = {digest: future.result() for digest, future in self._pushed.items()}
        final = replace(image, layers=tuple(pushed[layer.digest] for layer in image.layers))
        config_digest = final.config_digest
        if _exists(client, config_digest):
            counter.add(existing_blobs=1)
        else:
            config = final.config_bytes
            _upload(client, config_digest, len(config), lambda: io.BytesIO(config), counter, "the config")
        manifest = oci_manifest(final)
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        stats = PushStats(
            uploaded_blobs=counter.uploaded_blobs,
            uploaded_bytes=counter.uploaded_bytes + len(manifest),
            mounted_blobs=counter.mounted_blobs,
            existing_blobs=counter.existing_blobs,
            manifest_bytes=len(manifest),
        )
        result = WriteResult(
            reference=str(reference),
            manifest_digest=digest,
            config_digest=config_digest,
            layer_digests=tuple(layer.digest for layer in final.layers),
            manifest_media_type=OCI_MANIFEST,
            push=stats,
        )
        if before_commit is not None:
            before_commit(result)
        # The manifest and the tag in one request, after every blob it names is in place.
        response = client.request("PUT", f"/v2/{reference.repository}/manifests/{reference.tag}", ok=(200, 201),
                                  data=manifest, headers={"Content-Type": OCI_MANIFEST},
                                  what=f"storing the manifest as {reference.tag}")
        announced = response.headers.get("Docker-Content-Digest", digest)
        response.close()
        if announced != digest:
            raise ImageError(f"{client.label} stored the manifest of {reference} under digest {announced}, not "
                             f"{digest}; the registry rewrote it, check the registry")
        if self._options.on_push is not None:
            self._options.on_push(result)
        return result


def _exists(client: RegistryClient, digest: str) -> bool:
    response = client.request("HEAD", f"/v2/{client.repository}/blobs/{digest}", ok=(200, 404), follow=True,
                              what=f"looking up blob {digest}")
    response.close()
    return response.status_code == 200


def _mount(client: RegistryClient, digest: str, source: str) -> tuple[bool, str | None]:
    """Mount ``digest`` from repository ``source``: (True, None) when done, else (False, the
    upload session the registry opened instead)."""
    query = urllib.parse.urlencode({"mount": digest, "from": source})
    response = client.request("POST", f"/v2/{client.repository}/blobs/uploads/?{query}", ok=(201, 202),
                              headers={"Content-Length": "0"}, what=f"mounting blob {digest} from {source}")
    response.close()
    if response.status_code == 201:
        return True, None
    return False, response.headers.get("Location")


class StreamedUpload:
    """The upload of a blob that is still being written (a BlobFollower): one ``PATCH`` whose body
    is read from the temp file as it grows (chunked transfer, as docker pushes), then ``PUT
    ?digest=``, on a thread of its own. Any failure only makes ``succeeded`` False: the blob is
    then sent the usual way once it is complete."""

    def __init__(self, client: RegistryClient, cancel: threading.Event) -> None:
        self._client = client
        self._cancel = cancel
        self._changed = threading.Condition()
        self._available = 0
        self._final: tuple[str, int] | None = None
        self._aborted = False
        self._ok = False
        self._file: BinaryIO | None = None
        self._thread: threading.Thread | None = None

    @property
    def digest(self) -> str | None:
        return self._final[0] if self._final else None

    # -- BlobFollower -----------------------------------------------------------------------

    def start(self, path: str) -> None:
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the thread
        self._thread = threading.Thread(target=self._run, name="sconify-streamed-upload", daemon=True)
        self._thread.start()

    def grew(self, size: int) -> None:
        with self._changed:
            self._available = size
            self._changed.notify_all()

    def done(self, digest: str, size: int) -> None:
        with self._changed:
            self._available, self._final = size, (digest, size)
            self._changed.notify_all()

    def abort(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()

    # -- the upload ---------------------------------------------------------------------------

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def succeeded(self) -> bool:
        """Wait for the upload; whether the registry has the complete blob from it."""
        self.join()
        return self._ok

    def _chunks(self):
        offset = 0
        while True:
            with self._changed:
                while not (self._available > offset or self._final or self._aborted or self._cancel.is_set()):
                    self._changed.wait(0.5)
                if self._aborted or self._cancel.is_set():
                    raise PushCancelled("the streamed upload was given up")
                end = self._available
                if self._final is not None and offset >= self._final[1]:
                    return
            while offset < end:
                data = os.pread(self._file.fileno(), min(end - offset, 1 << 20), offset)
                if not data:
                    raise PushCancelled("the blob being written got shorter")
                offset += len(data)
                yield data

    def _run(self) -> None:
        client = self._client
        try:
            response = client.request("POST", f"/v2/{client.repository}/blobs/uploads/", ok=(202,),
                                      headers={"Content-Length": "0"}, what="starting an upload")
            response.close()
            location = response.headers.get("Location")
            if not location:
                return
            url = urllib.parse.urljoin(client.url(f"/v2/{client.repository}/blobs/uploads/"), location)
            response = client.request("PATCH", url, ok=(202,), data=self._chunks(), replayable=False,
                                      headers={"Content-Type": "application/octet-stream"},
                                      what="streaming a new layer")
            response.close()
            url = urllib.parse.urljoin(url, response.headers.get("Location", url))
            digest = self._final[0] if self._final else None
            if digest is None:
                return
            separator = "&" if urllib.parse.urlsplit(url).query else "?"
            response = client.request("PUT", url + separator + urllib.parse.urlencode({"digest": digest}),
                                      ok=(201,), headers={"Content-Length": "0"}, what="completing a streamed layer")
            response.close()
            self._ok = True
        except Exception:  # noqa: BLE001 - any failure: the blob goes the usual way (add)
            self._ok = False
        finally:
            if self._file is not None:
                self._file.close()


def _verified(layer: Layer) -> Layer:
    layer.verify()
    return replace(layer, trusted=True)


def _upload(client: RegistryClient, digest: str, size: int, open_stream: Callable[[], BinaryIO],
            counter: _Counter, what: str, location: str | None = None, cancel: threading.Event | None = None) -> None:
    """POST an upload session (unless one is given), then PUT the bytes with ``?digest=``;
    ``cancel`` set stops it."""
    for attempt in range(UPLOAD_ATTEMPTS):
        try:
            if location is None:
                response = client.request("POST", f"/v2/{client.repository}/blobs/uploads/", ok=(202,),
                                          headers={"Content-Length": "0"}, what=f"starting the upload of {what}")
                response.close()
                location = response.headers.get("Location")
            if not location:
                raise ImageError(f"{client.label} opened an upload without a Location; it is not a "
                                 "distribution registry, check the address")
            url = urllib.parse.urljoin(client.url(f"/v2/{client.repository}/blobs/uploads/"), location)
            separator = "&" if urllib.parse.urlsplit(url).query else "?"
            url += separator + urllib.parse.urlencode({"digest": digest})
            with open_stream() as stream:
                transfer = client.options.blob_transfer("push", digest, size)  # a retry starts anew
                try:
                    body = _Body(stream, size, transfer, cancel)
                    response = client.request("PUT", url, ok=(201,), data=body, replayable=False,
                                              headers={"Content-Type": "application/octet-stream"},
                                              what=f"uploading {what}")
                    response.close()
                finally:
                    transfer.end()
            if body.sent != size:
                raise ImageError(f"{what} gave {body.sent} bytes, expected {size}; the input changed while "
                                 "it was pushed, push again")
            counter.add(uploaded_blobs=1, uploaded_bytes=size)
            return
        except RegistryUnavailable:
            location = None
            if attempt == UPLOAD_ATTEMPTS - 1:
                raise
            backoff(attempt)
