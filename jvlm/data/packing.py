"""Packing documents into fixed-length rows without losing exact resume.

Row r of step s (global row position p = s * batch + r) is packed from its own window of the document stream,
documents [p * W, (p + 1) * W) with W = `docs_per_row`: a pure function of (seed, s, r). No packer state carries
over from one row to the next (MaxText's stateful first-fit iterator would), so the data state of a run is still
just its next step, a resumed run reads exactly the rows an uninterrupted one would, and any number of processes
read disjoint rows of the same global batch.

Each document is tokenized as [BOS, ..., EOS] and occupies len - 1 next-token slots (inputs t[:-1], targets t[1:]).
The window's documents go in order; one longer than the row is cut to the row (its tail counted as truncated); one
that no longer fits the space left is skipped (counted as dropped) and the next is tried (first fit). The loader
reports, per row, the slots filled and the tokens dropped and truncated: the loop logs the packing efficiency and
those fractions (`LMTask.host_metrics`).

A row is the LM example contract: tokens, targets, loss_mask, positions (restarting at 0 per document, RoPE's
input) and segment_ids (1, 2, ... per document, 0 for padding), which the mask builder turns into attention.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

PACK_STATS = ("_pack_filled", "_pack_capacity", "_pack_tokens", "_pack_dropped", "_pack_truncated")


def pack_row(docs: Sequence[Sequence[int]], seq_len: int, pad_id: int = 0) -> dict[str, np.ndarray]:
    """One row of `seq_len` slots from tokenized documents (each with its BOS and EOS); also its PACK_STATS."""
    tokens = np.full(seq_len, pad_id, np.int32)
    targets = np.full(seq_len, pad_id, np.int32)
    positions = np.zeros(seq_len, np.int32)
    segments = np.zeros(seq_len, np.int32)
    used = dropped = truncated = total = documents = 0
    for doc in docs:
        n = len(doc) - 1
        if n <= 0:
            continue
        total += n
        if n > seq_len:
            truncated += n - seq_len
            doc, n = doc[:seq_len + 1], seq_len
        if used + n > seq_len:
            dropped += n
            continue
        doc = np.asarray(doc, np.int32)
        tokens[used:used + n], targets[used:used + n] = doc[:-1], doc[1:]
        positions[used:used + n] = np.arange(n)
        documents += 1
        segments[used:used + n] = documents
        used += n
    return {"tokens": tokens, "targets": targets, "loss_mask": (segments > 0).astype(np.float32),
            "positions": positions, "segment_ids": segments,
            "_pack_filled": np.int64(used), "_pack_capacity": np.int64(seq_len), "_pack_tokens": np.int64(total),
            "_pack_dropped": np.int64(dropped), "_pack_truncated": np.int64(truncated)}


def packed_row_fn(stream: Callable[[int], str], encode: Callable[[str], list[int]], *, seq_len: int,
                  docs_per_row: int, pad_id: int) -> Callable[[int], dict]:
    """row position p -> the packed row of documents stream(p * W) .. stream(p * W + W - 1)."""
    def row(p: int) -> dict:
        docs = [encode(stream(p * docs_per_row + j)) for j in range(docs_per_row)]
        return pack_row(docs, seq_len, pad_id)
    return row


def packing_metrics(window: dict) -> dict[str, float]:
    """Logged figures from PACK_STATS summed over the rows since the last log."""
    capacity = max(float(window.get("_pack_capacity", 0)), 1.0)
    tokens = max(float(window.get("_pack_tokens", 0)), 1.0)
    return {"data/packing_efficiency": float(window.get("_pack_filled", 0)) / capacity,
            "data/dropped_fraction": float(window.get("_pack_dropped", 0)) / tokens,
            "data/truncated_fraction": float(window.get("_pack_truncated", 0)) / tokens}
