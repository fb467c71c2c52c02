"""Global batches depend on (seed, step) only: not on the process count, not on restarts."""

import numpy as np
import pytest

from jvlm.data import shapes
from jvlm.data.pipeline import StepIndexedLoader, even_rows, fixed_batches, split_host_stats


def transform(example, rng):
    # An augmentation that uses the per-example rng, so its seeding is covered too.
    if rng.random() < 0.5:
        example = shapes.flip_horizontal(example)
    return {"image": example["image"], "label": np.int32(example["label"]), "_caption_len": len(example["caption"])}


def loader(start, processes=1, index=0, seed=0, steps=6, batch=8, threads=2):
    src = shapes.ShapesSource("train", image_size=32, num_examples=20)  # 20 % 8 != 0: batches straddle epochs
    return StepIndexedLoader(src, global_batch=batch, seed=seed, transform=transform, start_step=start,
                             num_steps=steps, rows=even_rows(index, processes, batch), num_threads=threads)


def global_batches(processes, start=0, **kw):
    loaders = [loader(start, processes, p, **kw) for p in range(processes)]
    out = []
    for parts in zip(*loaders):
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def test_order_is_independent_of_process_count():
    one, two, four = global_batches(1), global_batches(2), global_batches(4, threads=1)
    assert len(one) == 6
    for a, b, c in zip(one, two, four):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["image"], c["image"])


def test_restart_from_state_continues_the_same_stream():
    full = global_batches(1)
    it = loader(0)
    for _ in range(3):
        next(it)
    state = it.get_state()
    assert state["next_step"] == 3
    resumed = global_batches(2, start=state["next_step"])  # restored on a different process count
    assert len(full) == 6 and len(resumed) == 3  # the remaining steps, each compared below
    for a, b in zip(full[3:], resumed):
        assert np.array_equal(a["image"], b["image"])


def test_epochs_reshuffle_and_seed_matters():
    batches = global_batches(1, steps=5)  # 40 examples = 2 epochs of 20
    labels = np.concatenate([b["label"] for b in batches])
    first, second = labels[:20], labels[20:]
    assert sorted(first) == sorted(second) and not np.array_equal(first, second)
    other = global_batches(1, seed=1, steps=5)
    assert not np.array_equal(np.concatenate([b["label"] for b in other]), labels)


def test_host_only_keys_and_fixed_eval_batches():
    batch = next(loader(0))
    device, host = split_host_stats(batch)
    assert "_caption_len" in host and "_caption_len" not in device
    src = shapes.ShapesSource("validation", image_size=32, num_examples=10)
    evals = list(fixed_batches(src, batch_size=4, num_examples=10, transform=transform))
    assert [b["_valid"].sum() for b in evals] == [4, 4, 2]


def test_uneven_split_over_processes_is_an_error():
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        loader(0, processes=3)
