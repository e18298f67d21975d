"""Image decoding for captioners, bounded before the work happens.

    decode_images: encoded image files → (n, 3, S, S) pixels. Each file's header is read first
                   (Pillow's `Image.open` is lazy): its pixel count and aspect ratio are checked
                   against `ImageLimits` before a single pixel is decoded; JPEGs are decoded
                   straight at a reduced scale (`draft`) when the model needs fewer pixels; the
                   centre square is resized to S × S in one step (`preprocess`: crop before
                   resize), so no intermediate image is larger than the decoded file. A 1×200000
                   PNG is refused for its aspect ratio; within the limits, one image costs at most
                   ~4 bytes × `max_pixels` on top of the output.
    trim_heap:     give freed heap pages back to the OS (glibc `malloc_trim`), after large work.

The HTTP layer checks the same limits from the header with a 400 (service/routes_caption.py);
the checks here hold for any engine caller and for deadlines (`deadline` is checked between
images, so a request whose time is up stops decoding).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import time
import warnings
from collections.abc import Sequence
from functools import cache

import torch
from PIL import Image

from models.image_encoder import ImageConfig, preprocess
from service.image_limits import ImageLimits, check_header
from service.protocol import BadRequest, DeadlineExceeded

TRIM_AFTER_PIXELS = 1_000_000  # decoded pixels of a request after which the heap is trimmed


def decode_one(raw: bytes, name: str, size: int, limits: ImageLimits) -> Image.Image:
    """One file → RGB image, checked from its header before decoding (see module docstring)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:  # lazy: only the header is parsed
                check_header(im, name, limits)
                if im.format == "JPEG":
                    im.draft("RGB", (size, size))  # decode at 1/2, 1/4 or 1/8 scale when enough
                im.load()
                return im.convert("RGB")
    except BadRequest:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise BadRequest(f"{name}: not a readable image ({type(e).__name__})", name) from None


def decode_images(images: Sequence[bytes], cfg: ImageConfig,
                  limits: ImageLimits | None = None,
                  deadline: float | None = None) -> torch.Tensor:
    """Encoded image files → (n, 3, S, S) pixels; BadRequest naming `images[i]` when unreadable
    or over `limits`; DeadlineExceeded when `time.perf_counter()` passes `deadline` meanwhile."""
    limits = limits or ImageLimits()
    out, pixels = [], 0
    for i, raw in enumerate(images):
        if deadline is not None and time.perf_counter() > deadline:
            raise DeadlineExceeded("deadline passed while decoding images", "deadline_ms")
        im = decode_one(raw, f"images[{i}]", cfg.size, limits)
        pixels += im.width * im.height
        out.append(preprocess([im], cfg))  # (1, 3, S, S)
        del im
    if pixels >= TRIM_AFTER_PIXELS:
        trim_heap()
    return torch.cat(out)  # (n, 3, S, S)


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.malloc_trim  # noqa: B018 -- glibc only
    except (OSError, AttributeError):
        return None
    return lib


def trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); False where unavailable.
    Large decodes leave the arenas of the decoding thread holding hundreds of MB otherwise."""
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.malloc_trim(0))
