"""Sequence data: LM tokenizers (SentencePiece and tokenizer.json), text sources, the weighted mixture, packing,
the shapes caption grammar and the n-gram baseline."""

import json
import math

import ml_collections
import numpy as np
import pytest

from jvlm.data import shapes
from jvlm.data.packing import pack_row, packed_row_fn, packing_metrics
from jvlm.data.pipeline import StepRowLoader, even_rows
from jvlm.data.shapes_grammar import parse
from jvlm.data.text_sources import JsonlText, Mixture, ShapesCaptions, holdout_split, make_stream
from jvlm.data.text_tokenizer import (NAMED_SPECIALS, HFTokenizer, load_text_tokenizer, shapes_lm_tokenizer,
                                      train_lm_sentencepiece)
from jvlm.eval.ngram import AddKNgram, fit_add_k

CAPTIONS = [ShapesCaptions("train")[i]["text"] for i in range(3000)]


def test_sentencepiece_lm_tokenizer_has_explicit_special_and_reserved_ids(tmp_path):
    tok = train_lm_sentencepiece(CAPTIONS[:500], tmp_path / "t.model", 200)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert [tok.token_id(t) for t in NAMED_SPECIALS] == list(range(4, 4 + len(NAMED_SPECIALS)))
    assert tok.token_id("<reserved_63>") == 67 and len(tok.special_ids()) == 64
    text = CAPTIONS[7]
    ids = tok.encode(text, bos=True, eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and all(i >= 68 for i in ids[1:-1])  # no special inside ordinary text
    assert tok.decode(ids) == text
    assert tok.decode(ids[:-1] + [5, 6]) == text  # reserved ids are dropped; decoding stops at EOS
    again = load_text_tokenizer(str(tmp_path / "t.model"))
    assert again.encode(text) == tok.encode(text)
    with pytest.raises(KeyError):
        tok.token_id("<not_a_token>")


def test_hugging_face_tokenizer_json_with_its_special_tokens_beside_it(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for c in CAPTIONS[:200] for w in c.replace(",", " ,").split()})
    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>", *words])}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>", "unk_token": "<unk>"}))
    tok = load_text_tokenizer(str(tmp_path))
    assert isinstance(tok, HFTokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    ids = tok.encode("a red circle", bos=True, eos=True)
    assert ids == [1, vocab["a"], vocab["red"], vocab["circle"], 2]
    assert tok.decode(ids + [vocab["blue"]]) == "a red circle"
    assert tok.encode("a zebra") == [vocab["a"], 0]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(str(tmp_path), bos="<bos_missing>")


def test_shapes_lm_tokenizer_is_trained_once_and_identical(tmp_path):
    a = shapes_lm_tokenizer(str(tmp_path / "a.model"), 384, num_captions=2000)
    b = shapes_lm_tokenizer(str(tmp_path / "b.model"), 384, num_captions=2000)
    assert open(a.path, "rb").read() == open(b.path, "rb").read()
    assert all(a.decode(a.encode(c, bos=True, eos=True)) == c for c in CAPTIONS[:300])


def test_jsonl_source_holdout_and_mixture_are_deterministic(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(200)) + "\n")
    src = JsonlText(str(path))
    assert len(src) == 200 and src[5]["text"] == "doc 5"
    train, held = holdout_split(src, 0.05, seed=3)
    assert len(held) == 10 and len(train) == 190
    assert not {held[i]["text"] for i in range(10)} & {train[i]["text"] for i in range(190)}
    assert [held[i]["text"] for i in range(10)] == [holdout_split(src, 0.05, 3)[1][i]["text"] for i in range(10)]

    shp = ShapesCaptions("train")
    mix = Mixture([shp, src], [0.75, 0.25], seed=1)
    picks = np.array([mix.source_of(i) for i in range(4000)])
    assert abs(picks.mean() - 0.25) < 0.03
    # pure in (seed, i): reading position 3999 alone, or in reverse order, gives the same documents
    fresh = Mixture([shp, src], [0.75, 0.25], seed=1)
    assert [fresh(i) for i in (3999, 17, 0)] == [mix(3999), mix(17), mix(0)]
    assert [Mixture([shp, src], [0.75, 0.25], seed=2).source_of(i) for i in range(50)] != picks[:50].tolist()
    with pytest.raises(ValueError, match="weights"):
        Mixture([shp, src], [0, 0], seed=1)

    data = ml_collections.ConfigDict(dict(seed=0, mixture=({"source": "jsonl", "path": str(path), "weight": 1.0},
                                                            {"source": "shapes", "weight": 0.0})))
    stream = make_stream(data, "train")
    assert all(stream(i).startswith("doc ") for i in range(300))


def test_pack_row_layout_and_accounting():
    docs = [[1, 10, 11, 2], [1, 12, 2], [1, 13, 14, 15, 16, 17, 2], [1, 18, 2]]
    row = pack_row(docs, 8, pad_id=0)
    # doc 1 (3 slots) and doc 2 (2 slots) fit; doc 3 (6 slots) does not and is dropped; doc 4 (2 slots) fits
    assert row["tokens"].tolist() == [1, 10, 11, 1, 12, 1, 18, 0]
    assert row["targets"].tolist() == [10, 11, 2, 12, 2, 18, 2, 0]
    assert row["positions"].tolist() == [0, 1, 2, 0, 1, 0, 1, 0]
    assert row["segment_ids"].tolist() == [1, 1, 1, 2, 2, 3, 3, 0]
    assert row["loss_mask"].tolist() == [1, 1, 1, 1, 1, 1, 1, 0]
    long = pack_row([list(range(1, 13))], 8)  # 11 slots into 8: cut, 3 truncated
    assert long["segment_ids"].tolist() == [1] * 8 and long["targets"][-1] == 9
    m = packing_metrics({k: row[k] + long[k] for k in row if k.startswith("_pack")})
    assert m["data/packing_efficiency"] == 15 / 16
    assert math.isclose(m["data/dropped_fraction"], 6 / 24) and math.isclose(m["data/truncated_fraction"], 3 / 24)


def test_packed_rows_are_pure_in_the_step_and_two_processes_read_the_global_batch():
    tok = shapes_lm_tokenizer("/tmp/jvlm_test_lm_tok.model", 384, num_captions=2000)
    data = ml_collections.ConfigDict(dict(seed=0, source="shapes"))
    row_fn = packed_row_fn(make_stream(data), lambda t: tok.encode(t, bos=True, eos=True), seq_len=64,
                           docs_per_row=4, pad_id=tok.pad_id)
    keys = ("tokens", "targets", "positions", "segment_ids", "loss_mask")

    def batches(start, rows=None):
        loader = StepRowLoader(row_fn, global_batch=4, seed=0, start_step=start, num_steps=4, rows=rows)
        return [{k: b[k] for k in keys} for b in loader]

    full = batches(0)
    assert len(full) == 4
    for a, b in zip(full[2:], batches(2), strict=True):  # resuming at step 2 reads the same rows
        for k in keys:
            np.testing.assert_array_equal(a[k], b[k])
    halves = [batches(0, even_rows(p, 2, 4)) for p in range(2)]
    for s in range(4):
        for k in keys:
            np.testing.assert_array_equal(np.concatenate([halves[0][s][k], halves[1][s][k]]), full[s][k])
    # every row holds whole documents of the stream: decode segment by segment
    row = {k: full[1][k][3] for k in keys}
    pos = 1 * 4 + 3
    texts = [tok.decode(np.append(row["tokens"][row["segment_ids"] == g], tok.eos_id))
             for g in range(1, row["segment_ids"].max() + 1)]
    window = [make_stream(data)(pos * 4 + j) for j in range(4)]
    assert texts and all(t in window for t in texts)


def test_caption_parser_accepts_every_generated_caption_and_rejects_corruptions():
    source = shapes.ShapesSource("train", seed=0, num_examples=2000)
    for i in range(2000):
        objects, _, caption = source._scene(i)
        p = parse(caption)
        assert p is not None and p.consistent, (caption, p)
        assert p.objects == [tuple(shapes.describe(o).split()) for o in objects], caption  # each object, in order
    ok = "a small red circle to the left of a large blue star"
    assert parse(ok).consistent and parse(ok).relations == [(0, "left", 1)]
    assert parse("a small red circle to the left of a small red circle").consistent is False  # named twice
    assert parse("a small red circle red circle") is None  # outside the grammar
    assert parse("circle the red a") is None and parse("") is None


def test_add_k_ngram_is_a_distribution_and_k_is_tuned_on_other_text():
    rng = np.random.default_rng(0)
    docs = [[1, *rng.integers(4, 12, rng.integers(2, 9)).tolist(), 2] for _ in range(300)]
    model = AddKNgram(3, 12, k=0.5).fit(docs[:200])
    for context in [(1, 1), (1, 5), (7, 9)]:
        probs = [(model.counts.get(context + (w,), 0) + 0.5) / (model.context_counts.get(context, 0) + 6)
                 for w in range(12)]
        assert math.isclose(sum(probs), 1.0)
    total, n = model.nll(docs[200:])
    assert n == sum(len(d) - 1 for d in docs[200:]) and total / n < math.log(12)  # better than uniform
    tuned = fit_add_k(docs[:200], docs[200:250], 3, 12)
    assert tuned.k in (1.0, 0.1, 0.01, 0.001, 0.0001)
    best = tuned.nll(docs[200:250])[0]
    for k in (1.0, 0.0001):
        assert AddKNgram(3, 12, k).fit(docs[:200]).nll(docs[200:250])[0] >= best - 1e-9
