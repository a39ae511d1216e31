"""Pure changes to an Image: each returns a new Image and leaves its input untouched."""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

from sconify.errors import ImageError
from sconify.image.model import Image, Layer, canonical_json, parse_config


def append_layers(image: Image, layers: Iterable[Layer], history: list[dict] | None = None) -> Image:
    """``image`` with ``layers`` on top: diff_ids and history extended in the config."""
    new_layers = tuple(layers)
    if history is not None and len(history) != len(new_layers):
        raise ValueError("append_layers: give one history entry per layer")
    config = image.config
    config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    config["rootfs"]["diff_ids"] = [*config["rootfs"].get("diff_ids", []), *(l.diff_id for l in new_layers)]
    entries = history if history is not None else [{"created_by": "sconify"} for _ in new_layers]
    config["history"] = [*config.get("history", []), *entries]
    return replace(image, config_bytes=canonical_json(config), layers=image.layers + new_layers, manifest_digest="")


def with_config(image: Image, config: dict) -> Image:
    """``image`` with a new config (written as sorted-key JSON); its diff_ids must match the layers."""
    config_bytes = canonical_json(config)
    parsed = parse_config(config_bytes, "new image config")
    if tuple(parsed["rootfs"]["diff_ids"]) != image.diff_ids:
        raise ImageError(
            "new image config lists other diff_ids than the image's layers; "
            "keep rootfs.diff_ids as they are, or use append_layers"
        )
    return replace(image, config_bytes=config_bytes, manifest_digest="")


def replace_layers(image: Image, layers: dict[int, Layer]) -> Image:
    """``image`` with the layers at these indexes replaced (their diff_ids too, in the config)."""
    if not layers:
        return image
    config = image.config
    diff_ids = list(config["rootfs"]["diff_ids"])
    new_layers = list(image.layers)
    for index, layer in layers.items():
        new_layers[index] = layer
        diff_ids[index] = layer.diff_id
    config["rootfs"]["diff_ids"] = diff_ids
    return replace(image, config_bytes=canonical_json(config), layers=tuple(new_layers), manifest_digest="")
