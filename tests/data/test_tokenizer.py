"""Tests for the SentencePiece tokenizer: ids, fixed-length encoding, truncation, determinism."""

import os
import pickle

import numpy as np
import pytest

from jvlm.data.shapes import ShapesSource, class_names
from jvlm.data.tokenizer import Tokenizer, shapes_tokenizer, train_sentencepiece

CAPTIONS = [ShapesSource("train").caption(i) for i in range(2000)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return shapes_tokenizer(str(tmp_path_factory.mktemp("tok") / "shapes.model"), num_captions=3000)


def test_special_ids(tok):
    assert tok.pad_id == 0 and tok.eos_id == 1
    sp = tok._sp
    assert sp.id_to_piece(0) == "<pad>" and sp.id_to_piece(1) == "</s>" and sp.unk_id() == 2
    assert sp.bos_id() == -1
    assert 60 <= tok.vocab_size <= 512


def test_round_trip(tok):
    for cap in CAPTIONS[:300]:
        ids, truncated = tok.encode(cap, 64)
        assert ids.dtype == np.int32 and ids.shape == (64,) and not truncated
        n = int(np.argmax(ids == tok.eos_id))
        assert n > 0 and (ids[:n] > 2).all() and (ids[n + 1:] == 0).all()
        assert tok.decode(ids) == cap
    # the zero-shot class names are made of training words, so they encode without <unk>
    for name in class_names():
        ids, _ = tok.encode(f"a large {name}", 16)
        assert 2 not in ids and tok.decode(ids) == f"a large {name}"
    # whole words: short sequences, so 64 positions fit every caption
    lengths = [int((tok.encode(c, 64)[0] != 0).sum()) for c in CAPTIONS]
    assert max(lengths) < 60 and np.mean(lengths) < 25


def test_truncation(tok):
    cap = max(CAPTIONS, key=len)
    full, truncated = tok.encode(cap, 128)
    n = int((full != 0).sum())  # text tokens + EOS
    assert not truncated
    exact, truncated = tok.encode(cap, n)
    assert not truncated and (exact == full[:n]).all()
    for max_len in (n - 1, 5, 1):
        ids, truncated = tok.encode(cap, max_len)
        assert truncated and ids.shape == (max_len,) and ids[-1] == tok.eos_id
        assert (ids[:-1] == full[: max_len - 1]).all() and tok.eos_id not in ids[:-1]
        assert cap.startswith(tok.decode(ids))
    with pytest.raises(ValueError, match="max_len must be >= 1"):
        tok.encode(cap, 0)


def test_encode_batch(tok):
    texts = [CAPTIONS[0], max(CAPTIONS, key=len), "", "a red circle"]
    ids, truncated = tok.encode_batch(texts, 12)
    assert ids.shape == (4, 12) and ids.dtype == np.int32 and truncated.dtype == bool
    for row, flag, text in zip(ids, truncated, texts):
        one, one_flag = tok.encode(text, 12)
        assert (row == one).all() and flag == one_flag
    assert truncated[1] and not truncated[3]
    assert list(ids[2]) == [1] + [0] * 11  # empty text: just EOS
    assert tok.decode_batch(ids)[3] == "a red circle"
    empty_ids, empty_flags = tok.encode_batch([], 7)
    assert empty_ids.shape == (0, 7) and empty_flags.shape == (0,)


def test_decode_stops_at_eos_and_ignores_padding(tok):
    ids, _ = tok.encode("a small red circle", 16)
    n = int(np.argmax(ids == 1))
    tail = np.concatenate([ids[:n], [0, 0], ids[n:], ids[:n]])  # padding inside, text after EOS
    assert tok.decode(tail) == "a small red circle"
    assert tok.decode(list(ids)) == "a small red circle"


def test_training_is_deterministic(tmp_path):
    for kind in ("unigram", "bpe"):
        a = train_sentencepiece(iter(CAPTIONS), str(tmp_path / f"a_{kind}.model"), model_type=kind)
        b = train_sentencepiece(list(CAPTIONS), str(tmp_path / f"b_{kind}.model"), model_type=kind)
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()
    c = train_sentencepiece(CAPTIONS[:1000], str(tmp_path / "c.model"), model_type="bpe")
    with open(c, "rb") as fc, open(tmp_path / "a_bpe.model", "rb") as fa:
        assert fc.read() != fa.read()  # the comparison can tell different trainings apart
    assert Tokenizer(a).encode("a small red circle", 8)[0][0] > 2


def test_pickle_round_trip(tmp_path):
    path = shapes_tokenizer(str(tmp_path / "p.model"), num_captions=500).model_path
    tok = Tokenizer(path)
    os.remove(path)  # the pickle carries the model itself, not just its path
    clone = pickle.loads(pickle.dumps(tok))
    for cap in CAPTIONS[:20]:
        a, b = tok.encode(cap, 48), clone.encode(cap, 48)
        assert (a[0] == b[0]).all() and a[1] == b[1]
    assert clone.vocab_size == tok.vocab_size and clone.decode(tok.encode(CAPTIONS[0], 48)[0]) == CAPTIONS[0]


def test_shapes_tokenizer_loads_existing_model(tmp_path):
    path = str(tmp_path / "s.model")
    first = shapes_tokenizer(path, vocab_size=200, num_captions=500)
    with open(path, "rb") as f:
        before = f.read()
    again = shapes_tokenizer(path, vocab_size=300, num_captions=800)  # exists: loaded, not retrained
    with open(path, "rb") as f:
        assert f.read() == before
    assert again.vocab_size == first.vocab_size <= 200


def test_the_cache_serves_the_model_training_would_make_and_keys_on_the_arguments(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh.model"
    monkeypatch.delenv("JVLM_CACHE_DIR", raising=False)
    shapes_tokenizer(str(fresh), vocab_size=200, num_captions=400)
    monkeypatch.setenv("JVLM_CACHE_DIR", str(tmp_path / "cache"))
    shapes_tokenizer(str(tmp_path / "a.model"), vocab_size=200, num_captions=400)  # trains and fills the cache
    (cached,) = os.listdir(tmp_path / "cache" / "tokenizers")
    import jvlm.data.shapes as shapes_module
    monkeypatch.setattr(shapes_module.ShapesSource, "caption", lambda *_: pytest.fail("trained, not copied"))
    shapes_tokenizer(str(tmp_path / "b.model"), vocab_size=200, num_captions=400)
    assert (tmp_path / "b.model").read_bytes() == (tmp_path / "a.model").read_bytes() == fresh.read_bytes()
    monkeypatch.undo()
    monkeypatch.setenv("JVLM_CACHE_DIR", str(tmp_path / "cache"))
    other = shapes_tokenizer(str(tmp_path / "c.model"), vocab_size=100, num_captions=400)  # another key: trained
    assert len(os.listdir(tmp_path / "cache" / "tokenizers")) == 2 and other.vocab_size <= 100


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        Tokenizer(str(junk))
    with pytest.raises(ValueError, match=r"must end in '\.model'"):
        train_sentencepiece(CAPTIONS[:10], str(tmp_path / "x.spm"))
    with pytest.raises(ValueError, match="at least one non-empty text"):
        train_sentencepiece([], str(tmp_path / "y.model"))
