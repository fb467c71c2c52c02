"""An add-k smoothed n-gram model over token ids: the baseline a language model's held-out NLL must beat.

Each document is [BOS, ..., EOS]; every token after BOS is predicted from the n - 1 before it (the context is
padded with BOS at the start), exactly the targets the LM is scored on. P(w | c) = (count(c, w) + k) /
(count(c) + k V) over the whole vocabulary V, so every token has non-zero probability, as under the LM.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import numpy as np


class AddKNgram:
    def __init__(self, order: int, vocab_size: int, k: float = 0.01):
        self.order, self.vocab_size, self.k = order, vocab_size, k
        self.counts: Counter = Counter()
        self.context_counts: Counter = Counter()

    def _events(self, doc: Sequence[int]):
        pad = [doc[0]] * (self.order - 2)  # BOS repeated as the context before the start
        seq = pad + list(doc)
        for i in range(self.order - 1, len(seq)):
            yield tuple(seq[i - self.order + 1:i]), seq[i]

    def fit(self, docs: Iterable[Sequence[int]]) -> "AddKNgram":
        for doc in docs:
            for context, token in self._events(doc):
                self.counts[context + (token,)] += 1
                self.context_counts[context] += 1
        return self

    def nll(self, docs: Iterable[Sequence[int]]) -> tuple[float, int]:
        """(sum of -log p over every predicted token, number of tokens)."""
        total, n = 0.0, 0
        kv = self.k * self.vocab_size
        for doc in docs:
            for context, token in self._events(doc):
                p = (self.counts.get(context + (token,), 0) + self.k) / (self.context_counts.get(context, 0) + kv)
                total -= np.log(p)
                n += 1
        return total, n


def fit_add_k(train_docs, tune_docs, order: int, vocab_size: int, ks=(1.0, 0.1, 0.01, 0.001, 0.0001)) -> AddKNgram:
    """The n-gram fitted on `train_docs` with the k of `ks` that scores best on `tune_docs` (other training text,
    never the evaluation text): the strongest add-k baseline the training data supports."""
    model = AddKNgram(order, vocab_size).fit(train_docs)
    best = None
    for k in ks:
        model.k = k
        total, n = model.nll(tune_docs)
        if best is None or total / n < best[0]:
            best = (total / n, k)
    model.k = best[1]
    return model
