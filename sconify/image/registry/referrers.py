"""Artifacts attached to an image in a registry (OCI 1.1 referrers): the measurement manifest
and its signed attestation.

An artifact is an OCI image manifest with ``artifactType``, the empty config
(``application/vnd.oci.empty.v1+json``, ``{}``), one layer (the artifact's bytes) and
``subject`` = the image's manifest descriptor, pushed by digest. A registry with the referrers
API indexes it itself (it answers the PUT with ``OCI-Subject``, or ``GET /v2/NAME/referrers/
DIGEST`` answers 200); else (distribution 2.8) the OCI 1.1 tag-schema fallback: the index
tagged ``sha256-<hex>`` of the subject lists it (fetched, extended, pushed back).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass

from sconify.errors import ImageError
from sconify.image.oci import OCI_INDEX, OCI_MANIFEST
from sconify.image.registry.client import RegistryClient, RegistryOptions
from sconify.image.registry.pull import fetch_manifest, registry_blob
from sconify.image.registry.push import _Counter, _exists, _upload

SCONIFY_MANIFEST_TYPE = "application/vnd.sconify.manifest.v1+json"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()
CREATED = "org.opencontainers.image.created"
MAX_ARTIFACT_SIZE = 16 << 20


@dataclass(frozen=True)
class Attached:
    artifact_digest: str  # the artifact manifest
    blob_digest: str
    size: int  # of the artifact's blob
    via: str  # "referrers API" or "tag sha256-<hex>"


def fallback_tag(digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest}"


def _descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def _put_blob(client: RegistryClient, data: bytes, what: str) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not _exists(client, digest):
        _upload(client, digest, len(data), lambda: io.BytesIO(data), _Counter(), what)
    return digest


def _put_manifest(client: RegistryClient, name: str, data: bytes, media_type: str, what: str):
    response = client.request("PUT", f"/v2/{client.repository}/manifests/{name}", ok=(200, 201), data=data,
                              headers={"Content-Type": media_type}, what=what)
    response.close()
    return response


def attach(registry: str, repository: str, subject_digest: str, subject_size: int, artifact_type: str,
           data: bytes, options: RegistryOptions, subject_type: str = OCI_MANIFEST) -> Attached:
    """Push ``data`` as an artifact of ``artifact_type`` referring to the image manifest
    ``subject_digest`` in ``registry/repository``, and make it findable."""
    client = RegistryClient(registry, repository, options, writing=True)
    try:
        _put_blob(client, EMPTY, "the empty config")
        blob = _put_blob(client, data, f"the {artifact_type} artifact")
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY), "data": "e30="},
            "layers": [{**_descriptor(artifact_type, data)}],
            "subject": {"mediaType": subject_type, "digest": subject_digest, "size": subject_size},
            "annotations": {CREATED: created},
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        response = _put_manifest(client, digest, body, OCI_MANIFEST, f"storing the {artifact_type} artifact")
        if response.headers.get("OCI-Subject") == subject_digest or _has_referrers_api(client, subject_digest):
            return Attached(digest, blob, len(data), "referrers API")
        descriptor = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                      "artifactType": artifact_type, "annotations": {CREATED: created}}
        tag = fallback_tag(subject_digest)
        index = _fallback_index(client, subject_digest) or {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        index["manifests"] = [entry for entry in index["manifests"] if entry.get("digest") != digest] + [descriptor]
        index_body = json.dumps(index, sort_keys=True, separators=(",", ":")).encode()
        _put_manifest(client, tag, index_body, OCI_INDEX, f"storing the referrers index as {tag}")
        return Attached(digest, blob, len(data), f"tag {tag}")
    finally:
        client.close()


def _has_referrers_api(client: RegistryClient, subject_digest: str) -> bool:
    return _referrers(client, subject_digest) is not None


def _referrers(client: RegistryClient, subject_digest: str) -> dict | None:
    """The referrers API's index for ``subject_digest``; None when the registry has no such API."""
    response = client.request("GET", f"/v2/{client.repository}/referrers/{subject_digest}", ok=(200, 404, 400),
                              headers={"Accept": OCI_INDEX}, what="listing the referrers")
    with response:
        if response.status_code != 200 or \
                response.headers.get("Content-Type", "").partition(";")[0].strip() != OCI_INDEX:
            return None
        try:
            index = json.loads(response.content[: 4 << 20])
        except ValueError:
            return None
    return index if isinstance(index, dict) and isinstance(index.get("manifests"), list) else None


def _fallback_index(client: RegistryClient, subject_digest: str) -> dict | None:
    tag = fallback_tag(subject_digest)
    response = client.request("HEAD", f"/v2/{client.repository}/manifests/{tag}", ok=(200, 404),
                              headers={"Accept": OCI_INDEX}, what=f"looking up the referrers tag {tag}")
    response.close()
    if response.status_code == 404:
        return None
    data, _media_type, _digest = fetch_manifest(client, tag, None, f"{client.registry}/{client.repository}:{tag}")
    try:
        index = json.loads(data)
    except ValueError:
        index = None
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise ImageError(f"{client.label}: the tag {tag} of {client.repository} is not an OCI index; it is not "
                         "a referrers index, remove or rename that tag")
    return index


def find(registry: str, repository: str, subject_digest: str, artifact_type: str,
         options: RegistryOptions) -> tuple[bytes, str] | None:
    """The bytes of the newest artifact of ``artifact_type`` referring to ``subject_digest``
    (referrers API, else the ``sha256-<hex>`` index), every digest checked; and where it was
    found. None when there is none."""
    client = RegistryClient(registry, repository, options)
    try:
        index = _referrers(client, subject_digest)
        via = "referrers API"
        if index is None:
            index = _fallback_index(client, subject_digest)
            via = f"tag {fallback_tag(subject_digest)}"
        if index is None:
            return None
        entries = [entry for entry in index["manifests"]
                   if isinstance(entry, dict) and entry.get("artifactType") == artifact_type
                   and isinstance(entry.get("digest"), str)]
        if not entries:
            return None
        # newest by creation time; among equals, the one added last
        order = sorted(range(len(entries)),
                       key=lambda i: (str((entries[i].get("annotations") or {}).get(CREATED, "")), i))
        entry = entries[order[-1]]
        source = f"{registry}/{repository}@{entry['digest']}"
        data, _media_type, _digest = fetch_manifest(client, entry["digest"], entry["digest"], source, entry.get("size"))
        try:
            manifest = json.loads(data)
            layer = manifest["layers"][0]
            blob_digest, size = layer["digest"], layer["size"]
            subject = manifest.get("subject") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise ImageError(f"{client.label}: the artifact {source} is no artifact manifest; attach it again") from None
        if subject.get("digest") != subject_digest:
            raise ImageError(f"{client.label}: the artifact {source} refers to {subject.get('digest')}, not "
                             f"{subject_digest}; the referrers index is wrong, attach again")
        if not isinstance(size, int) or size > MAX_ARTIFACT_SIZE or not isinstance(blob_digest, str):
            raise ImageError(f"{client.label}: the artifact {source} has no valid layer (or one over "
                             f"{MAX_ARTIFACT_SIZE >> 20} MiB); attach it again")
        with registry_blob(client, blob_digest, size, f"artifact blob {blob_digest}") as blob:
            content = blob.read()
        return content, f"{via}, artifact {entry['digest']}"
    finally:
        client.close()

