"""VQ-GAN (Esser et al. 2021, taming-transformers) on the spine: the VQ-VAE tokenizer plus a patch
discriminator, a perceptual loss and the adaptive GAN weight.

Two parameter groups in one train step and one checkpoint: "main" (the tokenizer) and "disc" (the
discriminator), each with its own optimizer (`config.optimizer`, `config.gan.optimizer`). The
tokenizer's loss hands its reconstructions to the discriminator's loss through the step's carry, so
they are computed once per step. Before `gan.start_step` neither GAN term is computed: the training
loop compiles one program for the steps before it and one for the steps after (ParamGroup.start_step).

Generator loss: reconstruction (MSE) + perceptual.weight * perceptual + quantizer losses
                + λ * gan.weight * ramp * generator GAN loss,
λ = ‖∇ rec‖ / ‖∇ GAN‖ at the decoder's last convolution kernel (gan.adaptive_weight; else λ = 1);
ramp rises from 0 to 1 over gan.ramp_steps steps after gan.start_step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jvlm.config import ConfigError, check_choice
from jvlm.data.pixels import images_to_float
from jvlm.models.autoencoder import output_conv
from jvlm.models.discriminator import PatchDiscriminator
from jvlm.models import feature_nets
from jvlm.objectives import gan
from jvlm.objectives.perceptual import perceptual_distance
from jvlm.tasks.vqvae import VQAutoencoder, VQVAETask
from jvlm.train import optim
from jvlm.train.step import LossOutput, ParamGroup


class VQGANTask(VQVAETask):
    optional_keys = VQVAETask.optional_keys + ("gan", "perceptual")

    def validate(self) -> None:
        super().validate()
        g, p = self.config.gan, self.config.perceptual
        check_choice("gan.loss", g.loss, gan.GAN_LOSSES)
        size = self.config.data.image_size
        if size % 2 ** g.discriminator.num_layers:
            raise ConfigError(f"config.gan.discriminator.num_layers={g.discriminator.num_layers} halves the image "
                              f"{g.discriminator.num_layers} times, which {size}x{size} does not allow; lower it.")
        if p.run and p.weights_file:
            raise ConfigError("config.perceptual: set either perceptual.run (a jvlm run's image encoder) or "
                              "perceptual.weights_file (an .npz conv network), not both.")

    @property
    def discriminator(self) -> PatchDiscriminator:
        d = self.config.gan.discriminator
        return PatchDiscriminator(ch=d.ch, num_layers=d.num_layers)

    def setup(self) -> None:
        """Loads the perceptual feature network (host side, once), and says which one is used."""
        p = self.config.perceptual
        self.feature_net = None
        if p.weight > 0 and (p.run or p.weights_file):
            self.feature_net = feature_nets.from_run(p.run) if p.run else feature_nets.from_file(p.weights_file)
            print(f"[vqgan] perceptual loss: {self.feature_net.description}, weight {p.weight}", flush=True)
        else:
            print("[vqgan] perceptual loss: off (set perceptual.run to a jvlm run with an image encoder, or "
                  "perceptual.weights_file to an .npz conv network, and perceptual.weight > 0)", flush=True)

    def init(self, rng):
        params, state = super().init(rng)
        s = self.config.data.image_size
        params["disc"] = self.discriminator.init(jax.random.fold_in(rng, 7), jnp.zeros((1, s, s, 3)))["params"]
        return params, state

    def param_groups(self, params) -> list[ParamGroup]:
        main = super().param_groups(params)
        tx, schedule, frozen = optim.make_optimizer(self.config.gan.optimizer, params["disc"], self.config.total_steps)
        # The spine skips the whole group before the GAN starts (ParamGroup.start_step).
        return main + [ParamGroup("disc", self.disc_loss_fn, tx, schedule, frozen, start_step=self.config.gan.start_step)]

    # ------------------------------------------------------------------ losses
    def _gan_on(self, step) -> jax.Array:
        return step >= self.config.gan.start_step

    def perceptual(self, x_hat, x) -> jax.Array:
        if getattr(self, "feature_net", None) is None:
            return jnp.zeros(())
        net = self.feature_net
        real = jax.lax.stop_gradient(net.features(net.params, x))
        return jnp.mean(perceptual_distance(net.features(net.params, x_hat), real))

    def loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        g, pw = self.config.gan, self.config.perceptual.weight
        p, dp = params["main"], params["disc"]
        x = images_to_float(batch["image"])
        z, out = self.encode_quantize(p, ctx.model_state, x)
        h = self.model.apply({"params": p}, out.quantized, True, method=VQAutoencoder.decode)
        last = lambda w, feats: output_conv().apply({"params": w}, feats).astype(jnp.float32)  # noqa: E731
        x_hat = last(p["dec"]["conv_out"], h)

        def rec_terms(xh):
            return jnp.mean(jnp.square(xh - x)), self.perceptual(xh, x)

        def rec_loss(xh):
            mse, perc = rec_terms(xh)
            return mse + pw * perc

        def gen_loss(xh):
            return gan.generator_loss(self.discriminator.apply({"params": dp}, xh), g.loss)

        mse, perc = rec_terms(x_hat)
        rec = mse + pw * perc

        def with_gan(_):
            g_loss = gen_loss(x_hat)
            if not g.adaptive_weight:
                return g_loss, jnp.ones(())
            # Gradients at the last layer's kernel only: h is fixed, so this is one small extra backward pass.
            # λ is a constant to the outer gradient, so its inputs are cut from it too: otherwise the outer
            # gradient traces the tangents of these inner gradients (second order), which made a GAN step
            # several times slower than the rest of the step on CPU.
            w, hs = jax.lax.stop_gradient((p["dec"]["conv_out"], h))
            at_last = lambda f: jax.grad(lambda k: f(last(dict(w, kernel=k), hs)))(w["kernel"])  # noqa: E731
            lam = gan.adaptive_weight(at_last(rec_loss), at_last(gen_loss), g.max_adaptive_weight)
            return g_loss, lam

        off = lambda _: (jnp.zeros(()), jnp.zeros(()))  # noqa: E731
        if ctx.active is not None:  # a program built for one phase: before or after the GAN starts, statically
            g_loss, lam = with_gan(None) if "disc" in ctx.active else off(None)
        else:
            g_loss, lam = jax.lax.cond(self._gan_on(ctx.step), with_gan, off, None)
        gan_weight = g.weight * lam * gan.ramp(ctx.step, g.start_step, g.ramp_steps)
        loss = rec + gan_weight * g_loss + self.quantizer_loss(out)
        metrics = {"mse": mse, "perceptual": perc, "generator_loss": g_loss, "adaptive_weight": lam,
                   "gan_weight": gan_weight,
                   **self.quantizer_metrics(x, x_hat, out)}
        new_state = self.codebook_update(ctx.model_state, z, out, rng, metrics)
        return LossOutput(loss, metrics, new_state, carry={"reconstruction": x_hat})

    def disc_loss_fn(self, params, batch, rng, ctx) -> LossOutput:
        g, dp = self.config.gan, params["disc"]
        x, x_hat = images_to_float(batch["image"]), ctx.carry["main"]["reconstruction"]

        logits = self.discriminator.apply({"params": dp}, jnp.concatenate([x, x_hat]))
        real, fake = jnp.split(logits, 2)
        return LossOutput(gan.discriminator_loss(real, fake, g.loss),
                          {"logits_real": jnp.mean(real), "logits_fake": jnp.mean(fake)})
