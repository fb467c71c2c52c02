"""grain pipelines whose global order is a function of (seed, step) only.

The batch of global step s holds the examples at global positions [s*B, (s+1)*B) of an
infinite stream: epoch e is a seeded permutation of the source (grain's per-epoch shuffle).
A process reads only the rows [start, stop) of each global batch that its devices hold
(`jvlm.sharding.process_rows`): positions [s*B + start, s*B + stop). So a run on 2 processes and
one on 1 process see the same global batches, and the iterator state is just the next step,
which restores across process counts. Per-example augmentation randomness is seeded by (seed, position).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import grain
import numpy as np

Transform = Callable[[dict, np.random.Generator], dict]


class StepRowLoader:
    """Process-local batches for steps start_step, start_step+1, ..., num_steps-1, where row r of the global batch of
    step s is `row_fn(s * global_batch + r)`: any pure function of that position (one example, or a packed row of
    several). This process reads only its rows [start, stop) of each global batch."""

    def __init__(self, row_fn: Callable[[int], dict], *, global_batch: int, seed: int, start_step: int,
                 num_steps: int, rows: tuple[int, int] | None = None, num_threads: int = 2, prefetch: int = 4):
        first, stop = rows if rows is not None else (0, global_batch)
        if not 0 <= first < stop <= global_batch:
            raise ValueError(f"rows {rows} are not a non-empty range within the global batch {global_batch}")
        self.global_batch, self.seed = global_batch, seed
        self.local_batch = stop - first
        self.next_step = start_step
        b = self.local_batch

        def element(j: int) -> dict:
            step, r = divmod(j, b)
            return row_fn(step * global_batch + first + r)

        local = grain.MapDataset.range(start_step * b, max(num_steps, start_step) * b).map(element).batch(b)
        options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch * b)
        self._iter = iter(local.to_iter_dataset(options))

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch = next(self._iter)
        self.next_step += 1
        return batch

    def get_state(self) -> dict:
        """JSON-serializable; independent of the number of processes."""
        return {"next_step": self.next_step, "seed": self.seed, "global_batch": self.global_batch}


def epoch_stream(source, seed: int, shuffle: bool = True):
    """The infinite stream of a source: epoch e is a seeded permutation of it (grain's per-epoch shuffle)."""
    if len(source) == 0:
        raise ValueError(f"data source {source!r} is empty")
    stream = grain.MapDataset.source(source)
    return (stream.shuffle(seed=seed) if shuffle else stream).repeat()


class StepIndexedLoader(StepRowLoader):
    """One example per row: row position p reads stream[p], transformed with randomness seeded by (seed, p)."""

    def __init__(self, source, *, global_batch: int, seed: int, transform: Transform, start_step: int,
                 num_steps: int, rows: tuple[int, int] | None = None, shuffle: bool = True,
                 num_threads: int = 2, prefetch: int = 4):
        """rows: this process's [start, stop) of every global batch (default: all of it)."""
        stream = epoch_stream(source, seed, shuffle)
        super().__init__(lambda pos: transform(stream[pos], np.random.default_rng((seed, pos))),
                         global_batch=global_batch, seed=seed, start_step=start_step, num_steps=num_steps, rows=rows,
                         num_threads=num_threads, prefetch=prefetch)


def even_rows(process_index: int, process_count: int, global_batch: int) -> tuple[int, int]:
    """Rows of process p when each of P processes holds an equal, contiguous block (tests, tools)."""
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    n = global_batch // process_count
    return process_index * n, (process_index + 1) * n


def fixed_batches(source, *, batch_size: int, num_examples: int, transform: Transform, seed: int = 0):
    """Deterministic evaluation batches over the first `num_examples` of `source`, in order.

    The last batch is padded by repeating examples; `_valid` marks the real rows.
    """
    n = min(num_examples, len(source))
    for start in range(0, n, batch_size):
        idx = [min(i, n - 1) for i in range(start, start + batch_size)]
        rows = [transform(source[i], np.random.default_rng((seed, i))) for i in idx]
        batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        batch["_valid"] = np.array([start + i < n for i in range(batch_size)])
        yield batch


def split_host_stats(batch: Mapping[str, Any]) -> tuple[dict, dict]:
    """Keys starting with '_' stay on the host (counters such as truncated texts)."""
    device = {k: v for k, v in batch.items() if not k.startswith("_")}
    host = {k: v for k, v in batch.items() if k.startswith("_")}
    return device, host

