"""Text for language models: documents from the shapes captions, a JSONL file, or a prepared tfds dataset, and a
deterministic weighted mixture of several.

A source is random access (`len`, `source[i] -> {"text": str}`). A *stream* is the infinite sequence of documents
a run reads: stream(i) is a pure function of (seed, i), so a packed row's documents, and therefore a whole run's
data, depend on the seed and the step only (jvlm.data.packing).

- One source: epoch e of the stream is a seeded permutation of the source.
- A mixture: document i comes from source k with probability w_k, drawn from (seed, i) alone, and is that source's
  own stream at position i. No counter is carried from one document to the next, so any position can be read
  without reading the ones before it, and resuming at step s reads exactly what an uninterrupted run would.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jvlm.data import shapes
from jvlm.data.pipeline import epoch_stream

log = logging.getLogger(__name__)

TEXT_SOURCES = ("shapes", "jsonl", "tfds")


class ShapesCaptions:
    """The shapes dataset's captions as documents (no image is rendered)."""

    def __init__(self, split: str = "train", seed: int = 0, num_examples: int | None = None):
        self._src = shapes.ShapesSource(split, image_size=32, seed=seed, num_examples=num_examples)
        self.split = split

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self._src.caption(int(i))}

    def __repr__(self) -> str:
        return f"ShapesCaptions({self.split!r}, {len(self)} documents)"


class JsonlText:
    """A JSONL file of {"text": ...} lines (the key is configurable). Lines that are not JSON objects, lack the key
    or hold empty text are dropped at start-up and counted in one warning; no usable line is an error."""

    def __init__(self, path: str, key: str = "text"):
        self.path, self.key = os.fspath(path), key
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no JSONL text file at {self.path!r}")
        texts, dropped = [], 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    text = record.get(key) if isinstance(record, dict) else None
                except json.JSONDecodeError:
                    text = None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
                else:
                    dropped += 1
        if dropped:
            log.warning("%s: dropped %d of %d lines (not a JSON object with a non-empty %r); kept %d",
                        self.path, dropped, dropped + len(texts), key, len(texts))
        if not texts:
            raise ValueError(f"{self.path}: no line holds a non-empty {key!r} text")
        self._texts = texts

    def __len__(self) -> int:
        return len(self._texts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self._texts[int(i)]}

    def __repr__(self) -> str:
        return f"JsonlText({self.path!r}, {len(self)} documents)"


class TfdsText:
    """A text feature of a prepared tfds dataset, read with random access and without TensorFlow
    (jvlm.data.tfds_source)."""

    def __init__(self, name: str, split: str = "train", key: str = "text", data_dir: str | None = None):
        from jvlm.data.tfds_source import TfdsSource

        self._src = TfdsSource(name, split, None, data_dir=data_dir, image_key=None, caption_key=key)

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"text": self._src[int(i)]["caption"]}

    def __repr__(self) -> str:
        return f"TfdsText({self._src.name!r}, {self._src.split!r}, key={self._src.caption_key!r})"


class Subset:
    """The documents of `source` at `indices` (a held-out fraction, a training remainder)."""

    def __init__(self, source, indices: np.ndarray):
        self.source, self.indices = source, np.asarray(indices, np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[int(i)])]


def holdout_split(source, fraction: float, seed: int) -> tuple[Subset, Subset]:
    """(train, held_out): a seeded, deterministic `fraction` of the documents held out (at least one)."""
    n = len(source)
    perm = np.random.default_rng((seed, 0x401D)).permutation(n)
    k = min(n - 1, max(1, math.ceil(fraction * n)))
    return Subset(source, np.sort(perm[k:])), Subset(source, np.sort(perm[:k]))


def make_text_source(spec: Mapping[str, Any], split: str, seed: int):
    """A source from one config entry: {"source": "shapes" | "jsonl" | "tfds", ...}. `split` is "train" or
    "validation"; jsonl files hold out `holdout_fraction` of their lines, tfds reads `tfds_eval_split`."""
    kind = spec.get("source", "shapes")
    if kind == "shapes":
        return ShapesCaptions(split, seed=spec.get("seed", 0))
    if kind == "jsonl":
        train, held = holdout_split(JsonlText(spec["path"], spec.get("text_key", "text")),
                                    spec.get("holdout_fraction", 0.01), seed)
        return train if split == "train" else held
    if kind == "tfds":
        name_split = spec.get("tfds_split", "train") if split == "train" else spec.get("tfds_eval_split", "validation")
        return TfdsText(spec["tfds_name"], name_split, spec.get("text_key", "text"), spec.get("tfds_data_dir") or None)
    raise ValueError(f"unknown text source {kind!r}; use one of {TEXT_SOURCES}")


class Mixture:
    """An infinite document stream: document i from source k with probability weights[k], chosen by (seed, i)."""

    def __init__(self, sources: Sequence, weights: Sequence[float], seed: int):
        if len(sources) != len(weights) or not sources:
            raise ValueError("a mixture needs one weight per source, and at least one source")
        w = np.asarray(weights, np.float64)
        if np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 and not all 0, got {list(weights)}")
        self.cumulative = np.cumsum(w / w.sum())
        self.seed = seed
        self.streams = [epoch_stream(s, seed=seed + 1009 * k) for k, s in enumerate(sources)]
        self.sources = list(sources)

    def source_of(self, i: int) -> int:
        u = np.random.default_rng((self.seed, 0x313, int(i))).random()
        return int(min(np.searchsorted(self.cumulative, u, side="right"), len(self.streams) - 1))

    def __call__(self, i: int) -> str:
        return self.streams[self.source_of(i)][int(i)]["text"]


def source_entries(data) -> list[dict]:
    """The data section's sources as mixture entries: `data.mixture` if given, else its one source (weight 1)."""
    entries = [dict(e) for e in (data.get("mixture", ()) or ())]
    if not entries:
        entries = [{k: data.get(k) for k in ("source", "path", "text_key", "holdout_fraction", "tfds_name",
                                              "tfds_split", "tfds_eval_split", "tfds_data_dir") if k in data}]
        entries[0]["weight"] = 1.0
    return entries


def make_stream(data, split: str = "train") -> Callable[[int], str]:
    """The configured document stream: `data.mixture` (entries with a "weight") if given, else the one source the
    data section names."""
    entries = source_entries(data)
    sources = [make_text_source(e, split, data.seed) for e in entries]
    if len(sources) == 1:
        stream = epoch_stream(sources[0], seed=data.seed)
        return lambda i: stream[int(i)]["text"]
    return Mixture(sources, [e["weight"] for e in entries], data.seed)
