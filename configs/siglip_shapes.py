"""SigLIP (sigmoid loss) on the embedded shapes dataset: the quickstart default.

    python -m experiments.train --config configs/siglip_shapes.py --workdir runs/siglip_shapes
    python -m experiments.train --config configs/siglip_shapes.py:tiny --workdir /tmp/tiny   # < 1 s/step on CPU

Variants (comma-separated, they compose): "" (default, CPU-sized); "tiny" (a few steps, for tests and
debugging); "lit" (LiT: image tower locked and loaded from --config.init_from.checkpoint=RUN);
"peer" (fixed sizes for comparing implementations: 64 px, patch 8, width 256, depth 6, batch 64);
"judge32" (the 32 px diffusion configs' judge: 32 px images, patch 4, twice the steps; ~12 minutes);
"B/16", "L/16", "So400m/14" (published SigLIP sizes, for pods).

    python -m experiments.train --config configs/siglip_shapes.py:lit --workdir runs/lit \
        --config.init_from.checkpoint=runs/siglip_shapes
"""

from ml_collections import ConfigDict

from configs.common import run_config, tiny_run
from jvlm.data import shapes
from jvlm.models import presets


def get_config(arg: str = "") -> ConfigDict:
    # Sized for the 10-minute CPU quickstart (2 cores): ~143k examples at 280-440 examples/s. Batches of 128
    # take twice the updates of 256 for the same examples, and shape is learned from updates (at 560 x 256
    # the zero-shot top-1 is 0.73, at 1120 x 128 0.80); the negatives that separate colours are plentiful
    # either way.
    c = run_config("contrastive", total_steps=1120, batch_size=128, log_every=20, eval_every=280,
                   checkpoint_every=280)

    c.optimizer = ConfigDict(dict(
        name="adamw", learning_rate=2e-3, schedule="cosine", warmup_steps=100, end_lr_fraction=0.0,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-4, grad_clip_norm=1.0,
        freeze="",                                           # regex over param paths, e.g. "img/.*" (LiT)
        lr_mults=(("logit_scale|logit_bias", 10.0),),        # (regex, x) pairs: t' and b move faster
        wd_exclude=".*(bias|scale|logit_scale|logit_bias|pos_embedding|probe|cls)"))

    c.data = ConfigDict(dict(
        source="shapes",     # "shapes" (embedded, procedural) | "folder" | "tfds"
        seed=0, image_size=64, max_text_len=48, vocab_size=256,
        tokenizer="",        # path to a SentencePiece .model; "" trains one on the captions (WORKDIR/tokenizer.model)
        flip=True,           # caption-consistent horizontal flips (shapes only: other captions are not rewritten)
        # Hard negatives (NegCLIP): per caption, this many copies with one word swapped for another of its
        # group, which the loss treats as negatives of that image only. 0 turns them off.
        hard_negatives=0,
        swap_groups=(" ".join(shapes.SHAPES),),   # space-separated word groups
        path="",             # source="folder": a .jsonl of {"image", "caption"} or a folder of images + .txt
        tfds_name="", tfds_split="train", tfds_data_dir="", caption_key="caption",  # source="tfds"
        num_threads=2, prefetch=4))

    c.model = ConfigDict(dict(
        name="two_tower", loss="sigmoid",
        loss_impl="dense",   # "dense" (XLA partitions it) | "ring" | "all_gather" (explicit shard_map collectives)
        embed_dim=96, image_head=True,   # image_head=False: MAP-pooled features are the embedding
        dtype="float32", remat="none",
        # A conv stem ("early convolutions") learns shapes far faster than a linear patch embedding on
        # short CPU schedules; the presets keep big_vision's plain patch embedding.
        image=ConfigDict(dict(patch_size=8, width=96, depth=3, num_heads=3, mlp_dim=192, pool="map",
                              posemb="learn", stem="conv")),
        text=ConfigDict(dict(width=96, depth=2, num_heads=3, mlp_dim=192, causal=False, pool="eos"))))

    # Zero-shot prompts over all colour x shape classes. The templates enumerate the objects' sizes, which the
    # towers bind to colour and shape ("a small red circle" and "a large red circle" are far apart), so a
    # class scores its best-matching template ("max"); "mean_embedding" is CLIP's prompt ensembling, which
    # averages the three sizes into a prompt no image matches (both are logged).
    c.eval = ConfigDict(dict(num_examples=1024, batch_size=256, template_reduce="max", templates=(
        "a small {}", "a medium {}", "a large {}", "a single small {}", "a single medium {}", "a single large {}")))

    for variant in filter(None, arg.split(",")):  # variants compose: "tiny,lit"
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "lit":  # LiT: a pretrained, locked image tower (and its head); the text tower learns
        c.optimizer.freeze = "img/.*|img_proj/.*"
        c.init_from.params = "main/(img|img_proj)/.*"
        c.init_from.required = True
    elif arg == "tiny":
        tiny_run(c)
        c.data.image_size = 32
        c.model.embed_dim = 32
        c.model.image = ConfigDict(dict(patch_size=8, width=32, depth=1, num_heads=2, mlp_dim=64, pool="map",
                                        posemb="learn", stem="patch"))
        c.model.text = ConfigDict(dict(width=32, depth=1, num_heads=2, mlp_dim=64, causal=False, pool="eos"))
        c.eval.num_examples = 64
        c.eval.batch_size = 32
    elif arg == "judge32":  # judges 32 px generators. A 64 px judge would see them upsampled, a domain it never
        # trained on; patch 4 keeps the 8x8 tokens. Twice the steps: zero-shot top-1 0.95 against 0.77 (unseen
        # combinations 0.85 against 0.64); a judge is trained once and should be as sure as we can afford.
        c.data.image_size = 32
        c.model.image.patch_size = 4
        c.total_steps, c.eval_every, c.checkpoint_every = 2240, 560, 560
    elif arg == "peer":  # fixed sizes for comparisons against other implementations of the same model
        c.batch_size = 64
        c.data.image_size = 64
        c.data.max_text_len = 32
        c.data.vocab_size = 8192  # the embedding table's rows, whatever the trained tokenizer's size
        c.model.embed_dim = 256
        c.model.image = ConfigDict(dict(patch_size=8, width=256, depth=6, num_heads=4, mlp_dim=1024, pool="map",
                                        posemb="learn", stem="patch"))
        c.model.text = ConfigDict(dict(width=256, depth=6, num_heads=4, mlp_dim=1024, causal=False, pool="eos"))
        c.optimizer.name = "adamw"
    elif arg in presets.SIGLIP:  # published SigLIP sizes, for pods (and for jax.eval_shape on a laptop)
        size, patch = presets.parse(arg)
        c.data.image_size = presets.SIGLIP[arg]["image_size"]
        c.data.max_text_len = presets.SIGLIP[arg]["max_text_len"]
        c.data.vocab_size = presets.SIGLIP[arg]["vocab_size"]
        c.model.embed_dim = size["width"]
        c.model.image_head = False
        c.model.image = ConfigDict(dict(patch_size=patch, pool="map", posemb="learn", stem="patch", **size))
        c.model.text = ConfigDict(dict(causal=False, pool="last", **size))
        c.model.dtype = "bfloat16"
        c.batch_size = 32_768
        c.model.loss_impl = "ring"
    elif arg:
        raise ValueError(f"unknown variant {arg!r} for siglip_shapes; use '', 'tiny', "
                         f"'lit', 'peer', 'judge32', or a preset: {', '.join(presets.SIGLIP)}")
