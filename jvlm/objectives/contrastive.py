"""Contrastive image-text losses on already L2-normalized embeddings zimg, ztxt [N, D].

`logit_scale` is the learnable log-temperature t': logits are multiplied by exp(t').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_contrastive_loss(zimg, ztxt, logit_scale, max_logit_scale: float = jnp.log(100.0), *,
                             zneg=None, neg_valid=None):
    """CLIP: mean of the image->text and text->image cross-entropies; t' clamped at log 100.

    zneg [N, K, D], neg_valid [N, K]: optional hard-negative texts of each image (NegCLIP); they join
    the image->text softmax of their own image only.
    """
    scale = jnp.exp(jnp.minimum(logit_scale, max_logit_scale))
    zimg = zimg.astype(jnp.float32)
    logits = scale * zimg @ ztxt.astype(jnp.float32).T
    labels = jnp.arange(logits.shape[0])
    i2t_logits = logits
    if zneg is not None:
        neg = scale * jnp.einsum("nd,nkd->nk", zimg, zneg.astype(jnp.float32))
        i2t_logits = jnp.concatenate([logits, jnp.where(neg_valid, neg, -jnp.inf)], axis=1)
    i2t = -jnp.take_along_axis(jax.nn.log_softmax(i2t_logits, axis=1), labels[:, None], axis=1).mean()
    t2i = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    return 0.5 * (i2t + t2i)


def sigmoid_loss(zimg, ztxt, logit_scale, logit_bias):
    """SigLIP: -sum_ij log sigmoid(z_ij (exp(t') x_i.y_j + b)) / N, z_ii = 1, z_ij = -1."""
    n = zimg.shape[0]
    logits = jnp.exp(logit_scale) * zimg.astype(jnp.float32) @ ztxt.astype(jnp.float32).T + logit_bias
    z = 2.0 * jnp.eye(n, dtype=jnp.float32) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n


def sigmoid_hard_negative_loss(zimg, zneg, logit_scale, logit_bias, neg_valid):
    """SigLIP's term for hard-negative texts of each image, zneg [N, K, D] with z = -1:
    -sum_{i,k valid} log sigmoid(-(exp(t') x_i.n_ik + b)) / N, added to `sigmoid_loss` (whose
    normalization by N it shares). Rows are independent: under jit it shards with the batch, and it
    composes with every `sharded_sigmoid_loss` implementation without a collective of its own."""
    logits = jnp.exp(logit_scale) * jnp.einsum("nd,nkd->nk", zimg.astype(jnp.float32),
                                               zneg.astype(jnp.float32)) + logit_bias
    return -jnp.sum(jnp.where(neg_valid, jax.nn.log_sigmoid(-logits), 0.0)) / zimg.shape[0]


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


# Rows of the local block processed at once: tiles of at most this many logits stay live.
TILE_ELEMENTS = 1 << 20


def _tile_rows(b: int) -> int:
    """The largest divisor of b that keeps a [rows, b] tile within TILE_ELEMENTS."""
    limit = max(1, TILE_ELEMENTS // b)
    return max(d for d in range(1, min(b, limit) + 1) if b % d == 0)


def _ring_pass(x, y, t_prime, bias, *, axis, total, with_grads):
    """One pass of the text blocks around the ring; returns the loss, and for with_grads its
    gradients for an incoming cotangent of 1.

    The loss is a scalar, so its input gradients are linear in the cotangent g: we compute them
    while the blocks go round and the VJP just scales them (no second pass, nothing saved per
    block). With l_ij = t x_i.y_j + b and G_ij = dL/dl_ij = -(1/N) z_ij sigmoid(-z_ij l_ij):
    dx_i = t sum_j G_ij y_j, dy_j = t sum_i G_ij x_i, dt' = sum G_ij (l_ij - b), db = sum G_ij.
    dy for a text block is accumulated on each device it visits and travels with the block,
    arriving back at its owner after n shifts. Each b x b block is itself processed in row tiles
    so that only [rows, b] logits are live.
    """
    t = jnp.exp(t_prime)
    n, b = jax.lax.axis_size(axis), x.shape[0]
    rows = _tile_rows(b)

    def block(k, y_blk, acc):
        def tile(r, acc):
            loss, dy_blk, dx, dt, db = acc
            start = r * rows
            xr = jax.lax.dynamic_slice_in_dim(x, start, rows)
            logits = t * xr @ y_blk.T + bias
            diag = (start + jnp.arange(rows))[:, None] == jnp.arange(b)[None, :]
            z = jnp.where((k == 0) & diag, 1.0, -1.0)  # +1 only for this device's own pairs
            loss = loss - jnp.sum(jax.nn.log_sigmoid(z * logits))
            if not with_grads:
                return loss, dy_blk, dx, dt, db
            grad = -(z / total) * jax.nn.sigmoid(-z * logits)
            dxr = jax.lax.dynamic_slice_in_dim(dx, start, rows) + t * grad @ y_blk
            return (loss, dy_blk + t * grad.T @ xr, jax.lax.dynamic_update_slice_in_dim(dx, dxr, start, 0),
                    dt + jnp.sum(grad * (logits - bias)), db + jnp.sum(grad))

        return jax.lax.fori_loop(0, b // rows, tile, acc)

    def body(k, carry):
        y_blk, acc = carry
        y_next = _shift(y_blk, axis)  # issued before the matmuls so the transfer can overlap them
        loss, dy_blk, *rest = block(k, y_blk, acc)
        return y_next, (loss, _shift(dy_blk, axis) if with_grads else dy_blk, *rest)

    zero = _varying_zero(axis)
    acc = (zero, jnp.zeros_like(y), jnp.zeros_like(x), zero, zero) if with_grads else (zero,) * 5
    y_last, acc = jax.lax.fori_loop(0, n - 1, body, (y, acc))
    loss, dy_blk, dx, dt, db = block(n - 1, y_last, acc)
    loss = jax.lax.psum(loss, axis) / total
    if not with_grads:
        return loss
    dy = _shift(dy_blk, axis)  # the last visit's accumulator goes home
    return loss, (dx, dy, jax.lax.psum(dt, axis), jax.lax.psum(db, axis))


def _ring_sigmoid_loss(mesh, axis):
    in_specs, out_spec = _specs(axis)

    def shard(f, out):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out)

    @jax.custom_vjp
    def loss(zimg, ztxt, t_prime, bias):
        total = zimg.shape[0]
        f = lambda *a: _ring_pass(*a, axis=axis, total=total, with_grads=False)  # noqa: E731
        return shard(f, out_spec)(zimg, ztxt, t_prime, bias)

    def fwd(zimg, ztxt, t_prime, bias):
        total = zimg.shape[0]
        f = shard(lambda *a: _ring_pass(*a, axis=axis, total=total, with_grads=True), (out_spec, in_specs))
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
