"""Auditing a sconified image: recompute every figure of its manifest from the image alone.

``verify_image`` reads the output image (any transport), and checks, each as a named ``Check``:
image identity (config digest, diff_ids, reused input layers, labels), the executable's SHA-256,
its embedfs (root hash, every member hash, the original executable underneath), MRENCLAVE (from
the manifest's parameters), that embedded files are gone from the rootfs, the fspf tag of every
volume and, given the keys, every file of every volume through that volume's shield. Nothing
here trusts the machine that built the image.

A module per concept:

- ``audit``: ``verify_image``, the one pass over the image that runs every check below.
- ``layers``: image identity, the input's blobs, the embedded files' whiteouts and what the
  layers sconify added hold.
- ``executable``: the executable's SHA-256, its embedfs and MRENCLAVE.
- ``volumes``: each volume's fspf tag and, with the keys, its files through its shield.
- ``runtime``: the runtime layer's files and config.
- ``report``: ``Check``, ``VerifyReport`` and the summary line of a failure.
- ``signature``: ``sign_manifest`` and the check of a signature file.
- ``diff``: what an image says about itself without a manifest (``measure``, ``diff``).
"""

from __future__ import annotations

from sconify.outputs.manifest import LABEL_PREFIX
from sconify.verify.audit import copy_out, verify_image
from sconify.verify.diff import diff_images, image_labels
from sconify.verify.report import Check, VerifyReport
from sconify.verify.signature import check_signature, sign_manifest

__all__ = [
    "LABEL_PREFIX", "Check", "VerifyReport", "check_signature", "copy_out", "diff_images",
    "image_labels", "sign_manifest", "verify_image",
]
