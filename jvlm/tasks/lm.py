"""Decoder-only language models on the spine: packed text, the chunked token-weighted cross-entropy, and an
evaluation that a language prior cannot game.

At each evaluation (on the held-out documents):
- `eval/nll`: nats per token, beside `eval/ngram_nll`, an add-k n-gram fitted to training text and scored on the
  same tokens (jvlm.eval.ngram);
- for the shapes captions, samples at `eval.temperature` (1: the model's own distribution, no top-k/top-p):
  `eval/parse_rate` (the caption grammar accepts them), `eval/consistent_rate` (and they are consistent:
  jvlm.data.shapes_grammar), and `eval/color_shape_tv`, the total-variation distance between the colour x shape
  distribution of the objects they name and that of the training captions, beside `eval/color_shape_tv_floor`:
  the same distance for as many real held-out captions (what sampling noise alone gives). The samples go to
  WORKDIR/samples/samples_<step>.txt.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jvlm import sharding
from jvlm.config import ConfigError, check_choice
from jvlm.data import shapes
from jvlm.data.packing import PACK_STATS, pack_row, packed_row_fn, packing_metrics
from jvlm.data.pipeline import StepRowLoader
from jvlm.data.shapes_grammar import parse
from jvlm.data.text_sources import TEXT_SOURCES, make_stream, source_entries
from jvlm.data.text_tokenizer import load_text_tokenizer, shapes_lm_tokenizer, train_lm_sentencepiece
from jvlm.eval.ngram import fit_add_k
from jvlm.models.decoder_lm import DecoderLM, LMSpec
from jvlm.models.generation import Sampling, make_generate
from jvlm.models.transformer import TransformerSpec
from jvlm.objectives.lm import chunked_cross_entropy
from jvlm.tasks.base import Task
from jvlm.train import optim
from jvlm.train.flops import lm_flops_per_token
from jvlm.train.step import LossOutput, ParamGroup

_TRANSFORMER_KEYS = ("width", "depth", "num_heads", "num_kv_heads", "head_dim", "mlp_dim", "mlp", "mlp_bias", "norm",
                     "norm_eps", "norm_plus_one", "qkv_bias", "qk_norm", "rope_base", "attn_softcap", "query_scale",
                     "sliding_window", "global_every", "post_norms", "attention", "remat", "scan_unroll")


def lm_spec(model, vocab_size: int) -> LMSpec:
    """The model section of an LM config -> LMSpec."""
    scaling = tuple(sorted(dict(model.get("rope_scaling", {}) or {}).items()))
    t = TransformerSpec(**{k: model[k] for k in _TRANSFORMER_KEYS if k in model}, rope_scaling=scaling,
                        dtype=jnp.dtype(model.get("dtype", "float32")))
    return LMSpec(t, vocab_size=vocab_size, tie_embeddings=model.tie_embeddings, embed_scale=model.embed_scale,
                  final_softcap=model.final_softcap)


def pack_sequential(docs: list[list[int]], seq_len: int, pad_id: int) -> list[dict]:
    """Rows holding every document once, in order (evaluation: nothing dropped; a document longer than a row is
    cut to it)."""
    rows, current, used = [], [], 0
    for doc in docs:
        n = min(len(doc) - 1, seq_len)
        if current and used + n > seq_len:
            rows.append(pack_row(current, seq_len, pad_id))
            current, used = [], 0
        current.append(doc)
        used += n
    if current:
        rows.append(pack_row(current, seq_len, pad_id))
    return rows


def object_distribution(captions) -> tuple[np.ndarray, int]:
    """(colour x shape frequencies [48] of the objects the parsable captions name, number of objects)."""
    counts = np.zeros(len(shapes.COLORS) * len(shapes.SHAPES))
    for caption in captions:
        p = parse(caption)
        for _, colour, shape in (p.objects if p else []):
            counts[shapes.class_index(colour, shape)] += 1
    return counts / max(counts.sum(), 1), int(counts.sum())


class LMTask(Task):
    data_sources = TEXT_SOURCES

    # ------------------------------------------------------------------ config
    @property
    def spec(self) -> LMSpec:
        return lm_spec(self.config.model, self.config.data.vocab_size)

    @property
    def model(self) -> DecoderLM:
        return DecoderLM(self.spec)

    @property
    def tokens_per_example(self) -> int:
        return self.config.data.seq_len

    def validate(self) -> None:
        c, d, m = self.config, self.config.data, self.config.model
        try:
            self.spec.transformer.check()
        except ValueError as e:
            raise ConfigError(f"config.model: {e}.") from None
        if d.seq_len < 2:
            raise ConfigError(f"config.data.seq_len={d.seq_len}: a row needs at least 2 tokens.")
        if d.docs_per_row < 1:
            raise ConfigError(f"config.data.docs_per_row={d.docs_per_row} must be >= 1 (documents packed per row).")
        for i, e in enumerate(source_entries(d)):
            where = f"config.data.mixture[{i}]" if d.get("mixture") else "config.data"
            source = e.get("source", "shapes")
            if source not in TEXT_SOURCES:
                raise ConfigError(f"{where}.source={source!r}: the lm task reads {', '.join(TEXT_SOURCES)}.")
            if source == "jsonl" and not e.get("path"):
                raise ConfigError(f"{where}.source='jsonl' needs a path: a .jsonl file of {{\"text\": ...}} lines.")
            if source == "tfds" and not e.get("tfds_name"):
                raise ConfigError(f"{where}.source='tfds' needs tfds_name (a prepared tensorflow-datasets dataset).")
            if d.get("mixture") and not (isinstance(e.get("weight"), (int, float)) and e["weight"] >= 0):
                raise ConfigError(f"{where} needs a weight >= 0.")
        check_choice("model.dtype", m.get("dtype", "float32"), ("float32", "bfloat16", "float16"))
        dp = sharding.data_parallel_size(self.mesh.shape) if self.mesh is not None else 1
        if c.eval.batch_size % dp or c.eval.num_samples % dp:
            raise ConfigError(f"config.eval.batch_size={c.eval.batch_size} and eval.num_samples={c.eval.num_samples} "
                              f"must be multiples of the data-parallel size {dp}.")

    def setup(self) -> None:
        d = self.config.data

        def train(path):  # on the training text, once
            if self._shapes_only:
                shapes_lm_tokenizer(path, d.vocab_size, seed=d.seed)
            else:
                stream = make_stream(d, "train")
                train_lm_sentencepiece((stream(i) for i in range(20_000)), path, d.vocab_size)
        self.tokenizer = self.setup_tokenizer(load_text_tokenizer, train)

    @property
    def _shapes_only(self) -> bool:
        return all(e.get("source", "shapes") == "shapes" for e in source_entries(self.config.data))

    # ------------------------------------------------------------------ training
    def init(self, rng):
        z = jnp.zeros((1, 8), jnp.int32)
        params = self.model.init(rng, z, z, jnp.ones((1, 8), jnp.int32))["params"]
        return {"main": params}, {}

    def param_groups(self, params) -> list[ParamGroup]:
        tx, schedule, frozen = optim.make_optimizer(self.config.optimizer, params["main"], self.config.total_steps)
        return [ParamGroup("main", self.loss_fn, tx, schedule, frozen)]

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        m = self.config.model
        model, p = self.model, {"params": params["main"]}
        hidden, _ = model.apply(p, batch["tokens"], batch["positions"], batch["segment_ids"])
        head = model.apply(p, method=DecoderLM.head_matrix)
        ce = chunked_cross_entropy(hidden, head, batch["targets"], batch["loss_mask"], chunk=m.loss_chunk,
                                   softcap=self.spec.final_softcap)
        tokens = jnp.maximum(ce.weight, 1.0)
        nll = ce.loss_sum / tokens
        metrics = {"nll": nll, "accuracy": ce.correct / tokens}
        loss = nll
        if m.z_loss:
            metrics["z_loss"] = ce.z_loss_sum / tokens
            loss = loss + m.z_loss * metrics["z_loss"]
        return LossOutput(loss, metrics, weight=ce.weight)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=True, eos=True)

    def train_loader(self, start_step, rows):
        c, d = self.config, self.config.data
        row_fn = packed_row_fn(make_stream(d, "train"), self.encode, seq_len=d.seq_len, docs_per_row=d.docs_per_row,
                               pad_id=self.tokenizer.pad_id)
        return StepRowLoader(row_fn, global_batch=c.batch_size, seed=c.seed, start_step=start_step,
                             num_steps=c.total_steps, rows=rows, num_threads=d.num_threads, prefetch=d.prefetch)

    def abstract_batch(self, batch_size):
        shape = (batch_size, self.config.data.seq_len)
        out = {k: jax.ShapeDtypeStruct(shape, jnp.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
        out["loss_mask"] = jax.ShapeDtypeStruct(shape, jnp.float32)
        return out

    def host_metrics(self, total, window) -> dict[str, float]:
        return packing_metrics({k: window.get(k, 0) for k in PACK_STATS})

    def flops_per_token(self, params) -> float:
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
        s = self.spec
        return lm_flops_per_token(s.transformer, s.vocab_size, n, self.config.data.seq_len, s.tie_embeddings)

    # ------------------------------------------------------------------ evaluation
    def _eval_data(self):
        """(held-out documents, n-gram baseline, reference colour x shape distribution, its noise floor): built
        once."""
        if getattr(self, "_eval_cache", None) is None:
            e = self.config.eval
            held = make_stream(self.config.data, "validation")
            docs = [self.encode(held(i)) for i in range(e.num_docs)]
            train = make_stream(self.config.data, "train")
            # n-gram counts from the start of the training stream, its k tuned on text after them
            fit_texts = [train(i) for i in range(e.ngram_docs)]
            tune = [self.encode(train(e.ngram_docs + i)) for i in range(2000)]
            ngram = fit_add_k([self.encode(t) for t in fit_texts], tune, e.ngram_order, self.tokenizer.vocab_size)
            reference = floor = None
            if self._shapes_only:
                reference = object_distribution(fit_texts)[0]
                # the noise floor: as many real captions as samples, from training text the reference did not use
                real = object_distribution(train(e.ngram_docs + 2000 + i) for i in range(e.num_samples))[0]
                floor = 0.5 * float(np.abs(real - reference).sum())
            self._eval_cache = (docs, ngram, reference, floor)
        return self._eval_cache

    def _nll_fn(self):
        if not hasattr(self, "_nll"):
            model = self.model

            def nll(params, batch):
                hidden, _ = model.apply({"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"])
                head = model.apply({"params": params}, method=DecoderLM.head_matrix)
                ce = chunked_cross_entropy(hidden, head, batch["targets"], batch["loss_mask"],
                                           chunk=self.config.model.loss_chunk, softcap=self.spec.final_softcap)
                return ce.loss_sum, ce.weight, ce.correct
            self._nll = jax.jit(nll)
        return self._nll

    def heldout_nll(self, params, mesh, docs) -> tuple[float, float]:
        """(nats per token, next-token accuracy) of the model on `docs` (tokenized with BOS and EOS)."""
        d, bs = self.config.data, self.config.eval.batch_size
        rows = pack_sequential(docs, d.seq_len, self.tokenizer.pad_id)
        rows += [pack_row([], d.seq_len, self.tokenizer.pad_id)] * ((-len(rows)) % bs)  # empty rows: weight 0
        total = np.zeros(3)
        keys = ("tokens", "targets", "positions", "segment_ids", "loss_mask")
        for i in range(0, len(rows), bs):
            batch = {k: np.stack([r[k] for r in rows[i:i + bs]]) for k in keys}
            out = self._nll_fn()(params, sharding.global_batch_from_full(batch, mesh))
            total += np.asarray([float(x) for x in out])
        return total[0] / total[1], total[2] / total[1]

    def sample_texts(self, params, mesh, num: int, sampling: Sampling, seed: int) -> list[str]:
        """`num` documents sampled from BOS alone."""
        if getattr(self, "_sampler", None) is None or self._sampler[0] != sampling:
            self._sampler = (sampling, make_generate(self.model, sampling, mesh=mesh))
        prompts = np.full((num, 16), self.tokenizer.pad_id, np.int32)
        prompts[:, 0] = self.tokenizer.bos_id
        lengths = np.ones(num, np.int32)
        g = sharding.global_batch_from_full({"p": prompts, "n": lengths}, mesh)
        tokens, _ = self._sampler[1](params, g["p"], g["n"], jax.random.key(seed))
        return [self.tokenizer.decode(row) for row in sharding.to_host(tokens)]

    def evaluate(self, state, mesh) -> dict[str, Any]:
        c, e = self.config, self.config.eval
        params = (state.ema_params or state.params)["main"]
        docs, ngram, reference, floor = self._eval_data()
        nll, accuracy = self.heldout_nll(params, mesh, docs)
        ngram_total, ngram_n = ngram.nll(docs)
        out = {"eval/nll": nll, "eval/token_accuracy": accuracy, "eval/ngram_nll": ngram_total / ngram_n,
               "eval/perplexity": float(np.exp(nll))}
        sampling = Sampling(temperature=e.temperature, max_new_tokens=e.max_new_tokens,
                            stop_ids=(self.tokenizer.eos_id,), pad_id=self.tokenizer.pad_id)
        texts = self.sample_texts(params, mesh, e.num_samples, sampling, c.seed + 11)
        step = int(jax.device_get(state.step))
        if reference is not None:
            parsed = [parse(t) for t in texts]
            out["eval/parse_rate"] = float(np.mean([p is not None for p in parsed]))
            out["eval/consistent_rate"] = float(np.mean([p is not None and p.consistent for p in parsed]))
            sampled, named = object_distribution(texts)
            # no object named at all is as far from the data as a distribution can be
            out["eval/color_shape_tv"] = 0.5 * float(np.abs(sampled - reference).sum()) if named else 1.0
            out["eval/color_shape_tv_floor"] = floor
            unseen = set(shapes.unseen_class_indices())
            out["eval/unseen_combination_rate"] = float(sum(sampled[i] for i in unseen))
        elif not getattr(self, "_said_no_parse", False):
            print("lm evaluation: the caption-grammar scores (parse/consistent rates, colour x shape distance) need "
                  "the shapes captions; this source gets nll and samples only.", file=sys.stderr)
            self._said_no_parse = True
        if jax.process_index() == 0 and self.workdir:
            os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
            with open(os.path.join(self.workdir, "samples", f"samples_{step:07d}.txt"), "w") as f:
                f.write("\n".join(texts) + "\n")
            for text in texts[:e.show]:
                print(f"  sample: {text}", file=sys.stderr)
        return out
