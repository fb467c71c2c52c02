"""GAN losses for VQ-GAN-style tokenizers (taming-transformers): discriminator and generator terms
and the adaptive weight that balances the generator's GAN gradient against its reconstruction
gradient at the decoder's last layer. Logits are the discriminator's raw per-patch outputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp

GAN_LOSSES = ("hinge", "non_saturating")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array, kind: str) -> jax.Array:
    """hinge: mean(relu(1 - D(x))) + mean(relu(1 + D(x̂))); non_saturating: -log σ(D(x)) - log(1 - σ(D(x̂)))."""
    if kind == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
    raise ValueError(f"unknown GAN loss {kind!r}; use one of {GAN_LOSSES}")


def generator_loss(fake_logits: jax.Array, kind: str) -> jax.Array:
    """hinge: -mean(D(x̂)) (taming's generator term); non_saturating: -log σ(D(x̂))."""
    if kind == "hinge":
        return -jnp.mean(fake_logits)
    if kind == "non_saturating":
        return jnp.mean(jax.nn.softplus(-fake_logits))
    raise ValueError(f"unknown GAN loss {kind!r}; use one of {GAN_LOSSES}")


def adaptive_weight(reconstruction_grad, gan_grad, max_weight: float = 1e4) -> jax.Array:
    """‖∇_L rec‖ / (‖∇_L gan‖ + 1e-4) at the decoder's last layer L, clipped to [0, max_weight] and
    gradient-stopped (Esser et al. 2021, eq. 7): the GAN term then moves that layer as much as the
    reconstruction term does, whatever the scale of either loss."""
    rec = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(reconstruction_grad)))
    gan = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(gan_grad)))
    return jax.lax.stop_gradient(jnp.clip(rec / (gan + 1e-4), 0.0, max_weight))


def ramp(step: jax.Array, start_step: int, ramp_steps: int) -> jax.Array:
    """0 before start_step, then rising linearly to 1 over ramp_steps steps (1 at once when ramp_steps is 0).
    Fading the generator's GAN term in keeps a fresh discriminator's gradients from jolting a trained
    autoencoder (without it, PSNR fell by 2 dB in the first steps after the start on shapes)."""
    done = (step - start_step + 1) / max(ramp_steps, 1)
    return jnp.where(step >= start_step, jnp.clip(done, 0.0, 1.0), 0.0)
