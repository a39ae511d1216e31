"""The image's own figures: its identity (config digest, diff_ids, the input's layers reused
byte for byte and their blobs, the io.sconify labels), that embedded files are gone from the
rootfs, and that the layers sconify added hold nothing the manifest does not list."""

from __future__ import annotations

from sconify.image import layers as L
from sconify.image.model import Image, Layer
from sconify.image.rootfs import RootFS
from sconify.outputs.manifest import LABEL_PREFIX, Manifest
from sconify.conversion.select import absolute, rel
from sconify.verify.report import VerifyReport, summarise
from sconify.verify.runtime import runtime_paths

# Transports that store every compression as it is: an image copied between them keeps its
# layer blobs (and their digests); docker-archive and the engine recompress zstd layers.
BLOB_KEEPING_TRANSPORTS = ("oci", "oci-archive")


def check_identity(report: VerifyReport, image: Image, manifest: Manifest) -> None:
    out = manifest.output
    report.add(
        "image config digest",
        image.config_digest == out.config_digest,
        image.config_digest
        if image.config_digest == out.config_digest
        else f"image has {image.config_digest}, manifest records {out.config_digest}",
    )
    diff_ids = list(image.diff_ids)
    if diff_ids == out.diff_ids:
        report.add("layer diff_ids", True, f"{len(diff_ids)} layers")
    else:
        changed = [
            f"layer {i}: image {a[:19]}..., manifest {b[:19]}..."
            for i, (a, b) in enumerate(zip(diff_ids, out.diff_ids))
            if a != b
        ]
        if len(diff_ids) != len(out.diff_ids):
            changed.insert(0, f"image has {len(diff_ids)} layers, manifest {len(out.diff_ids)}")
        report.add("layer diff_ids", False, summarise(changed))
    base = expected_lower_diff_ids(manifest)
    rewritten = len(manifest.rewritten_layers)
    report.add(
        "input layers reused byte for byte",
        diff_ids[: len(base)] == base,
        f"{len(base)} input layers" + (f", {rewritten} of them rewritten without protected plaintext" if rewritten else "")
        if diff_ids[: len(base)] == base
        else "the image's lower layers are not the input's (nor the rewritten ones the manifest records)",
    )
    layer_digests = [layer.digest for layer in image.layers]
    stored_as_written = (
        report.reference.partition(":")[0] in BLOB_KEEPING_TRANSPORTS
        and out.reference.partition(":")[0] in BLOB_KEEPING_TRANSPORTS
    )
    if out.layer_digests and len(layer_digests) == len(out.layer_digests) and stored_as_written:
        report.add(
            "layer blob digests",
            layer_digests == out.layer_digests,
            "as written"
            if layer_digests == out.layer_digests
            else summarise(
                [
                    f"layer {i} blob differs"
                    for i, (a, b) in enumerate(zip(layer_digests, out.layer_digests))
                    if a != b
                ]
            ),
        )
    labels = (image.config.get("config") or {}).get("Labels") or {}
    label = labels.get(LABEL_PREFIX + "mrenclave")
    report.add(
        "config label io.sconify.mrenclave",
        label == manifest.measurement.mrenclave,
        "matches the manifest" if label == manifest.measurement.mrenclave else f"label is {label!r}",
    )
    label, volumes = labels.get(LABEL_PREFIX + "volumes"), ",".join(v.path for v in manifest.volumes)
    report.add(
        "config label io.sconify.volumes",
        label == volumes,
        "matches the manifest" if label == volumes
        else f"label is {label!r}, the manifest's volumes {volumes!r}",
    )


def expected_lower_diff_ids(manifest: Manifest) -> list[str]:
    """The diff_ids the output's lower layers must have: the input's, with those the manifest
    records as rewritten (``rewritten_layers``) replaced, each only where it names the input's
    layer at its index."""
    expected = list(manifest.input.diff_ids)
    for layer in manifest.rewritten_layers:
        index = layer.get("index")
        if isinstance(index, int) and 0 <= index < len(expected) and layer.get("input_diff_id") == expected[index]:
            expected[index] = layer.get("output_diff_id")
        else:
            expected.append("rewritten layer record that names no input layer")  # never matches
    return expected


def check_no_plaintext(report: VerifyReport, fs: RootFS, manifest: Manifest, first: int = 0) -> None:
    """No layer holds a regular file or hardlink under an encrypted volume or an
    --encrypted-code directory, hidden by an upper layer or not (its bytes would be in the blob
    every pull downloads), except the data layer, whose files there are ciphertext. ``fs``
    holds the image's layers from index ``first`` on."""
    volumes = sorted(rel(volume.path) for volume in manifest.volumes
                     if volume.protection == "encrypted" and volume.path != "/")
    code = sorted(rel(root) for root in manifest.embedfs.encrypted_roots)
    roots = volumes + code
    problems = []
    for index, layer in enumerate(fs.image.layers):
        if layer.diff_id == manifest.data_layer:
            continue
        for placed in fs.placed.get(index, ()):
            if any(placed.path.startswith(root + "/") for root in roots):
                what = "a hardlink" if placed.kind == "hardlink" else "plaintext"
                problems.append(f"layer {first + index} ({layer.diff_id}) holds {what} {absolute(placed.path)}")
    report.add(
        "no plaintext of encrypted volumes in any layer",
        not problems,
        f"{len(fs.image.layers)} layers, {len(volumes)} encrypted volumes"
        + (f", {len(code)} encrypted code directories" if code else "") if not problems else summarise(problems),
    )


def check_lower_layers(report: VerifyReport, image: Image, manifest: Manifest) -> None:
    """The input's layers (as the output holds them): each blob read and inflated once, digest
    and diff_id checked (one recorded for an input blob stored as recorded is not hashed
    again), and their tar headers searched for plaintext of the encrypted volumes."""
    recorded = recorded_input_blobs(image.layers, manifest)
    with RootFS.from_image(image, diff_ids_known=recorded) as fs:
        recomputed = len(image.layers) - len(recorded)
        report.add("input layers' blobs", True, f"{len(image.layers)} layers: digests checked, tar headers read; "
                                               f"{recomputed} diff_ids recomputed (blob not the input's as recorded)")
        check_no_plaintext(report, fs, manifest)


def recorded_input_blobs(layers: tuple[Layer, ...], manifest: Manifest) -> set[int]:
    """Indexes of the input layers stored as the manifest records them (same blob digest): once
    that digest is checked, the blob is the one sconify read, inflated and hashed, so its
    diff_id is the recorded one, which ``check_identity`` compares with the config's."""
    recorded = manifest.input.layer_digests
    return {index for index, layer in enumerate(layers) if index < len(recorded) and layer.digest == recorded[index]}


def check_removed(report: VerifyReport, fs: RootFS, manifest: Manifest, *, whiteouts_needed: bool) -> None:
    """Embedded files must be gone: absent from the view and, when the view holds only the
    layers sconify added, named by a whiteout there."""
    problems = [f"{p} still present" for p in manifest.embedfs.removed if rel(p) in fs.entries]
    if whiteouts_needed:
        problems += [f"{p} not whited out" for p in manifest.embedfs.removed if rel(p) not in fs.whiteouts]
    report.add(
        "embedded files absent from the rootfs",
        not problems,
        f"{len(manifest.embedfs.removed)} files" if not problems else summarise(problems),
    )


def check_added_layers(report: VerifyReport, fs: RootFS, manifest: Manifest) -> None:
    """The layers sconify added hold the executable, each volume's fspf, the ciphertexts, the
    whiteouts of the embedded files and the runtime's files: nothing else."""
    expected = {rel(manifest.executable.path)} | {rel(volume.fspf_path) for volume in manifest.volumes} | {
        rel(path) for volume in manifest.volumes if volume.protection == "encrypted" for path in volume.files
    } | runtime_paths(manifest)
    problems = [
        f"{absolute(p)} added"
        for p, entry in sorted(fs.entries.items())
        if entry.kind != "dir" and p not in expected
    ]
    problems += [
        f"whiteout of {absolute(p)}"
        for p in sorted(fs.whiteouts - {rel(p) for p in manifest.embedfs.removed})
    ]
    report.add(
        "added layers hold only what the manifest lists",
        not problems,
        f"{len(expected)} files, {len(fs.whiteouts)} whiteouts" if not problems else summarise(problems),
    )
