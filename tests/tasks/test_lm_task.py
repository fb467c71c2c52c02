"""The lm task: packed rows score each document as it scores alone, the sharded step equals one device's, and the
CLI end to end (outputs, SIGKILL + bitwise resume, the generate command and the LanguageModel API)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax.core import meta
from helpers import REPO, devices_env, run_cli, step_setup, train

from jvlm.config import load_config
from jvlm.data.packing import pack_row
from jvlm.data.text_sources import ShapesCaptions
from jvlm.data.text_tokenizer import shapes_lm_tokenizer
from jvlm.train import loop
from jvlm.train.metrics import read_metrics
from jvlm.train.run_loader import load_weights
from jvlm.train.step import StepContext

TINY = "configs/lm_shapes.py:tiny"
KEYS = ("tokens", "targets", "positions", "segment_ids", "loss_mask")


def train_args(workdir):
    return ["experiments.train", "--config", TINY, "--workdir", str(workdir)]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lm") / "run"
    return workdir, run_cli(train_args(workdir), env=devices_env(1))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return shapes_lm_tokenizer(str(tmp_path_factory.mktemp("tok") / "t.model"), 384)


def docs(tokenizer, n, start=0):
    src = ShapesCaptions("validation")
    return [tokenizer.encode(src[start + i]["text"], bos=True, eos=True) for i in range(n)]


def test_a_packed_row_scores_each_document_as_it_scores_alone(tokenizer):
    cfg = load_config(TINY)
    task, _ = loop.build(cfg, None, devices=jax.devices()[:1])
    params = meta.unbox(task.init(jax.random.key(0))[0])
    ds = sorted(docs(tokenizer, 40), key=len)[:3]  # short enough to share a row
    seq = cfg.data.seq_len
    loss = jax.jit(lambda b: task.loss_fn(params, b, None, StepContext(step=0, model_state={})))

    def batch(rows):
        return {k: np.stack([r[k] for r in rows]) for k in KEYS}
    packed = pack_row(ds, seq, tokenizer.pad_id)
    assert packed["segment_ids"].max() == 3, "the documents must all fit one row"
    for k, doc in enumerate(ds, start=1):
        alone = loss(batch([pack_row([doc], seq, tokenizer.pad_id)]))
        only_k = dict(packed, loss_mask=(packed["segment_ids"] == k).astype(np.float32))
        inside = loss(batch([only_k]))
        assert float(inside.weight) == float(alone.weight) == len(doc) - 1
        np.testing.assert_allclose(float(inside.loss), float(alone.loss), rtol=1e-5)
    # and the packed row's token-weighted loss is their token-weighted mean
    whole = loss(batch([packed]))
    means = [float(loss(batch([pack_row([d], seq, tokenizer.pad_id)])).loss) for d in ds]
    np.testing.assert_allclose(float(whole.loss), np.average(means, weights=[len(d) - 1 for d in ds]), rtol=1e-5)


def test_sharded_lm_step_equals_the_single_device_step(tokenizer):
    rows = docs(tokenizer, 64, start=100)
    batches = [{k: np.stack([pack_row(rows[4 * (8 * s + r):4 * (8 * s + r) + 4], 64, 0)[k] for r in range(8)])
                for k in KEYS} for s in range(2)]
    opt = ("optimizer.name=sgd", "optimizer.learning_rate=0.5", "batch_size=8")
    s1, l1 = train(*step_setup(TINY, 1, *opt), batches)
    s8, l8 = train(*step_setup(TINY, 8, *opt, "mesh.data=4", "mesh.model=2"), batches)
    np.testing.assert_allclose(l1, l8, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_outputs_of_an_lm_run(lm_run):
    workdir, proc = lm_run
    rows = read_metrics(workdir)
    train_rows = [r for r in rows if "loss" in r]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    for key in ("tokens_per_s", "mfu", "tokens", "data/packing_efficiency", "data/dropped_fraction",
                "data/truncated_fraction"):
        assert all(key in r for r in train_rows), key
    assert 0.5 < train_rows[-1]["data/packing_efficiency"] <= 1
    last = rows[-1]
    for key in ("eval/nll", "eval/ngram_nll", "eval/parse_rate", "eval/consistent_rate", "eval/color_shape_tv",
                "eval/color_shape_tv_floor", "eval/token_accuracy"):
        assert key in last, key
    assert 0 < last["eval/color_shape_tv_floor"] < last["eval/color_shape_tv"] <= 1  # 20 steps: far from the data
    samples = (workdir / "samples" / "samples_0000020.txt").read_text().splitlines()
    assert len(samples) == load_config(TINY).eval.num_samples
    assert "step 20/20 (100%)" in proc.stderr and "sample:" in proc.stderr


def test_sigkill_and_restart_of_a_packed_run_resumes_bitwise(lm_run, tmp_path):
    ref_dir, _ = lm_run
    proc = subprocess.Popen([sys.executable, "-m", *train_args(tmp_path)], cwd=REPO,
                            env=dict(os.environ) | devices_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    ckdir, deadline = tmp_path / "checkpoints", time.time() + 300
    while not (ckdir / "10").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert max(int(s) for s in os.listdir(ckdir) if s.isdigit()) < 20, "finished before the kill: proves nothing"
    resumed = run_cli(train_args(tmp_path), env=devices_env(1))
    assert "resumed from checkpoint at step" in resumed.stderr
    ref, got = load_weights(str(ref_dir)), load_weights(str(tmp_path))
    assert ref.step == got.step == 20
    for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)):
        assert np.array_equal(a, b)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d) if "loss" in r]  # noqa: E731
    assert losses(tmp_path) == losses(ref_dir)


def test_generate_command_and_language_model_api(lm_run, capsys):
    from jvlm.eval.language_model import LanguageModel
    from jvlm.models.generation import Sampling

    workdir, _ = lm_run
    lm = LanguageModel.load(str(workdir))
    assert lm.step == 20
    prompt = lm.encode("a small red")
    greedy = lm.generate_ids([prompt], Sampling(max_new_tokens=6, stop_ids=(lm.tokenizer.eos_id,)))[0]
    logits = lm.logits([prompt + greedy[:2]])
    assert logits.shape == (1, len(prompt) + 2, load_config(TINY).data.vocab_size)
    # the full forward pass's argmax at the prompt's end and one token later is what the cached decode chose
    assert [int(logits[0, len(prompt) - 1 + i].argmax()) for i in range(2)] == greedy[:2]
    texts = lm.generate(["a small red", "two"], max_new_tokens=6)
    assert texts[0] == lm.tokenizer.decode(greedy) and len(texts) == 2

    from experiments import generate  # in process: the command's own main, without a second interpreter start

    generate.main(["--workdir", str(workdir), "--prompt", "a small red", "--max_new_tokens", "6"])
    out = capsys.readouterr().out
    assert f"-> a small red {texts[0]}".rstrip() in out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["step"] == 20 and report["tokens_per_s"] > 0
    with pytest.raises(SystemExit, match="top_p"):
        generate.main(["--workdir", str(workdir), "--top_p", "0"])
