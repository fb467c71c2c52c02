"""Tokenizers for language models, with explicit special ids: BOS, EOS, PAD, UNK and 64 reserved tokens for
roles, image placeholders and begin/end-of-image markers.

Two backends, one interface (`TextTokenizer`):
- `SentencePieceTokenizer`: a SentencePiece `.model` (Gemma, Llama 2, PaliGemma, and the ones jvlm trains);
  its special ids are read from the model, never assumed.
- `HFTokenizer`: a Hugging Face `tokenizer.json` through the `tokenizers` library (Llama 3, Qwen2); the special
  tokens come from the `tokenizer_config.json` / `special_tokens_map.json` beside it, or are named by the caller.

`load_text_tokenizer(path)` picks the backend from the path. `train_lm_sentencepiece` trains the BPE models jvlm's
LM configs use: pad 0, bos 1, eos 2, unk 3, then the 64 reserved tokens (ids 4..67), so a later VLM or image-token
model finds its markers already in the vocabulary. (The contrastive towers keep their own tokenizer,
`jvlm.data.tokenizer`: pad 0 / eos 1, no BOS, fixed-length encoding.)
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from jvlm.data.tokenizer import load_sentencepiece, train_once, write_atomically

# The reserved tokens, in id order: named ones first, then fillers, 64 in all.
NAMED_SPECIALS = ("<image>", "<boi>", "<eoi>", "<system>", "<user>", "<assistant>", "<end_of_turn>", "<sep>")
NUM_RESERVED = 64
RESERVED_TOKENS = NAMED_SPECIALS + tuple(f"<reserved_{i}>" for i in range(len(NAMED_SPECIALS), NUM_RESERVED))


class TextTokenizer:
    """The interface every LM tokenizer offers. Ids are ints; `encode` adds no special tokens unless asked."""
    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    path: str

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self._encode(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def decode(self, ids, *, stop_at_eos: bool = True) -> str:
        """Text of `ids`, up to the first EOS; BOS, PAD and reserved tokens are dropped."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if stop_at_eos and self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        skip = {self.bos_id, self.pad_id, self.eos_id} | set(self.special_ids())
        return self._decode([i for i in ids if i not in skip])

    def token_id(self, token: str) -> int:
        """The id of a special or reserved token by its text, e.g. "<image>"; KeyError if the vocabulary lacks it."""
        i = self._piece_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not a token of {self.path}")
        return i

    def special_ids(self) -> list[int]:
        """The ids of the reserved tokens this vocabulary has."""
        return [i for i in (self._piece_id(t) for t in RESERVED_TOKENS) if i is not None]

    # backends implement these
    def _encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def _piece_id(self, token: str) -> int | None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id}, pad={self.pad_id}, unk={self.unk_id})")


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model. Picklable (it carries the serialized model), so grain workers can hold it."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            self._load(f.read())

    def _load(self, proto: bytes) -> None:
        sp = load_sentencepiece(proto, self.path)
        self._proto, self._sp = proto, sp
        self.vocab_size = sp.get_piece_size()
        self.bos_id, self.eos_id, self.unk_id = sp.bos_id(), sp.eos_id(), sp.unk_id()
        self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else self.eos_id  # Llama 2 has no PAD: pad with EOS
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"{self.path!r} defines no BOS or EOS token (bos_id={self.bos_id}, eos_id={self.eos_id}); "
                             f"a language model needs both")

    def __getstate__(self):
        return {"path": self.path, "proto": self._proto}

    def __setstate__(self, state):
        self.path = state["path"]
        self._load(state["proto"])

    def _encode(self, text):
        return self._sp.encode(text, out_type=int)

    def _decode(self, ids):
        return self._sp.decode(ids)

    def _piece_id(self, token):
        i = self._sp.piece_to_id(token)
        return None if i == self.unk_id and token != self._sp.id_to_piece(self.unk_id) else i


class HFTokenizer(TextTokenizer):
    """A Hugging Face fast tokenizer (`tokenizer.json`). Special tokens: `bos`, `eos`, `pad`, `unk` given as token
    strings, else read from tokenizer_config.json / special_tokens_map.json in the same folder."""

    def __init__(self, path: str, *, bos: str | None = None, eos: str | None = None, pad: str | None = None,
                 unk: str | None = None):
        from tokenizers import Tokenizer as _Tok

        path = os.fspath(path)
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"no tokenizer.json at {path!r}")
        self.path = file
        self._tok = _Tok.from_file(file)
        named = _special_tokens_beside(os.path.dirname(file))
        given = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
        tokens = {k: given[k] or named.get(k) for k in given}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

        def tid(kind):
            t = tokens[kind]
            i = None if t is None else self._tok.token_to_id(t)
            if t is not None and i is None:
                raise ValueError(f"{file}: the {kind} token {t!r} is not in the vocabulary")
            return i

        self.bos_id, self.eos_id = tid("bos"), tid("eos")
        if self.eos_id is None:
            raise ValueError(f"{file}: no EOS token: pass eos=... or put tokenizer_config.json beside it")
        if self.bos_id is None:  # Qwen2 has none: documents then start without one
            self.bos_id = self.eos_id
        self.pad_id = tid("pad") if tokens["pad"] is not None else self.eos_id
        self.unk_id = tid("unk") if tokens["unk"] is not None else self.pad_id

    def __getstate__(self):
        return {"path": self.path, "json": self._tok.to_str(), "ids": (self.vocab_size, self.bos_id, self.eos_id,
                                                                        self.pad_id, self.unk_id)}

    def __setstate__(self, state):
        from tokenizers import Tokenizer as _Tok

        self.path, self._tok = state["path"], _Tok.from_str(state["json"])
        self.vocab_size, self.bos_id, self.eos_id, self.pad_id, self.unk_id = state["ids"]

    def _encode(self, text):
        return self._tok.encode(text, add_special_tokens=False).ids

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=False)

    def _piece_id(self, token):
        return self._tok.token_to_id(token)


def _special_tokens_beside(directory: str) -> dict[str, str]:
    out = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            data = json.load(f)
        for kind in ("bos", "eos", "pad", "unk"):
            value = data.get(f"{kind}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if value and kind not in out:
                out[kind] = value
    return out


def load_text_tokenizer(path: str) -> TextTokenizer:
    """A `.model` file -> SentencePiece; a `tokenizer.json` (or a folder holding one) -> Hugging Face; a folder
    holding only `tokenizer.model` -> SentencePiece."""
    path = os.fspath(path)
    if path.endswith(".model"):
        return SentencePieceTokenizer(path)
    if path.endswith(".json") or os.path.isfile(os.path.join(path, "tokenizer.json")):
        return HFTokenizer(path)
    if os.path.isfile(os.path.join(path, "tokenizer.model")):
        return SentencePieceTokenizer(os.path.join(path, "tokenizer.model"))
    raise FileNotFoundError(f"no tokenizer at {path!r}: give a SentencePiece .model, a tokenizer.json, or a folder "
                            f"holding one")


def train_lm_sentencepiece(texts: Iterable[str], model_path: str, vocab_size: int) -> SentencePieceTokenizer:
    """A deterministic BPE model for an LM: pad 0, bos 1, eos 2, unk 3, the reserved tokens 4..67, then the
    learned pieces. `vocab_size` counts everything and is an upper bound on a small corpus."""
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_lm_sentencepiece needs at least one non-empty text")
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buffer, vocab_size=int(vocab_size), model_type="bpe",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, user_defined_symbols=list(RESERVED_TOKENS),
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=False,
        character_coverage=1.0, minloglevel=2)
    write_atomically(os.fspath(model_path), buffer.getvalue())
    return SentencePieceTokenizer(model_path)


def shapes_lm_tokenizer(model_path: str, vocab_size: int, num_captions: int = 20000, seed: int = 0
                        ) -> SentencePieceTokenizer:
    """Loads `model_path`, first training it (`train_lm_sentencepiece`) on shapes train-split captions if it does
    not exist; cached under JVLM_CACHE_DIR like jvlm.data.tokenizer.shapes_tokenizer."""
    def train(path):
        from jvlm.data.shapes import ShapesSource

        source = ShapesSource("train", seed=seed, num_examples=max(num_captions, 1))
        train_lm_sentencepiece((source.caption(i) for i in range(num_captions)), path, vocab_size)

    train_once(model_path, ("lm", vocab_size, num_captions, seed), train, (__file__,))
    return SentencePieceTokenizer(model_path)
