"""The reusable train step: sharding equivalence, freezing, accumulation, non-finite guard, groups, EMA."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import contrastive_setup, fake_batches, train

from jvlm import sharding
from jvlm.train.state import TrainState
from jvlm.train.step import LossOutput, ParamGroup, active_groups, make_train_step, phase_starts


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_sharded_step_matches_single_device(optimizer):
    # Parameters are compared after SGD, whose update is linear in the gradient; Adam divides
    # near-zero gradients by their own magnitude (m/sqrt(v) ~ +-1), which turns last-bit rounding
    # differences of the reduction order into lr-sized ones, so with Adam only the losses are compared.
    batches = fake_batches(3)
    opt = (f"optimizer.name={optimizer}", "optimizer.learning_rate=0.1" if optimizer == "sgd" else "seed=0")
    s1, l1 = train(*contrastive_setup(1, *opt), batches)
    s8, l8 = train(*contrastive_setup(8, *opt), batches)
    np.testing.assert_allclose(l1, l8, rtol=2e-5)
    assert len(jax.tree.leaves(s8.params)[0].sharding.device_set) == 8  # really spread over 8 devices
    if optimizer == "sgd":
        for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_frozen_subset_is_bit_identical_and_has_no_optimizer_state():
    fn, state, mesh = contrastive_setup(8, "optimizer.freeze=img/.*")
    before = jax.device_get(state.params)
    state, _ = train(fn, state, mesh, fake_batches(3))
    after = jax.device_get(state.params)
    img_b, img_a = jax.tree.leaves(before["main"]["img"]), jax.tree.leaves(after["main"]["img"])
    assert all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in zip(img_b, img_a))
    txt_b, txt_a = jax.tree.leaves(before["main"]["txt"]), jax.tree.leaves(after["main"]["txt"])
    assert any(not np.array_equal(a, b) for a, b in zip(txt_b, txt_a))
    # adam keeps mu and nu for the trainable leaves only
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    assert not any("'img'" in p for p in opt_paths)
    assert sum("'txt'" in p for p in opt_paths) == 2 * len(txt_b)


def mlp_problem():
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.normal(size=(4, 16)), jnp.float32),
              "w2": jnp.asarray(rng.normal(size=(16, 1)), jnp.float32)}
    batch = {"x": rng.normal(size=(32, 4)).astype(np.float32), "y": rng.normal(size=(32, 1)).astype(np.float32)}

    def loss_fn(p, b, rng, ctx):
        pred = jnp.tanh(b["x"] @ p["main"]["w1"]) @ p["main"]["w2"]
        return LossOutput(jnp.mean((pred - b["y"]) ** 2), {"mse": jnp.mean((pred - b["y"]) ** 2)})

    return params, batch, loss_fn


@pytest.mark.parametrize("n_devices", [1, 8])
def test_grad_accumulation_matches_one_big_batch(n_devices):
    params, batch, loss_fn = mlp_problem()
    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:n_devices])
    tx = optax.adam(1e-2)
    results = []
    for k in (1, 4):
        step = jax.jit(make_train_step([ParamGroup("main", loss_fn, tx)], grad_accum_steps=k))
        state = TrainState.create({"main": params}, {"main": tx.init(params)}, {}, jax.random.PRNGKey(0), False)
        gb = sharding.global_batch(batch, mesh)
        for _ in range(3):
            state, m = step(state, gb, jax.random.PRNGKey(1))
        results.append((state, m))
    (s1, m1), (s4, m4) = results
    np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m1["grad_norm"]), float(m4["grad_norm"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_devices", [1, 8])
def test_token_weighted_accumulation_equals_one_batch_with_unequal_tokens_per_microbatch(n_devices):
    # A per-token loss over rows with very different numbers of supervised tokens: the k = 4 micro-batches hold
    # 3, 24, 57 and 110 tokens (the rows are dealt round-robin, see split_microbatches). Averaging micro-batch means
    # would weight a token of the first micro-batch 37x more than one of the last; weighting by tokens must give
    # exactly the gradient of one batch's mean over all its 194 tokens.
    rng = np.random.default_rng(1)
    params = {"w": jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)}
    lengths = np.array([[1, 5, 14, 28], [1, 6, 14, 27], [1, 6, 14, 27], [0, 7, 15, 28]]).reshape(-1)  # row r: micro r % 4
    batch = {"x": rng.normal(size=(16, 32, 3)).astype(np.float32), "y": rng.normal(size=(16, 32, 5)).astype(np.float32),
             "w": (np.arange(32)[None] < lengths[:, None]).astype(np.float32)}
    assert [int(batch["w"][i::4].sum()) for i in range(4)] == [3, 24, 57, 110]

    def loss_fn(p, b, rng, ctx):
        per_token = jnp.sum((b["x"] @ p["main"]["w"] - b["y"]) ** 2, -1)
        tokens = jnp.sum(b["w"])
        mean = jnp.sum(per_token * b["w"]) / jnp.maximum(tokens, 1.0)
        return LossOutput(mean, {"mean_again": mean}, weight=tokens)

    mesh = sharding.make_mesh({"data": -1}, jax.devices()[:n_devices])
    tx = optax.sgd(0.05)
    out = {}
    for k in (1, 4):
        step = jax.jit(make_train_step([ParamGroup("main", loss_fn, tx)], grad_accum_steps=k))
        state = TrainState.create({"main": params}, {"main": tx.init(params)}, {}, jax.random.PRNGKey(0), False)
        state, m = step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
        out[k] = (state, m)
    (s1, m1), (s4, m4) = out[1], out[4]
    assert float(m1["tokens"]) == float(m4["tokens"]) == 194
    np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(float(m4["mean_again"]), float(m1["loss"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s4.params["main"]["w"]), np.asarray(s1.params["main"]["w"]), rtol=1e-5,
                               atol=1e-6)
    # and the mean of micro-batch means (what an unweighted loss gets) is measurably different here
    per_micro = [float(loss_fn({"main": params}, {k: v[i::4] for k, v in batch.items()}, None, None).loss)
                 for i in range(4)]
    first_loss = float(loss_fn({"main": params}, batch, None, None).loss)
    assert abs(np.mean(per_micro) - first_loss) > 0.05 * first_loss


def test_nonfinite_step_is_skipped_and_counted():
    params, batch, loss_fn = mlp_problem()
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step([ParamGroup("main", loss_fn, tx)]))
    state = TrainState.create({"main": params}, {"main": tx.init(params)}, {}, jax.random.PRNGKey(0), False)
    bad = dict(batch, x=batch["x"].copy())
    bad["x"][3, 1] = np.nan
    new, m = step(state, bad, jax.random.PRNGKey(1))
    assert int(m["nonfinite_skipped"]) == 1 and int(new.nonfinite_count) == 1 and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        assert np.array_equal(a, b)
    new2, m2 = step(new, batch, jax.random.PRNGKey(1))
    assert int(m2["nonfinite_skipped"]) == 0 and int(new2.nonfinite_count) == 1
    assert not np.array_equal(new2.params["main"]["w1"], new.params["main"]["w1"])


def test_param_groups_update_in_order_and_on_their_cadence():
    lr = 0.1
    tx = optax.sgd(lr)
    loss_a = lambda p, b, r, c: LossOutput((p["a"]["x"] - 1.0) ** 2)  # noqa: E731
    loss_b = lambda p, b, r, c: LossOutput((p["b"]["x"] - p["a"]["x"]) ** 2)  # noqa: E731
    groups = [ParamGroup("a", loss_a, tx), ParamGroup("b", loss_b, tx, every=2)]
    params = {"a": {"x": jnp.float32(3.0)}, "b": {"x": jnp.float32(0.0)}}
    state = TrainState.create(params, {g: tx.init(params[g]) for g in params}, {}, jax.random.PRNGKey(0), False)
    step = jax.jit(make_train_step(groups))
    s1, m = step(state, {}, jax.random.PRNGKey(0))
    a1 = 3.0 - lr * 2 * (3.0 - 1.0)
    b1 = 0.0 - lr * 2 * (0.0 - a1)  # b's loss sees the already-updated a, and sends it no gradient
    assert float(s1.params["a"]["x"]) == pytest.approx(a1)
    assert float(s1.params["b"]["x"]) == pytest.approx(b1)
    s2, _ = step(s1, {}, jax.random.PRNGKey(0))
    assert float(s2.params["b"]["x"]) == pytest.approx(b1)  # step 1 is odd: b is not updated
    assert "b/loss" in m and "loss" in m


def test_group_with_start_step_is_not_computed_or_updated_before_it():
    tx = optax.adam(0.1)  # Adam: a zero-gradient step would still advance its count, so "not updated" is strict
    loss_a = lambda p, b, r, c: LossOutput((p["a"]["x"] - 1.0) ** 2, {"seen": jnp.float32(1.0)})  # noqa: E731
    loss_b = lambda p, b, r, c: LossOutput((p["b"]["x"] - 5.0) ** 2, {"seen": jnp.float32(1.0)},  # noqa: E731
                                           model_state={"calls": c.model_state["calls"] + 1})
    groups = [ParamGroup("a", loss_a, tx), ParamGroup("b", loss_b, tx, start_step=2)]
    params = {"a": {"x": jnp.float32(3.0)}, "b": {"x": jnp.float32(0.0)}}
    state = TrainState.create(params, {g: tx.init(params[g]) for g in params}, {"calls": jnp.int32(0)},
                              jax.random.PRNGKey(0), False)
    step = jax.jit(make_train_step(groups))
    seen = []
    for _ in range(3):
        before = state
        state, m = step(state, {}, jax.random.PRNGKey(0))
        seen.append((float(m["b/seen"]), float(m["b/loss"]), int(state.model_state["calls"])))
        if int(before.step) < 2:
            assert float(state.params["b"]["x"]) == 0.0
            chex.assert_trees_all_equal(state.opt_state["b"], before.opt_state["b"])
    assert seen == [(0.0, 0.0, 0), (0.0, 0.0, 0), (1.0, 25.0, 1)]
    assert float(state.params["b"]["x"]) != 0.0
    assert float(state.params["a"]["x"]) < 3.0

    # The loop's form: one program per phase, chosen by the host-side step; the same states, step by step.
    assert phase_starts(groups) == [0, 2]
    programs = {s: jax.jit(make_train_step(groups, active=active_groups(groups, s))) for s in (0, 2)}
    phased = TrainState.create(params, {g: tx.init(params[g]) for g in params}, {"calls": jnp.int32(0)},
                               jax.random.PRNGKey(0), False)
    for i in range(3):
        phased, m = programs[0 if i < 2 else 2](phased, {}, jax.random.PRNGKey(0))
        assert float(m["b/seen"]) == (1.0 if i == 2 else 0.0)
    chex.assert_trees_all_close(phased.params, state.params)
    chex.assert_trees_all_close(phased.opt_state, state.opt_state)
    assert int(phased.model_state["calls"]) == 1


@pytest.mark.parametrize("k", [1, 4])
def test_carry_reaches_later_groups_per_microbatch(k):
    """A GAN's discriminator reads the generator's outputs from ctx.carry: computed with the generator
    before its update, gradient-stopped, and under accumulation each micro-batch gets its own rows."""
    lr, x = 0.1, jnp.arange(8, dtype=jnp.float32)

    def gen(p, b, r, c):
        y = p["g"]["w"] * b["x"]
        return LossOutput(jnp.mean((y - 2 * b["x"]) ** 2), carry={"y": y})

    def disc(p, b, r, c):
        y = c.carry["g"]["y"]
        assert y.shape == b["x"].shape  # its own micro-batch's rows
        return LossOutput(jnp.mean((p["d"]["v"] * y - b["x"]) ** 2))

    tx = optax.sgd(lr)
    params = {"g": {"w": jnp.float32(1.5)}, "d": {"v": jnp.float32(0.0)}}
    state = TrainState.create(params, {n: tx.init(params[n]) for n in params}, {}, jax.random.PRNGKey(0), False)
    step = jax.jit(make_train_step([ParamGroup("g", gen, tx), ParamGroup("d", disc, tx)], grad_accum_steps=k))
    s1, _ = step(state, {"x": x}, jax.random.PRNGKey(0))
    y = 1.5 * x  # the generator's output before its update
    v1 = 0.0 - lr * float(jnp.mean(2 * (0.0 * y - x) * y))
    assert float(s1.params["d"]["v"]) == pytest.approx(v1, rel=1e-5)
    assert float(s1.params["g"]["w"]) == pytest.approx(1.5 - lr * float(jnp.mean(2 * (1.5 - 2) * x * x)), rel=1e-5)


def test_model_state_and_ema():
    tx = optax.sgd(0.5)

    def loss_fn(p, b, r, ctx):  # a running mean of the inputs, updated by the step (non-gradient state)
        new = {"mean": 0.9 * ctx.model_state["mean"] + 0.1 * b["x"].mean(), "seen_step": ctx.step}
        return LossOutput(jnp.sum(p["main"]["w"] ** 2), {}, new)

    params = {"main": {"w": jnp.ones(3)}}
    state = TrainState.create(params, {"main": tx.init(params["main"])},
                              {"mean": jnp.float32(0.0), "seen_step": jnp.int32(-1)}, jax.random.PRNGKey(0), True)
    step = jax.jit(make_train_step([ParamGroup("main", loss_fn, tx)], ema_decay=0.5))
    s1, _ = step(state, {"x": jnp.full((4,), 2.0)}, jax.random.PRNGKey(0))
    assert float(s1.model_state["mean"]) == pytest.approx(0.2) and int(s1.model_state["seen_step"]) == 0
    np.testing.assert_allclose(s1.params["main"]["w"], 0.0)           # w - 0.5 * 2w
    np.testing.assert_allclose(s1.ema_params["main"]["w"], 0.5)       # 0.5 * 1 + 0.5 * 0


def lowered_step(fn, state, mesh, batch):
    """(compiled step, its lowered StableHLO text) for a jitted step from contrastive_setup: the text shows what the
    program asks XLA for (dtypes, sharding constraints, collectives); running the compiled step traces it only once."""
    lowered = fn.lower(state, sharding.global_batch(batch, mesh))
    return lowered.compile(), lowered.as_text()


def bf16_dots(text: str) -> int:
    return sum("bf16>" in line.split("->")[-1] for line in text.splitlines() if "stablehlo.dot_general" in line)


def test_bf16_compute_keeps_f32_master_weights_and_remat_matches():
    batches = fake_batches(2)
    runs = {}
    for name, overrides in (("f32", ()), ("remat", ("model.remat=full",)), ("bf16", ("model.dtype=bfloat16",))):
        fn, state, mesh = contrastive_setup(8, *overrides)
        step, text = lowered_step(fn, state, mesh, batches[0])
        runs[name] = (*train(step, state, mesh, batches), text)
    (_, l_ref, t_ref), (_, l_rem, t_rem), (bf, l_bf, t_bf) = runs["f32"], runs["remat"], runs["bf16"]
    # The settings reach the program: the backward pass recomputes the blocks behind XLA optimization barriers
    # (which keep it from reusing the forward's values), and the matmuls run in bf16.
    assert "optimization_barrier" in t_rem and "optimization_barrier" not in t_ref
    assert bf16_dots(t_bf) > 0 and bf16_dots(t_ref) == 0
    np.testing.assert_allclose(l_ref, l_rem, rtol=1e-6)  # the same arithmetic, recomputed
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf.params))
    # bf16 rounds: up to 4e-4 relative here, well within 5e-3, and not the f32 losses themselves.
    rel = np.abs(np.subtract(l_bf, l_ref)) / np.abs(l_ref)
    assert 1e-6 < rel.max() < 5e-3, rel
