"""Where a deployment learns what it accepts: the curator's manifest of a generic image, from a
file (``--manifest``) or attached to the image in its registry, its signature checked against the
curator's public key (``--signer``) by the checks ``sconify verify --signer`` runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sconify.errors import UsageError, VerificationFailed
from sconify.outputs.manifest import Manifest
from sconify.verify.report import VerifyReport


@dataclass(frozen=True)
class CuratorManifest:
    manifest: Manifest
    data: bytes  # its bytes, as signed
    where: str  # for messages: the file, or the image it is attached to
    signed_by: str  # the signature check's detail; "" when no --signer was given


def read_curator_manifest(image: str, manifest_path: str | None, signer: str | None, registry=None,
                          platform: str | None = None) -> CuratorManifest:
    """The manifest of ``image`` (``manifest_path``, else the one attached in its registry); with
    ``signer``, a signature that does not verify by that key is a one-line VerificationFailed."""
    report = VerifyReport(image)
    if manifest_path is not None:
        try:
            data = Path(manifest_path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --manifest {manifest_path}: {exc.strerror}") from None
        manifest = Manifest.parse(data, manifest_path)
        where = manifest_path
        if signer:
            from sconify.verify.signature import check_signature

            check_signature(report, manifest_path, None, signer)
    else:
        from sconify.verify.attached import read_attached

        attached = read_attached(image, registry, report, platform=platform, signer_path=signer)
        manifest, data, where = attached.manifest, attached.data, f"the manifest attached to {image}"
    failed = [check for check in report.checks if not check.ok]
    if failed:
        raise VerificationFailed(f"{where}: {failed[0].name}: {failed[0].detail}; refusing it (nothing was written)")
    signed = [check.detail for check in report.checks if "signature" in check.name]
    return CuratorManifest(manifest, data, where, signed[0] if signed else "")
