"""CLIP (softmax contrastive loss) on the embedded shapes dataset.

    python -m experiments.train --config configs/clip_shapes.py --workdir runs/clip_shapes

Same data, towers and variants as configs/siglip_shapes.py ("tiny", "lit", "B/16", ...); differences:
the symmetric softmax cross-entropy, t' initialized at log(1/0.07) and clamped at log 100, no bias, and a
causal text tower pooled at the EOS token (as in CLIP). With a sharded batch use loss_impl="all_gather":
the softmax normalizes over the whole batch, so every device gathers all embeddings.
"""

from configs import siglip_shapes


def get_config(arg: str = ""):
    c = siglip_shapes.get_config(arg)
    c.model.loss = "softmax"
    c.model.loss_impl = "all_gather" if c.model.loss_impl == "ring" else c.model.loss_impl
    c.model.text.causal = True
    c.model.text.pool = "eos"
    return c
