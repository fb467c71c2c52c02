"""SentencePiece tokenizer: deterministic training and fixed-length encoding.

Ids: pad=0 (so zero padding is padding), eos=1, unk=2; no BOS. `Tokenizer.encode` always returns
exactly `max_len` ids ending the text with EOS; a text that does not fit is truncated so that
its last kept position is EOS, and the returned flag says so (the policy is "truncate and
count, never crash"; pipelines sum the flags into a counter).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def train_sentencepiece(texts: Iterable[str], model_path: str, vocab_size: int = 512,
                        model_type: str = "unigram") -> str:
    """Trains a SentencePiece model on `texts` and writes it to `model_path` (a `.model` file).

    Deterministic: the same texts in the same order give a byte-identical model (one thread,
    every sentence used, no shuffling). `vocab_size` is an upper bound: a small corpus (such as
    the shapes captions) may support fewer pieces, check `Tokenizer.vocab_size`. Returns the path.
    """
    if not str(model_path).endswith(".model"):
        raise ValueError(f"model_path must end in '.model', got {model_path!r}")
    if model_type not in ("unigram", "bpe", "word", "char"):
        raise ValueError(f"model_type must be one of unigram, bpe, word, char; got {model_type!r}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=int(vocab_size),
        model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    model_path = os.fspath(model_path)
    write_atomically(model_path, buffer.getvalue())
    return model_path


def write_atomically(path: str, data: bytes) -> None:
    """Concurrent processes may write the same model at the same time: each renames a whole file into place."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".model.tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class Tokenizer:
    """A loaded SentencePiece model. Picklable (it carries the serialized model)."""

    def __init__(self, model_path: str):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"SentencePiece model file {model_path!r} does not exist; train "
                                    "one with train_sentencepiece() or shapes_tokenizer()")
        with open(model_path, "rb") as f:
            proto = f.read()
        self.model_path = model_path
        self._load(proto)

    def _load(self, proto: bytes) -> None:
        sp = load_sentencepiece(proto, self.model_path)
        if sp.pad_id() != PAD_ID or sp.eos_id() != EOS_ID:
            raise ValueError(f"{self.model_path!r} has pad_id={sp.pad_id()}, eos_id={sp.eos_id()}; "
                             f"expected pad_id={PAD_ID}, eos_id={EOS_ID} (train with train_sentencepiece)")
        self._proto, self._sp = proto, sp

    def __getstate__(self) -> dict:
        return {"model_path": self.model_path, "proto": self._proto}

    def __setstate__(self, state: dict) -> None:
        self.model_path = state["model_path"]
        self._load(state["proto"])

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @staticmethod
    def _fit(ids: list[int], max_len: int) -> tuple[np.ndarray, bool]:
        out = np.zeros(max_len, np.int32)
        truncated = len(ids) + 1 > max_len
        ids = ids[: max_len - 1] + [EOS_ID]
        out[: len(ids)] = ids
        return out, truncated

    @staticmethod
    def _check_max_len(max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1 (room for EOS), got {max_len}")

    def encode(self, text: str, max_len: int) -> tuple[np.ndarray, bool]:
        """int32 [max_len] ids (text, EOS, zero padding) and whether the text was truncated."""
        self._check_max_len(max_len)
        return self._fit(self._sp.encode(text, out_type=int), max_len)

    def encode_batch(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 [N, max_len] ids and bool [N] truncation flags."""
        self._check_max_len(max_len)
        texts = [str(t) for t in texts]
        ids = np.zeros((len(texts), max_len), np.int32)
        truncated = np.zeros(len(texts), bool)
        for i, seq in enumerate(self._sp.encode(texts, out_type=int, num_threads=1) if texts else []):
            ids[i], truncated[i] = self._fit(seq, max_len)
        return ids, truncated

    def decode(self, ids) -> str:
        """Text of `ids` up to the first EOS; padding ids are ignored."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return self._sp.decode([i for i in ids if i != PAD_ID])

    def decode_batch(self, ids) -> list[str]:
        return [self.decode(row) for row in np.asarray(ids)]


def shapes_tokenizer(model_path: str, vocab_size: int = 512, num_captions: int = 20000,
                     seed: int = 0, model_type: str = "bpe") -> Tokenizer:
    """Loads `model_path`, first training it on shapes train-split captions if it does not exist.

    BPE by default: on this tiny-vocabulary corpus (about 60 distinct words) SentencePiece's
    unigram trainer finds under 100 seed pieces and splits common words into characters
    (~37 tokens per caption on average, up to ~105), while BPE learns whole words (~17, at most
    ~45). Captions of the train split only, so the unseen zero-shot classes add no new words.

    Making the 20,000 captions takes seconds of Python (each lays out its scene); with
    JVLM_CACHE_DIR set, the trained model is kept there and copied for later runs (see
    `cache_path`), which the test suite's many short runs use.
    """
    def train(path):
        from jvlm.data.shapes import ShapesSource

        source = ShapesSource("train", seed=seed, num_examples=max(num_captions, 1))
        train_sentencepiece((source.caption(i) for i in range(num_captions)), path, vocab_size=vocab_size,
                            model_type=model_type)

    train_once(model_path, (vocab_size, num_captions, seed, model_type), train)
    return Tokenizer(model_path)


def load_sentencepiece(proto: bytes, path: str) -> spm.SentencePieceProcessor:
    """A processor from a serialized SentencePiece model; a ValueError naming `path` if it is not one."""
    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
        raise ValueError(f"{path!r} is not a valid SentencePiece model ({e})") from None
    return sp


def train_once(model_path: str, key, train, extra_sources=()) -> None:
    """Makes `model_path` with `train(path)` unless it exists; with JVLM_CACHE_DIR set, a model trained with the
    same `key` (and the same source files) is copied from the cache instead, and a new one is kept there."""
    if os.path.exists(model_path):
        return
    cached = cache_path(key, extra_sources)
    if cached and os.path.exists(cached):
        with open(cached, "rb") as f:
            write_atomically(model_path, f.read())
        return
    train(model_path)
    if cached:
        with open(model_path, "rb") as f:
            write_atomically(cached, f.read())


CACHE_DIR_ENV = "JVLM_CACHE_DIR"


def cache_path(args, extra_sources=()) -> str | None:
    """Where a shapes tokenizer trained with `args` is cached, or None without JVLM_CACHE_DIR. The key
    holds everything the model file depends on: the arguments, SentencePiece's version and the source of
    the caption generator and of its trainer (this file and `extra_sources`), so editing either never serves a
    stale model."""
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        return None
    from jvlm.data import shapes, shapes_render

    digest = hashlib.sha256(repr((args, spm.__version__)).encode())
    for source_file in (shapes.__file__, shapes_render.__file__, __file__, *extra_sources):
        with open(source_file, "rb") as f:
            digest.update(f.read())
    return os.path.join(root, "tokenizers", f"shapes-{digest.hexdigest()[:24]}.model")

