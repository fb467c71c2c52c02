"""Inference with a trained language-model run: log-probabilities and generation.

    from jvlm.eval.language_model import LanguageModel
    lm = LanguageModel.load("runs/lm_shapes")
    logits = lm.logits([lm.encode("a small red")])               # [1, T, vocab] float32
    texts = lm.generate(["a small red", "two"], max_new_tokens=40, temperature=1.0, top_p=0.9, seed=0)

The run's own tokenizer is used; prompts start with its BOS and generation stops at its EOS. Generation is one
compiled program per (batch size, prompt bucket, sampling settings): see jvlm.models.generation.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jvlm.data.text_tokenizer import TextTokenizer, load_text_tokenizer
from jvlm.models.decoder_lm import DecoderLM
from jvlm.models.generation import Sampling, make_generate, pad_prompts
from jvlm.tasks.lm import lm_spec
from jvlm.train.run_loader import load_run


class LanguageModel:
    def __init__(self, config: ml_collections.ConfigDict, params, tokenizer: TextTokenizer, step: int):
        self.config, self.params, self.tokenizer, self.step = config, params, tokenizer, step
        self.model = DecoderLM(lm_spec(config.model, config.data.vocab_size))
        self._generators: dict = {}

        def logits(params, tokens, lengths):
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
            segments = (positions < lengths[:, None]).astype(jnp.int32)
            hidden, _ = self.model.apply({"params": params}, tokens, positions, segments)
            return self.model.apply({"params": params}, hidden, method=DecoderLM.logits)
        self._logits = jax.jit(logits)

    @classmethod
    def load(cls, workdir: str, *, ema: bool = True) -> "LanguageModel":
        """The newest checkpoint of an lm run (its EMA parameters when the run kept them)."""
        run = load_run(workdir, ("lm",), "give the workdir of an lm run (configs/lm_shapes.py)", ema=ema)
        if run.tokenizer_path is None:
            raise FileNotFoundError(f"the run {workdir} has no tokenizer (no data.tokenizer, no tokenizer.model)")
        return cls(run.config, run.params["main"], load_text_tokenizer(run.tokenizer_path), run.step)

    def encode(self, text: str, *, bos: bool = True, eos: bool = False) -> list[int]:
        return self.tokenizer.encode(text, bos=bos, eos=eos)

    def logits(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [B, T, vocab]: the next-token logits after each position of each sequence (right-padded to the
        longest; positions past a sequence's end are meaningless)."""
        seqs = [list(s) for s in token_ids]
        if not seqs or any(not s for s in seqs):
            raise ValueError("logits() needs at least one non-empty sequence of token ids")
        if max(max(s) for s in seqs) >= self.config.data.vocab_size or min(min(s) for s in seqs) < 0:
            raise ValueError(f"token ids must be in [0, {self.config.data.vocab_size})")
        tokens, lengths = pad_prompts(seqs, self.tokenizer.pad_id)  # bucketed: few programs
        out = np.asarray(self._logits(self.params, tokens, lengths))
        return out[:, :max(len(s) for s in seqs)]

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_ids: Sequence[int] | None = None
                 ) -> list[str]:
        """Continuations of each prompt (without the prompt), up to the first stop token (default: EOS)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        stops = tuple(stop_ids) if stop_ids is not None else (self.tokenizer.eos_id,)
        s = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                     stop_ids=stops, pad_id=self.tokenizer.pad_id)
        ids = self.generate_ids([self.encode(p) for p in prompts], s, seed)
        return [self.tokenizer.decode([t for t in row if t not in stops]) for row in ids]

    def generate_ids(self, prompts: Sequence[Sequence[int]], sampling: Sampling, seed: int = 0) -> list[list[int]]:
        """Generated token ids per prompt, the stop token included when one was reached."""
        if sampling not in self._generators:
            self._generators[sampling] = make_generate(self.model, sampling)
        tokens, lengths = pad_prompts([list(p) for p in prompts], self.tokenizer.pad_id)
        out, count = self._generators[sampling](self.params, tokens, lengths, jax.random.key(seed))
        out, count = np.asarray(out), np.asarray(count)
        return [out[i, :count[i]].tolist() for i in range(len(out))]
