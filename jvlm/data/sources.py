"""Random-access image–text data sources: the folder/JSONL source and the registry of source kinds.

Every source (here and in :mod:`jvlm.data.tfds_source`) is a grain-compatible
random-access data source (``__len__``, ``__getitem__(idx)``, ``__repr__``,
picklable) and returns the same example format as the built-in procedural
dataset::

    {"image": np.ndarray uint8 [image_size, image_size, 3], "caption": str}

(``TfdsSource`` adds ``"label"``: ``np.int32`` when ``label_key`` is given.)

This module holds ``ImageTextFolderSource`` and the ``SOURCES`` /
``make_source`` registry. The TFDS reader, ``TfdsSource`` and
``TfdsNotPreparedError``, lives in :mod:`jvlm.data.tfds_source`; its docstring
says what works without TensorFlow. Both decode images, and substitute
unreadable records at read time, with the helpers of :mod:`jvlm.data.decoding`
(whose docstring gives the image preprocessing; ``load_image`` is re-exported
here), and follow the read-time part of the bad-input policy below.

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

Import ``TfdsSource`` and ``TfdsNotPreparedError`` from :mod:`jvlm.data.tfds_source`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from jvlm.data.decoding import (MAX_CONSECUTIVE_UNREADABLE, SubstitutingReader, check_image_size, decode_or_flag,
                                load_image, normalize_index)

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
_NUM_EXAMPLES_IN_WARNING = 5


# ---------------------------------------------------------------------------
# ImageTextFolderSource
# ---------------------------------------------------------------------------


class ImageTextFolderSource(SubstitutingReader):
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
        self.image_size = check_image_size(image_size)
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
        i = normalize_index(idx, n)
        return self._read_with_substitution(i, n, self._read, lambda j: f"image {self._records[j][0]}")

    def _read(self, j: int) -> dict[str, Any]:
        image_path, caption = self._records[j]
        return {"image": decode_or_flag(image_path, self.image_size), "caption": caption}

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


