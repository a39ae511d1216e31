"""Signature files: ``sconify sign`` (a DSSE envelope around an in-toto Statement) and the
"manifest signature" check of ``sconify verify --signer`` (DSSE, or the legacy Ed25519 ``.sig``)."""

from __future__ import annotations

import json
from pathlib import Path

from sconify.atomic import atomic_write_bytes
from sconify.errors import UsageError
from sconify.outputs.manifest import Manifest
from sconify.verify.report import VerifyReport

SIGNATURE_SCHEMA = "sconify.signature/v1"


def sign_manifest(manifest_path: str, key_path: str, signature_path: str) -> tuple[str, str]:
    """Sign the manifest as a DSSE envelope around an in-toto Statement (sconify.outputs.attest) whose
    subject is the output image; returns (algorithm, keyid)."""
    from sconify.outputs import attest

    key = attest.load_signing_key(key_path)
    try:
        data = Path(manifest_path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read manifest {manifest_path}: {exc.strerror}") from None
    manifest = Manifest.parse(data, manifest_path)  # only sign something that is a manifest
    output = manifest.output
    payload = attest.statement(output.reference, output.manifest_digest or output.config_digest, json.loads(data))
    envelope = attest.sign_envelope(payload, key)
    atomic_write_bytes(signature_path, attest.envelope_bytes(envelope) + b"\n")
    return attest.algorithm(key), envelope["signatures"][0]["keyid"]


def default_signature_path(manifest_path: str) -> str:
    """MANIFEST.intoto.jsonl (what sign writes), else a legacy MANIFEST.sig beside it."""
    dsse = f"{manifest_path}.intoto.jsonl"
    legacy = f"{manifest_path}.sig"
    return legacy if not Path(dsse).exists() and Path(legacy).exists() else dsse


def check_signature(report: VerifyReport, manifest_path: str, signature_path: str | None, signer_path: str) -> None:
    """A DSSE/in-toto signature file (or the legacy Ed25519-over-bytes ``.sig``) by ``signer_path``."""
    from sconify.outputs import attest

    signature_path = signature_path or default_signature_path(manifest_path)
    signer = attest.load_verify_key(signer_path)
    data = Path(manifest_path).read_bytes()
    try:
        raw = Path(signature_path).read_bytes()
    except OSError as exc:
        report.add("manifest signature", False, f"cannot read {signature_path}: {exc.strerror}")
        return
    try:
        legacy = json.loads(raw)
    except ValueError:
        legacy = None
    if isinstance(legacy, dict) and legacy.get("schema") == SIGNATURE_SCHEMA:
        check_legacy_signature(report, data, legacy, signature_path, signer, signer_path)
        return
    try:
        envelope = attest.parse_envelope(raw, signature_path)
        statement = attest.verify_envelope(envelope, signer, signer_path)
    except attest.EnvelopeError as exc:
        report.add("manifest signature", False, str(exc))
        return
    try:
        manifest_doc = json.loads(data)
    except ValueError:
        manifest_doc = None
    if statement.get("predicate") != manifest_doc:
        report.add("manifest signature", False,
                   "the signed statement does not match the manifest's content (manifest or signature changed)")
        return
    output = Manifest.parse(data, manifest_path).output
    image_digest = output.manifest_digest or output.config_digest
    if image_digest not in attest.subject_digests(statement):
        report.add("manifest signature", False, f"the signed statement's subject is not {image_digest}")
        return
    report.add("manifest signature", True,
               f"{attest.algorithm(signer)} DSSE in-toto statement by {attest.keyid(signer)[:16]}...")


def check_legacy_signature(report: VerifyReport, data: bytes, doc: dict, signature_path: str,
                           signer, signer_path: str) -> None:
    """The sconify.signature/v1 file: an Ed25519 signature over the manifest's exact bytes."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signature = bytes.fromhex(doc["signature"])
        claimed = bytes.fromhex(doc["public_key"])
    except (ValueError, KeyError, TypeError):
        report.add("manifest signature", False, f"{signature_path} is not a sconify signature file")
        return
    if not isinstance(signer, Ed25519PublicKey):
        report.add("manifest signature", False, f"{signature_path} is an Ed25519 signature; {signer_path} is not an Ed25519 key")
        return
    raw = signer.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if claimed != raw:
        report.add(
            "manifest signature",
            False,
            f"signed by another key ({claimed.hex()[:16]}...), not by {signer_path}",
        )
        return
    try:
        signer.verify(signature, data)
    except InvalidSignature:
        report.add(
            "manifest signature",
            False,
            "the signature does not match the manifest's bytes (manifest or signature changed)",
        )
        return
    report.add("manifest signature", True, f"ed25519 by {claimed.hex()[:16]}... (legacy .sig)")
