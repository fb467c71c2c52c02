"""Contrastive image-text losses on already L2-normalized embeddings zimg, ztxt [N, D].

`logit_scale` is the learnable log-temperature t': logits are multiplied by exp(t').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_contrastive_loss(zimg, ztxt, logit_scale, max_logit_scale: float = jnp.log(100.0)):
    """CLIP: mean of the image->text and text->image cross-entropies; t' clamped at log 100."""
    scale = jnp.exp(jnp.minimum(logit_scale, max_logit_scale))
    logits = scale * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T
    labels = jnp.arange(logits.shape[0])
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    return 0.5 * (i2t + t2i)


def sigmoid_loss(zimg, ztxt, logit_scale, logit_bias):
    """SigLIP: -sum_ij log sigmoid(z_ij (exp(t') x_i.y_j + b)) / N, z_ii = 1, z_ij = -1."""
    n = zimg.shape[0]
    logits = jnp.exp(logit_scale) * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T + logit_bias
    z = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n


# ----------------------------------------------------------------------------- sharded losses
# Global zimg/ztxt [N, D] sharded on their batch dimension over mesh axis `axis` (a name or a
# tuple of names, e.g. ("data", "fsdp")); n devices each hold b = N/n rows. logit_scale and
# logit_bias are replicated scalars.

def _specs(axis):
    from jax.sharding import PartitionSpec as P
    return (P(axis, None), P(axis, None), P(), P()), P()


def _shift(x, axis):
    """Send this device's block to the next device along `axis` (device i gets i-1's)."""
    n = jax.lax.axis_size(axis)
    return jax.lax.ppermute(x, axis, [(j, (j + 1) % n) for j in range(n)])


def _varying_zero(axis):
    """A scalar accumulator typed as varying over `axis`, as shard_map's loop carries require."""
    axes = axis if isinstance(axis, tuple) else (axis,)
    return jax.lax.pcast(jnp.zeros((), jnp.float32), axes, to="varying")


def _block_labels(b, first_block):
    # +1 on the diagonal of the block that came from this device (k == 0), -1 everywhere else.
    return jnp.where(first_block & jnp.eye(b, dtype=bool), 1.0, -1.0)


def _ring_forward(x, y, t_prime, bias, *, axis, total):
    t = jnp.exp(t_prime)
    n, b = jax.lax.axis_size(axis), x.shape[0]

    def block_loss(k, y_blk):
        logits = t * x @ y_blk.T + bias
        return -jnp.sum(jax.nn.log_sigmoid(_block_labels(b, k == 0) * logits))

    def body(k, carry):
        y_blk, acc = carry
        y_next = _shift(y_blk, axis)  # issued before the matmul so the transfer can overlap it
        return y_next, acc + block_loss(k, y_blk)

    y_last, acc = jax.lax.fori_loop(0, n - 1, body, (y, _varying_zero(axis)))
    acc = acc + block_loss(n - 1, y_last)
    return jax.lax.psum(acc, axis) / total


def _ring_value_and_grad(x, y, t_prime, bias, *, axis, total):
    """Loss and its gradients in one ring pass: only b x b blocks are ever live.

    The loss is a scalar, so its input gradients are linear in the incoming cotangent g: we
    compute them for g = 1 while the blocks go round, and the VJP just scales them. With
    l_ij = t x_i.y_j + b and G_ij = dL/dl_ij = -(1/N) z_ij sigmoid(-z_ij l_ij):
    dx_i = t sum_j G_ij y_j, dy_j = t sum_i G_ij x_i, dt' = sum G_ij (l_ij - b), db = sum G_ij.
    dy for a text block is accumulated on each device it visits and travels with the block,
    arriving back at its owner after n shifts.
    """
    t = jnp.exp(t_prime)
    n, b = jax.lax.axis_size(axis), x.shape[0]

    def block(k, y_blk, acc):
        loss, dy_blk, dx, dt, db = acc
        logits = t * x @ y_blk.T + bias
        z = _block_labels(b, k == 0)
        grad = -(z / total) * jax.nn.sigmoid(-z * logits)
        return (loss - jnp.sum(jax.nn.log_sigmoid(z * logits)), dy_blk + t * grad.T @ x, dx + t * grad @ y_blk,
                dt + jnp.sum(grad * (logits - bias)), db + jnp.sum(grad))

    def body(k, carry):
        y_blk, acc = carry
        y_next = _shift(y_blk, axis)  # issued before the matmuls so the transfer can overlap them
        loss, dy_blk, *rest = block(k, y_blk, acc)
        return y_next, (loss, _shift(dy_blk, axis), *rest)

    zero = _varying_zero(axis)
    acc = (zero, jnp.zeros_like(y), jnp.zeros_like(x), zero, zero)
    y_last, acc = jax.lax.fori_loop(0, n - 1, body, (y, acc))
    loss, dy_blk, dx, dt, db = block(n - 1, y_last, acc)
    dy = _shift(dy_blk, axis)  # the last visit's accumulator goes home
    psum = lambda v: jax.lax.psum(v, axis)  # noqa: E731
    return psum(loss) / total, (dx, dy, psum(dt), psum(db))


def _ring_sigmoid_loss(mesh, axis):
    in_specs, out_spec = _specs(axis)

    def shard(f, out):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out)

    @jax.custom_vjp
    def loss(zimg, ztxt, t_prime, bias):
        total = zimg.shape[0]
        return shard(lambda *a: _ring_forward(*a, axis=axis, total=total), out_spec)(zimg, ztxt, t_prime, bias)

    def fwd(zimg, ztxt, t_prime, bias):
        total = zimg.shape[0]
        f = shard(lambda *a: _ring_value_and_grad(*a, axis=axis, total=total), (out_spec, in_specs))
        return f(zimg, ztxt, t_prime, bias)

    def bwd(unit_grads, g):
        return tuple(g * u for u in unit_grads)

    loss.defvjp(fwd, bwd)
    return loss


def _all_gather_sigmoid_local(x, y, t_prime, bias, *, axis, total):
    all_y = jax.lax.all_gather(y, axis, tiled=True)            # [N, D] on every device
    b, i = x.shape[0], jax.lax.axis_index(axis)
    logits = jnp.exp(t_prime) * x @ all_y.T + bias             # [b, N]
    z = jnp.where(jnp.arange(all_y.shape[0])[None, :] == (i * b + jnp.arange(b))[:, None], 1.0, -1.0)
    return jax.lax.psum(-jnp.sum(jax.nn.log_sigmoid(z * logits)), axis) / total


def sharded_sigmoid_loss(zimg, ztxt, logit_scale, logit_bias, *, mesh, axis="data", impl="ring"):
    """SigLIP's loss on batch-sharded embeddings; equal in value and gradients to `sigmoid_loss`.

    impl="ring": text blocks travel around the devices with ppermute (the SigLIP paper's chunked
    form); only b x b logit blocks are live. Under differentiation a custom VJP computes the
    gradients inside the same ring pass, so nothing is saved per block and there is no second pass.
    impl="all_gather": every device gathers all N texts and builds a b x N logit block.
    """
    args = (zimg.astype(jnp.float32), ztxt.astype(jnp.float32),
            jnp.asarray(logit_scale, jnp.float32), jnp.asarray(logit_bias, jnp.float32))
    if impl == "ring":
        return _ring_sigmoid_loss(mesh, axis)(*args)
    if impl == "all_gather":
        in_specs, out_spec = _specs(axis)
        f = lambda *a: _all_gather_sigmoid_local(*a, axis=axis, total=zimg.shape[0])  # noqa: E731
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_spec)(*args)
    raise ValueError(f"impl={impl!r}: use 'ring' or 'all_gather'")


def _softmax_local(x, y, t_prime, *, axis, total, max_logit_scale):
    t = jnp.exp(jnp.minimum(t_prime, max_logit_scale))
    all_x = jax.lax.all_gather(x, axis, tiled=True)
    all_y = jax.lax.all_gather(y, axis, tiled=True)
    rows = jax.lax.axis_index(axis) * x.shape[0] + jnp.arange(x.shape[0])

    def ce(queries, keys):  # rows of queries against all keys; the positive is the same global row
        logp = jax.nn.log_softmax(t * queries @ keys.T, axis=1)
        return -jnp.sum(jnp.take_along_axis(logp, rows[:, None], axis=1))

    return jax.lax.psum(ce(x, all_y) + ce(y, all_x), axis) / (2 * total)


def sharded_softmax_contrastive_loss(zimg, ztxt, logit_scale, *, mesh, axis="data",
                                     max_logit_scale: float = jnp.log(100.0)):
    """CLIP's loss on batch-sharded embeddings. The softmax normalizes over the whole batch, so each
    device gathers all N image and all N text embeddings (2·N·D floats) and builds two b x N logit
    blocks: memory and communication grow with the global batch, unlike the sigmoid ring."""
    from jax.sharding import PartitionSpec as P
    f = lambda x, y, t: _softmax_local(x, y, t, axis=axis, total=zimg.shape[0],  # noqa: E731
                                       max_logit_scale=max_logit_scale)
    return jax.shard_map(f, mesh=mesh, in_specs=(P(axis, None), P(axis, None), P()), out_specs=P())(
        zimg.astype(jnp.float32), ztxt.astype(jnp.float32), jnp.asarray(logit_scale, jnp.float32))
