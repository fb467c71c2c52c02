"""Random-access image–text data sources: shared image loading and the folder/JSONL source.

Every source (here and in :mod:`jvlm.data.tfds_source`) is a grain-compatible
random-access data source (``__len__``, ``__getitem__(idx)``, ``__repr__``,
picklable) and returns the same example format as the built-in procedural
dataset::

    {"image": np.ndarray uint8 [image_size, image_size, 3], "caption": str}

(``TfdsSource`` adds ``"label"``: ``np.int32`` when ``label_key`` is given.)

This module holds the shared image loading (``load_image``) and read-time
substitution (``_SubstitutingReader``) helpers, ``ImageTextFolderSource``, and
the ``SOURCES`` / ``make_source`` registry. The TFDS reader, ``TfdsSource`` and
``TfdsNotPreparedError``, lives in :mod:`jvlm.data.tfds_source`; its docstring
says what works without TensorFlow. Both follow the image preprocessing and
the read-time part of the bad-input policy below.

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

``ImageTextFolderSource``: input formats
-----------------------------------------
``path`` is either

* a ``.jsonl`` file, one JSON object per line,
  ``{"image": "<path>", "caption": "<text>"}``. A relative image path is
  resolved against the folder that holds the JSONL file; an absolute one is
  used as is. Other keys are ignored. Blank lines are ignored. Or
* a folder, searched recursively in sorted order, with image files
  (``.png .jpg .jpeg .webp .bmp``, any case). Each image has a sibling ``.txt``
  caption file with the same stem (``cat.jpg`` -> ``cat.txt``, UTF-8). Hidden
  files and folders (name starting with ``.``) are ignored.

Captions are returned with leading and trailing whitespace stripped. Long
captions are returned as is; the tokenizer truncates them later.

Bad-input policy
----------------
* **At construction, records are dropped and counted, never fatal.** A record
  is dropped if it has

  - ``malformed_line``: a JSONL line that is not valid UTF-8 or JSON, is not a
    JSON object, or has no string ``"image"`` value, or a ``"caption"`` value
    that is not a string or null;
  - ``missing_caption``: no ``"caption"`` key, or ``"caption": null``
    (JSONL), or no sibling ``.txt`` file (folder);
  - ``empty_caption``: a caption that is empty or whitespace-only;
  - ``missing_image``: a JSONL image path that is not an existing file;
  - ``unreadable_caption``: a ``.txt`` caption file that cannot be read or
    is not valid UTF-8 (folder).

  The counts are in ``source.skipped`` (a ``dict[str, int]`` with all the
  reasons above as keys). One summary warning is logged with ``logging``. It
  names the first few offending records.
* **A missing path** raises ``FileNotFoundError``.
* **No usable record** after dropping raises ``ValueError`` at construction. The
  message names the path and the drop counts.
* **Unreadable or corrupt images at read time are substituted.** Files are not
  decoded at construction. If the image of record ``idx`` cannot be decoded in
  ``__getitem__``, the next readable record is returned instead (``idx+1``,
  ``idx+2``, ..., wrapping around), as an image *and* caption pair. So the
  result depends only on the index and the set of bad files, and a corrupt
  file never crashes a data worker. Each process counts these events in
  ``source.num_substituted``. It remembers bad files in ``source.unreadable``
  (``{"image <path>": error}``), logs one warning per bad file, and does not try that
  file again. If ``MAX_CONSECUTIVE_UNREADABLE`` records in a row (or all
  records, if fewer) are unreadable, ``__getitem__`` raises a ``RuntimeError``:
  then the data is broken in general, not just one bad file.

Factory
-------
``make_source(kind, **kwargs)`` looks ``kind`` up in the ``SOURCES`` registry
(``{"folder": ImageTextFolderSource, "tfds": _make_tfds_source}``) and calls it
with ``kwargs``. ``_make_tfds_source`` imports :mod:`jvlm.data.tfds_source` on
first use and builds a ``TfdsSource``, so importing this module does not import
the TFDS reader (or ``tensorflow_datasets``). Add new kinds to that dict.

``TfdsSource`` and ``TfdsNotPreparedError`` can still be imported from here
(``from jvlm.data.sources import TfdsSource``); they are loaded lazily from
:mod:`jvlm.data.tfds_source`. New code should import them from there.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageOps

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_CONSECUTIVE_UNREADABLE",
    "SKIP_REASONS",
    "SOURCES",
    "ImageTextFolderSource",
    "load_image",
    "make_source",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SKIP_REASONS = (
    "malformed_line",
    "missing_caption",
    "empty_caption",
    "missing_image",
    "unreadable_caption",
)
# Give up (RuntimeError) after this many unreadable records in a row.
MAX_CONSECUTIVE_UNREADABLE = 100
_NUM_EXAMPLES_IN_WARNING = 5


# ---------------------------------------------------------------------------
# Image decoding / preprocessing
# ---------------------------------------------------------------------------


def _check_image_size(image_size: Any) -> int:
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


def _normalize_index(idx: Any, n: int) -> int:
    try:
        i = idx.__index__()
    except AttributeError:
        raise TypeError(f"indices must be integers, got {type(idx).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {idx} out of range for source of length {n}")
    return i


class _UnreadableRecord(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _decode_or_flag(src: Any, image_size: int) -> np.ndarray:
    try:
        return load_image(src, image_size)
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise _UnreadableRecord(f"{type(e).__name__}: {e}") from e


class _SubstitutingReader:
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
            except _UnreadableRecord as e:
                self._bad_indices.add(j)
                what = describe(j)
                if what not in self.unreadable:
                    self.unreadable[what] = e.message
                    logger.warning(
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


# ---------------------------------------------------------------------------
# ImageTextFolderSource
# ---------------------------------------------------------------------------


class ImageTextFolderSource(_SubstitutingReader):
    """Image–caption pairs from a ``.jsonl`` file or a folder of images + ``.txt``.

    See the module docstring for the input formats and the bad-input policy.

    Attributes:
      path: the path given (as a string).
      image_size: output side length.
      skipped: ``dict[str, int]`` of records dropped at construction, by reason.
      num_substituted: per-process count of reads that returned a substitute
        record because the requested image was unreadable.
      unreadable: per-process ``{"image <path>": error}`` of unreadable images seen.
    """

    def __init__(self, path: str | os.PathLike, image_size: int):
        self.image_size = _check_image_size(image_size)
        self.path = os.fspath(path)
        full = os.path.abspath(os.path.expanduser(self.path))
        if not os.path.exists(full):
            raise FileNotFoundError(
                f"ImageTextFolderSource: path {self.path!r} does not exist "
                "(expected a .jsonl file or a folder of images with sibling .txt captions)."
            )
        self.skipped: dict[str, int] = {r: 0 for r in SKIP_REASONS}
        examples: list[str] = []  # first few dropped records, for the warning
        if os.path.isdir(full):
            records, num_candidates = self._scan_folder(full, examples)
            kind = "folder"
        elif full.lower().endswith(".jsonl"):
            records, num_candidates = self._scan_jsonl(full, examples)
            kind = "JSONL file"
        else:
            raise ValueError(
                f"ImageTextFolderSource: {self.path!r} is a file but not a .jsonl file; "
                "pass a .jsonl file or a folder of images with sibling .txt captions."
            )
        self._records: list[tuple[str, str]] = records
        num_skipped = sum(self.skipped.values())
        if num_skipped:
            counts = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v)
            logger.warning(
                "ImageTextFolderSource(%r): dropped %d of %d records (%s); kept %d. Examples: %s",
                self.path,
                num_skipped,
                num_candidates,
                counts,
                len(records),
                "; ".join(examples),
            )
        if not records:
            if num_candidates == 0:
                what = (
                    f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found"
                    if kind == "folder"
                    else "the file has no records"
                )
            else:
                counts = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v)
                what = f"all {num_candidates} records were dropped ({counts}); e.g. {'; '.join(examples)}"
            raise ValueError(f"ImageTextFolderSource: no usable image-caption records in {kind} {self.path!r}: {what}.")
        self._init_substitution_state()

    # -- construction helpers ------------------------------------------------

    def _drop(self, reason: str, where: str, examples: list[str]) -> None:
        self.skipped[reason] += 1
        if len(examples) < _NUM_EXAMPLES_IN_WARNING:
            examples.append(f"{where}: {reason}")

    def _scan_jsonl(self, full: str, examples: list[str]) -> tuple[list[tuple[str, str]], int]:
        base = os.path.dirname(full)
        records: list[tuple[str, str]] = []
        num_candidates = 0
        with open(full, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                num_candidates += 1
                where = f"line {lineno}"
                try:
                    obj = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                except (UnicodeDecodeError, ValueError):
                    self._drop("malformed_line", where, examples)
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or not obj["image"]:
                    self._drop("malformed_line", where, examples)
                    continue
                caption = obj.get("caption")
                if caption is None:
                    self._drop("missing_caption", where, examples)
                    continue
                if not isinstance(caption, str):
                    self._drop("malformed_line", where, examples)
                    continue
                caption = caption.strip()
                if not caption:
                    self._drop("empty_caption", where, examples)
                    continue
                image_path = os.path.join(base, os.path.expanduser(obj["image"]))
                if not os.path.isfile(image_path):
                    self._drop("missing_image", f"{where} ({obj['image']})", examples)
                    continue
                records.append((image_path, caption))
        return records, num_candidates

    def _scan_folder(self, full: str, examples: list[str]) -> tuple[list[tuple[str, str]], int]:
        images: list[str] = []
        for dirpath, dirnames, filenames in os.walk(full):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    images.append(os.path.join(dirpath, name))
        images.sort(key=lambda p: os.path.relpath(p, full))
        records: list[tuple[str, str]] = []
        for image_path in images:
            where = os.path.relpath(image_path, full)
            txt = os.path.splitext(image_path)[0] + ".txt"
            if not os.path.isfile(txt):
                self._drop("missing_caption", where, examples)
                continue
            try:
                with open(txt, encoding="utf-8-sig") as f:
                    caption = f.read().strip()
            except (OSError, UnicodeDecodeError):
                self._drop("unreadable_caption", where, examples)
                continue
            if not caption:
                self._drop("empty_caption", where, examples)
                continue
            records.append((image_path, caption))
        return records, len(images)

    # -- data source protocol ------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self._records)
        i = _normalize_index(idx, n)
        return self._read_with_substitution(i, n, self._read, lambda j: f"image {self._records[j][0]}")

    def _read(self, j: int) -> dict[str, Any]:
        image_path, caption = self._records[j]
        return {"image": _decode_or_flag(image_path, self.image_size), "caption": caption}

    def __repr__(self) -> str:
        return f"ImageTextFolderSource(path={self.path!r}, image_size={self.image_size}, num_records={len(self)})"


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------


def _make_tfds_source(*args: Any, **kwargs: Any):
    """Builds a `jvlm.data.tfds_source.TfdsSource` (the module is imported on first use)."""
    from jvlm.data.tfds_source import TfdsSource

    return TfdsSource(*args, **kwargs)


SOURCES: dict[str, Callable[..., Any]] = {
    "folder": ImageTextFolderSource,
    "tfds": _make_tfds_source,
}


def make_source(kind: str, **kwargs: Any):
    """Builds the source registered under `kind` in `SOURCES` with `kwargs`."""
    try:
        factory = SOURCES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown data source kind {kind!r}; valid kinds: {', '.join(sorted(SOURCES))}.") from None
    return factory(**kwargs)


