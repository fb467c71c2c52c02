"""Hard-negative captions by word swaps (as in NegCLIP and SVLC).

A contrastive batch of random captions rarely holds two captions that differ only in one attribute,
so the towers can reach a low loss without ever attending to it (on shapes: colour, size and count
separate almost every pair, and shape stays unlearned). A hard negative is the image's own caption
with one word replaced by another word of the same group (a shape by another shape), which the image
tower can only reject by seeing that attribute. The dataset is unchanged; only the loss sees more
negatives.
"""

from __future__ import annotations

import re

import numpy as np

_WORD = re.compile(r"[a-z]+")


class WordSwapNegatives:
    """`k` negatives per caption, each with one group word swapped for another of its group.

    groups: word groups, e.g. (("circle", "square", ...), ("red", "green", ...)). Each negative first
    picks a group uniformly among those with a word in the caption, then one of that group's
    occurrences, then a different word of the group. A caption with no group word gets no negatives
    (`valid` False), so the loss skips those slots.
    """

    def __init__(self, groups, k: int):
        groups = [tuple(str(w).strip().lower() for w in g) for g in groups]
        if k < 0:
            raise ValueError(f"hard negatives per caption must be >= 0, got {k}")
        if k and not groups:
            raise ValueError("hard negatives need word groups to swap within (e.g. shape names)")
        for g in groups:
            if len(set(g)) < 2:
                raise ValueError(f"a swap group needs at least two distinct words, got {g}")
            if any(not _WORD.fullmatch(w) for w in g):
                raise ValueError(f"swap words must be single lower-case words, got {g}")
        self.group_of = {}
        for gi, g in enumerate(groups):
            for w in g:
                if w in self.group_of:
                    raise ValueError(f"the word {w!r} is in two swap groups")
                self.group_of[w] = gi
        self.groups, self.k = groups, k

    def __call__(self, caption: str, rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
        """(k captions, valid [k] bool); invalid slots repeat the caption and must be masked."""
        spans: dict[int, list[tuple[int, int, str]]] = {}
        for m in _WORD.finditer(caption):
            gi = self.group_of.get(m.group())
            if gi is not None:
                spans.setdefault(gi, []).append((m.start(), m.end(), m.group()))
        if not spans:
            return [caption] * self.k, np.zeros(self.k, bool)
        present = sorted(spans)
        out = []
        for _ in range(self.k):
            gi = present[int(rng.integers(len(present)))]
            start, end, word = spans[gi][int(rng.integers(len(spans[gi])))]
            others = [w for w in self.groups[gi] if w != word]
            out.append(caption[:start] + others[int(rng.integers(len(others)))] + caption[end:])
        return out, np.ones(self.k, bool)
