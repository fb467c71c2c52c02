"""Image decoding and read-time substitution of unreadable records: what every random-access source
(jvlm.data.sources, jvlm.data.tfds_source) shares.

Image preprocessing (all sources)
---------------------------------
Images are decoded with PIL, EXIF orientation is applied, and the image is
converted to RGB: grayscale, bilevel, CMYK, palette, and so on, go through
PIL's ``convert("RGB")``. Images with transparency (RGBA, LA, or palette with a
transparent colour) are alpha-composited onto a **white** background. 16-bit
grayscale images are scaled to 8 bits. The shorter side is then resized to
``image_size`` with bicubic (antialiased) resampling, and the centre
``image_size x image_size`` square is kept. Both steps are done as one PIL
``resize`` with a crop box. Large JPEGs are first decoded at a reduced
resolution (PIL ``draft``), never below ``image_size`` on either side.

Read-time substitution
----------------------
A source's ``__getitem__`` reads through ``SubstitutingReader._read_with_substitution``: when the record's
reader raises ``UnreadableRecord`` (``decode_or_flag`` turns any decoding failure into one), the next
readable record is returned instead, and the bad record is remembered, logged once (by the source's own
module logger), and never tried again; ``MAX_CONSECUTIVE_UNREADABLE`` bad records in a row raise
``RuntimeError``. See the bad-input policy in :mod:`jvlm.data.sources`.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "MAX_CONSECUTIVE_UNREADABLE",
    "SubstitutingReader",
    "UnreadableRecord",
    "check_image_size",
    "decode_or_flag",
    "load_image",
    "normalize_index",
]

# Give up (RuntimeError) after this many unreadable records in a row.
MAX_CONSECUTIVE_UNREADABLE = 100


def check_image_size(image_size: Any) -> int:
    """The output side length as an int; TypeError / ValueError for anything but a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise TypeError(f"image_size must be an int, got {image_size!r}")
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return int(image_size)


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    """Converts an already-decoded pixel array to an RGB/RGBA/L PIL image."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"expected an image array [H, W(, 1|3|4)], got shape {arr.shape}")
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255)
    else:
        raise ValueError(f"unsupported image array dtype {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8, copy=False)))


def _to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to RGB (transparent areas become white)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            scaled = np.clip(np.nan_to_num(arr), 0.0, 255.0)
        elif img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            scaled = arr.astype(np.float64) * (255.0 / 65535.0)
        else:
            scaled = arr
        img = Image.fromarray(np.round(np.clip(scaled, 0, 255)).astype(np.uint8), "L")
        return img.convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


def _resize_center_crop(img: Image.Image, size: int) -> np.ndarray:
    """Resizes the shorter side to `size` and centre-crops to a square."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError(f"empty image ({w}x{h})")
    side = min(w, h)
    left = (w - side) / 2.0
    top = (h - side) / 2.0
    if (w, h) != (size, size):
        img = img.resize(
            (size, size),
            resample=Image.Resampling.BICUBIC,
            box=(left, top, left + side, top + side),
        )
    out = np.array(img, dtype=np.uint8)  # writable copy (asarray is read-only)
    if out.shape != (size, size, 3):  # should never happen; guard the contract
        raise ValueError(f"internal error: preprocessed image has shape {out.shape}")
    return out


def load_image(src: str | os.PathLike | bytes | np.ndarray, image_size: int) -> np.ndarray:
    """Decodes `src` (path, encoded bytes or pixel array) to uint8 [S, S, 3].

    Raises whatever PIL raises for unreadable data (callers that must not crash
    catch ``Exception``).
    """
    if isinstance(src, np.ndarray):
        img = _array_to_pil(src)
        return _resize_center_crop(_to_rgb(img), image_size)
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp: Any = io.BytesIO(bytes(src))
    else:
        fp = os.fspath(src)
    with Image.open(fp) as img:
        if img.format == "JPEG":
            # Decode at reduced resolution when possible; both sides stay >= size.
            img.draft(None, (image_size, image_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        img = _to_rgb(img)
        return _resize_center_crop(img, image_size)


def normalize_index(idx: Any, n: int) -> int:
    """A Python-style index (negative counts from the end) into [0, n); IndexError outside."""
    try:
        i = idx.__index__()
    except AttributeError:
        raise TypeError(f"indices must be integers, got {type(idx).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {idx} out of range for source of length {n}")
    return i


class UnreadableRecord(Exception):
    """Raised by a source's record reader when the record cannot be decoded; SubstitutingReader catches it."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def decode_or_flag(src: Any, image_size: int) -> np.ndarray:
    """load_image, with any decoding failure raised as UnreadableRecord."""
    try:
        return load_image(src, image_size)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise UnreadableRecord(f"{type(e).__name__}: {e}") from e


class SubstitutingReader:
    """Mixin: read record `idx`, substituting later records for unreadable ones."""

    def _init_substitution_state(self) -> None:
        self.num_substituted = 0  # per-process: reads that returned a substitute
        self.unreadable: dict[str, str] = {}  # per-process: bad record -> error
        self._bad_indices: set[int] = set()

    def _read_with_substitution(
        self, idx: int, n: int, read: Callable[[int], dict], describe: Callable[[int], str]
    ) -> dict:
        attempts = min(n, MAX_CONSECUTIVE_UNREADABLE)
        for offset in range(attempts):
            j = (idx + offset) % n
            if j in self._bad_indices:
                continue
            try:
                example = read(j)
            except UnreadableRecord as e:
                self._bad_indices.add(j)
                what = describe(j)
                if what not in self.unreadable:
                    self.unreadable[what] = e.message
                    logging.getLogger(type(self).__module__).warning(  # the source's own module names it
                        "%r: unreadable %s (%s); substituting the next readable record.", self, what, e.message
                    )
                continue
            if offset:
                self.num_substituted += 1
            return example
        first = describe(idx)
        raise RuntimeError(
            f"{self!r}: {attempts} consecutive records starting at index {idx} are unreadable "
            f"(first: {first}: {self.unreadable.get(first, '?')}). "
            "The data looks broken as a whole, not just a stray corrupt file."
        )
