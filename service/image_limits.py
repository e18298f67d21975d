"""Limits of one image, checked from its header before any pixel is decoded. PIL only, no torch.

Used by the caption route (a 400 before the engine sees the request) and by the engine's image
decoding (service/engine/images.py), so both refuse the same images with the same message.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from service.protocol import BadRequest


@dataclass(frozen=True)
class ImageLimits:
    """What one image may cost: pixels in its header and long side / short side."""

    max_pixels: int = 16_000_000
    max_aspect: float = 20.0


def check_header(im: Image.Image, name: str, limits: ImageLimits) -> None:
    """BadRequest naming `name` and the limit when the header's size is out of bounds."""
    w, h = im.size
    if w < 1 or h < 1:
        raise BadRequest(f"{name}: image has no pixels ({w}x{h})", name)
    if w * h > limits.max_pixels:
        raise BadRequest(f"{name}: {w}x{h} = {w * h} pixels is over the limit of "
                         f"{limits.max_pixels} (max_image_pixels)", name)
    aspect = max(w, h) / min(w, h)
    if aspect > limits.max_aspect:
        raise BadRequest(f"{name}: {w}x{h} has an aspect ratio of {aspect:.1f}, over the limit "
                         f"of {limits.max_aspect:g} (max_image_aspect)", name)
