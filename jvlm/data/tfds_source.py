"""``TfdsSource``: random access over a prepared tensorflow-datasets dataset.

A grain-compatible random-access data source (``__len__``, ``__getitem__(idx)``,
``__repr__``, picklable) with the same example format as the other sources in
:mod:`jvlm.data.sources`::

    {"image": np.ndarray uint8 [image_size, image_size, 3], "caption": str}

plus ``"label"`` (``np.int32``) when ``label_key`` is given. Images are
preprocessed, and unreadable records substituted, with the shared helpers of
:mod:`jvlm.data.decoding` (its docstring gives the image preprocessing); the
bad-input policy is in :mod:`jvlm.data.sources`. ``make_source("tfds", ...)``
there builds this source and imports this module only then. ``tensorflow_datasets`` itself is imported only
when a ``TfdsSource`` opens its dataset.

What works without TensorFlow (tensorflow-datasets 4.9.x)
---------------------------------------------------------
Reading goes through ``tfds.builder(name, data_dir=...)`` and
``builder.as_data_source(split)``. This is what ``tfds.data_source(...,
download=False)`` does: ``tfds.data_source`` is the public function; there is
no ``tfds.data_sources``. It gives random access over ArrayRecord (or Parquet)
files with no tf.data and **no TensorFlow**:

* Examples are stored as ``tf.train.Example`` protos. TFDS parses them with its
  own protobuf copy (``ExampleParserNp``), which does not need TensorFlow.
* An ``Image`` feature is stored as encoded PNG/JPEG bytes. By default TFDS
  would decode it with OpenCV, or with PIL if OpenCV is missing, into a
  ``uint8`` array, with no mode conversion. For uint8 ``Image`` features this
  source instead passes ``tfds.decode.SkipDecoding()``, gets the **encoded
  bytes**, and decodes them itself with PIL as described in
  :mod:`jvlm.data.decoding` ("Image preprocessing"). This handles palette and
  transparent PNGs, converts to RGB, and allows the corrupt-image
  substitution. Other image-like features (``Tensor`` uint8
  pixels, non-uint8 ``Image``) are decoded by TFDS into numpy arrays. Those
  arrays are accepted as well: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4];
  uint8, uint16, bool, or float in [0, 1].
* ``Text`` features come back as ``bytes`` and are decoded as UTF-8.
  ``ClassLabel`` features come back as ``int``. A caption feature that holds a
  sequence of strings (for example ``"captions/text"`` in ``coco_captions``)
  gives its *first* caption. Nested keys are written with ``/``.
* Every other ``Image`` feature of the example, at any ``FeaturesDict``
  nesting level, is skipped as well (never decoded). This saves time, and a
  corrupt image the caller does not use cannot break a record. A record whose
  image cannot be decoded, or that TFDS fails to read or parse, is replaced as
  described in the bad-input policy of :mod:`jvlm.data.sources`
  (``num_substituted``, ``unreadable["record <idx>"]``). Records are not
  filtered at construction: an empty caption in the dataset is returned as
  ``""``.
* The source pickles only its settings. A worker process re-opens the dataset
  from ``data_dir`` on first use. A dataset built by a builder class that is not
  registered in the worker is opened read-only from its files.
* The dataset must already be **prepared** in ``data_dir`` in a random-access
  format (``array_record`` or ``parquet``); nothing is ever downloaded. A
  dataset that is not prepared, or is unknown, raises ``TfdsNotPreparedError``
  (a ``FileNotFoundError``). The message says to run ``tfds build NAME
  --data_dir=DIR --file_format=array_record``. A dataset prepared only as
  TFRecord raises ``TfdsNotPreparedError`` too, with the same advice.

What needs TensorFlow:

* *Preparing* (building) a dataset often needs TensorFlow. Any builder that
  passes images to ``tfds.features.Image`` as **numpy arrays** needs it,
  because TFDS encodes those with ``tf.image.encode_png/jpeg``. Many catalogue
  builders also use ``tf.io.gfile``; ``mnist`` does both. Whether
  ``tfds build NAME`` works without TensorFlow depends on the builder; this
  module does not check it. A builder that yields images as encoded bytes,
  file paths, file objects or ``PIL.Image`` objects, and does not call
  ``tf.*`` itself, can be prepared into ``array_record`` without TensorFlow.
  The tests do this. Preparing on a machine with TensorFlow and copying the
  ``data_dir`` over works as well.
* ``tfds.load`` / ``as_dataset`` (tf.data) and TFRecord files. This module uses
  neither.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from jvlm.data.decoding import SubstitutingReader, UnreadableRecord, check_image_size, decode_or_flag, normalize_index

__all__ = [
    "TfdsNotPreparedError",
    "TfdsSource",
]


class TfdsNotPreparedError(FileNotFoundError):
    """The TFDS dataset is unknown or not prepared (in a random-access format) in data_dir."""


def _get_path(tree: Any, key: str) -> Any:
    """`tree["a"]["b"]` for key "a/b" (works for dicts and tfds FeaturesDict)."""
    node = tree
    for part in key.split("/"):
        node = node[part]
    return node


def _has_path(features: Any, key: str) -> bool:
    node = features
    for part in key.split("/"):
        try:
            if part not in node:
                return False
            node = node[part]
        except TypeError:
            return False
    return True


def _iter_features(features: Any, features_dict_cls: type, prefix: str = ""):
    """Yields ("a/b", feature) for every feature reachable through FeaturesDicts.

    Does not descend into Sequence/Dataset features (their elements are decoded
    as a batch, where TFDS decoders other than the default need TensorFlow).
    """
    for key, feature in features.items():
        path = prefix + key
        yield path, feature
        if isinstance(feature, features_dict_cls):
            yield from _iter_features(feature, features_dict_cls, path + "/")


def _nest_all(keys: set[str], make: Callable[[], Any]) -> dict:
    """{"a/b", "c"} -> {"a": {"b": make()}, "c": make()}."""
    out: dict = {}
    for key in sorted(keys):
        *parents, leaf = key.split("/")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = make()
    return out


def _to_text(value: Any) -> str:
    """Text feature value (bytes/str/np scalar/sequence of those) -> str."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else (value.reshape(-1)[0] if value.size else "")
    elif isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        value = bytes(value).decode("utf-8", errors="replace")
    return str(value).strip()


class TfdsSource(SubstitutingReader):
    """Random access over a *prepared* tensorflow-datasets dataset (ArrayRecord).

    See the module docstring for what works without TensorFlow.

    Args:
      name: TFDS name, optionally with config/version (``"coco_captions/2017:1.1.0"``).
      split: split spec (``"train"``, ``"train[:90%]"``, ...).
      image_size: output side length.
      data_dir: TFDS data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      image_key: feature holding the image (``/`` for nested features); None reads text only (the language
        models' ``TfdsText``), and ``image_size`` is then ignored.
      caption_key: feature holding the caption text, or None to build the caption
        from ``label_key``'s class name.
      label_key: optional ``ClassLabel`` feature; adds ``"label"`` (int32).
      caption_template: used when ``caption_key`` is None; ``{}`` is replaced by
        the class name with underscores turned into spaces.
    """

    def __init__(
        self,
        name: str,
        split: str,
        image_size: int | None,
        data_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        caption_key: str | None = "caption",
        label_key: str | None = None,
        *,
        caption_template: str = "a photo of a {}",
    ):
        self.name = name
        self.split = split
        self.image_size = check_image_size(image_size) if image_key is not None else None
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.image_key = image_key
        self.caption_key = caption_key
        self.label_key = label_key
        self.caption_template = caption_template
        if caption_key is None and label_key is None:
            raise ValueError("TfdsSource: give caption_key, or label_key to build captions from class names.")
        self._lock = threading.Lock()
        self._ds = None
        self._label_names: list[str] | None = None
        self._open()  # validate eagerly, in the constructing process
        self._init_substitution_state()

    # -- opening -------------------------------------------------------------

    def _open(self):
        import tensorflow_datasets as tfds  # lazy: optional for folder users

        data_dir_desc = self.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
        build_cmd = (
            f"tfds build {self.name} --file_format=array_record"
            + (f" --data_dir={self.data_dir}" if self.data_dir else "")
        )
        try:
            builder = tfds.builder(self.name, data_dir=self.data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise TfdsNotPreparedError(
                f"TfdsSource: TFDS dataset {self.name!r} was not found in data_dir {data_dir_desc!r} "
                f"and is not a registered TFDS dataset ({first_line}). Prepare it beforehand, "
                f"e.g. `{build_cmd}`, or fix the name/data_dir. Nothing is downloaded at run time."
            ) from None
        if not builder.is_prepared():
            raise TfdsNotPreparedError(
                f"TfdsSource: TFDS dataset {self.name!r} is not prepared at {builder.data_dir!r}. "
                f"We never download at run time: prepare it beforehand with `{build_cmd}` "
                "(building usually needs TensorFlow, reading does not)."
            )
        random_access = tfds.core.file_adapters.FileFormat.with_random_access()
        available = builder.info.available_file_formats()
        if not available & random_access:
            have = ", ".join(sorted(f.value for f in available)) or "unknown"
            want = " or ".join(sorted(f.value for f in random_access))
            raise TfdsNotPreparedError(
                f"TfdsSource: TFDS dataset {self.name!r} at {builder.data_dir!r} is prepared as {have}, "
                f"which has no random access; TfdsSource needs {want}. Re-prepare it with `{build_cmd}`."
            )
        features = builder.info.features
        for what, key in (("image_key", self.image_key), ("caption_key", self.caption_key), ("label_key", self.label_key)):
            if key is not None and not _has_path(features, key):
                raise ValueError(
                    f"TfdsSource: {what}={key!r} is not a feature of {self.name!r}; "
                    f"top-level features: {sorted(features.keys())}"
                )
        # Image features come back as encoded bytes (SkipDecoding): the one we use
        # is decoded with PIL below (see module docstring); the others are never
        # decoded at all, which saves time and keeps an unused corrupt image from
        # breaking the record.
        skip = {
            key
            for key, feature in _iter_features(features, tfds.features.FeaturesDict)
            if isinstance(feature, tfds.features.Image)
            and (key != self.image_key or np.dtype(feature.np_dtype) == np.uint8)
        }
        decoders = _nest_all(skip, tfds.decode.SkipDecoding)
        if self.label_key is not None and self.caption_key is None:
            label_feature = _get_path(features, self.label_key)
            names = getattr(label_feature, "names", None)
            if not isinstance(label_feature, tfds.features.ClassLabel) or not names:
                raise ValueError(
                    f"TfdsSource: captions are built from label_key={self.label_key!r}, which must be a "
                    f"ClassLabel feature with names; got {type(label_feature).__name__}."
                )
            self._label_names = list(names)
        try:
            ds = builder.as_data_source(split=self.split, decoders=decoders or None)
        except NotImplementedError as e:  # e.g. only TFRecord files despite the check above
            raise TfdsNotPreparedError(f"TfdsSource: {e}\nRe-prepare it with `{build_cmd}`.") from e
        self._ds = ds
        self._len = len(ds)
        return ds

    def _source(self):
        ds = self._ds
        if ds is None:
            with self._lock:
                if self._ds is None:
                    self._open()
                ds = self._ds
        return ds

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ds"] = None  # re-opened lazily in the worker process
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- data source protocol ------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = self._len
        i = normalize_index(idx, n)
        return self._read_with_substitution(i, n, self._read, lambda j: f"record {j}")

    def _read(self, j: int) -> dict[str, Any]:
        ds = self._source()
        try:
            ex = ds[j]
        except Exception as e:  # TFDS failed to read/parse/decode this record
            raise UnreadableRecord(f"{type(e).__name__}: {e}") from e
        out: dict[str, Any] = {}
        if self.image_key is not None:
            out["image"] = decode_or_flag(_get_path(ex, self.image_key), self.image_size)
        label = None
        if self.label_key is not None:
            label = int(np.asarray(_get_path(ex, self.label_key)).reshape(()))
        if self.caption_key is not None:
            out["caption"] = _to_text(_get_path(ex, self.caption_key))
        else:
            name = self._label_names[label] if 0 <= label < len(self._label_names) else str(label)
            out["caption"] = self.caption_template.format(name.replace("_", " "))
        if label is not None:
            out["label"] = np.int32(label)
        return out

    def __repr__(self) -> str:
        return (
            f"TfdsSource(name={self.name!r}, split={self.split!r}, image_size={self.image_size}, "
            f"data_dir={self.data_dir!r}, image_key={self.image_key!r}, caption_key={self.caption_key!r}, "
            f"label_key={self.label_key!r}, num_records={self._len})"
        )
