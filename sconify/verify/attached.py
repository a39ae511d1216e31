"""The manifest attached to a docker:// image in its registry (``sconify-image --attach``), and
the checks of its signed attestation (``--sign``): what ``sconify verify`` and ``sconify deploy``
read when they are given an image and no manifest file."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sconify.errors import UsageError
from sconify.outputs.manifest import Manifest
from sconify.verify.report import VerifyReport


@dataclass(frozen=True)
class AttachedManifest:
    pinned: str  # docker://REGISTRY/REPOSITORY@DIGEST: the image the manifest is attached to
    manifest: Manifest
    data: bytes  # the manifest's bytes as attached


def read_attached(reference: str, registry, report: VerifyReport, platform: str | None = None,
                  signer_path: str | None = None) -> AttachedManifest:
    """The manifest attached to the docker:// image ``reference``; with ``signer_path``, the
    attached attestation's checks go into ``report`` (the caller decides what a failed one means)."""
    from sconify.image.reference import parse_reference
    from sconify.image.registry import referrers
    from sconify.image.transports import ImageRef, read_image

    ref = parse_reference(reference)
    if ref.transport != "docker":
        raise UsageError(f"{reference}: pass --manifest FILE (only docker:// images carry an attached manifest)")
    if signer_path:
        from sconify.outputs.attest import load_verify_key

        signer = load_verify_key(signer_path)  # a bad signer file fails before the registry is asked
    digest = read_image(ImageRef(reference, registry), platform=platform).manifest_digest
    pinned = f"docker://{ref.registry}/{ref.repository}@{digest}"
    found = referrers.find(ref.registry, ref.repository, digest, referrers.SCONIFY_MANIFEST_TYPE, registry)
    if found is None:
        raise UsageError(
            f"registry {ref.registry} holds no sconify manifest attached to {reference} ({digest}); "
            "push it with `sconify-image --to docker://... --attach`, or pass --manifest FILE")
    data, via = found
    manifest = Manifest.parse(data, f"the manifest attached to {reference}")
    report.add("attached manifest", True, f"{via}")
    if signer_path:
        check_attestation(report, ref, digest, data, signer, signer_path, registry)
    return AttachedManifest(pinned, manifest, data)


def check_attestation(report: VerifyReport, ref, digest: str, manifest_data: bytes, signer, signer_name: str,
                      registry) -> None:
    from sconify.image.registry import referrers
    from sconify.outputs import attest

    found = referrers.find(ref.registry, ref.repository, digest, referrers.DSSE_TYPE, registry)
    if found is None:
        report.add("attestation signature", False, f"no signed attestation is attached to {digest}; push with "
                   "`sconify-image --sign KEY`")
        return
    data, via = found
    try:
        envelope = attest.parse_envelope(data, f"the attestation ({via})")
        statement = attest.verify_envelope(envelope, signer, signer_name)
    except attest.EnvelopeError as exc:
        report.add("attestation signature", False, str(exc))
        return
    report.add("attestation signature", True, f"{attest.algorithm(signer)} by {attest.keyid(signer)[:16]}... ({via})")
    subjects = attest.subject_digests(statement)
    report.add("attestation subject", digest in subjects,
               digest if digest in subjects else f"the statement is about {', '.join(subjects) or 'nothing'}, "
               f"not the image {digest}")
    same = statement.get("predicate") == json.loads(manifest_data)
    report.add("attestation predicate", same, "the signed measurement is the attached manifest" if same else
               "the signed measurement differs from the attached manifest (one of them was replaced)")
