"""A small decoder-only language model of the shapes captions: the VLM configs' language model.

    python -m experiments.train --config configs/lm_shapes.py --workdir runs/lm_shapes
    python -m experiments.generate --workdir runs/lm_shapes --prompt "a small red"
    python -m experiments.train --config configs/lm_shapes.py:tiny --workdir /tmp/lm   # seconds, for tests

Variants (comma-separated): "" (default, CPU-sized: Llama-style, RMSNorm, SwiGLU, RoPE, grouped-query attention,
tied embeddings); "tiny"; "peer" (fixed sizes for comparing implementations: width 512, 8 layers, 8 heads, 2 KV
heads, head dim 64, SwiGLU 1408, vocab 8192, untied, sequence 256, batch 8, as ../shared/peers/llama_step.py).

Own text: --config.data.source=jsonl --config.data.path=FILE.jsonl ({"text": ...} lines; 1% held out), or
--config.data.source=tfds --config.data.tfds_name=NAME --config.data.text_key=text, or a weighted mixture:
--config.data.mixture='({"source": "shapes", "weight": 0.7}, {"source": "jsonl", "path": "x.jsonl", "weight": 0.3})'.
"""

from ml_collections import ConfigDict

from configs.common import run_config, tiny_run


def get_config(arg: str = "") -> ConfigDict:
    c = run_config("lm", total_steps=1500, batch_size=32, log_every=25, eval_every=500, checkpoint_every=500)
    c.optimizer = ConfigDict(dict(
        name="adamw", learning_rate=3e-3, schedule="cosine", warmup_steps=100, end_lr_fraction=0.05,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip_norm=1.0, freeze="", lr_mults=(),
        wd_exclude=".*(scale|bias|embedding)"))
    c.data = ConfigDict(dict(
        source="shapes",        # "shapes" (the captions) | "jsonl" | "tfds"; or a weighted `mixture` of entries
        seed=0, seq_len=128,
        docs_per_row=8,         # each row packs a window of this many documents (first fit; the rest dropped)
        vocab_size=384,         # embedding rows; the trained tokenizer holds at most this many (68 reserved)
        tokenizer="",           # a SentencePiece .model or a tokenizer.json; "" trains one (WORKDIR/tokenizer.model)
        mixture=(),             # ({"source": ..., "weight": w, ...}, ...)
        path="", text_key="text", holdout_fraction=0.01,                  # source="jsonl"
        tfds_name="", tfds_split="train", tfds_eval_split="validation", tfds_data_dir="",  # source="tfds"
        num_threads=2, prefetch=4))
    c.model = ConfigDict(dict(
        width=192, depth=4, num_heads=6, num_kv_heads=2, head_dim=0, mlp_dim=512, mlp="swiglu", mlp_bias=False,
        norm="rms", norm_eps=1e-6, norm_plus_one=False, qkv_bias=False, qk_norm=False,
        rope_base=10_000.0, rope_scaling=ConfigDict(dict(type="none")),
        attn_softcap=0.0, query_scale=0.0, sliding_window=0, global_every=0, post_norms=False,
        tie_embeddings=True, embed_scale=False, final_softcap=0.0,
        attention="xla",        # "xla" | "cudnn" (GPU, bf16) | "einsum"
        dtype="float32", remat="none", scan_unroll=1,
        loss_chunk=128,         # positions projected to the vocabulary at once in the loss
        z_loss=0.0))
    c.eval = ConfigDict(dict(
        num_docs=1000,          # held-out documents for eval/nll
        batch_size=32,          # rows per evaluation forward pass
        ngram_order=4, ngram_docs=20_000,
        num_samples=4096,       # sampled captions (the colour x shape distance needs thousands)
        temperature=1.0, max_new_tokens=64, show=6))
    for variant in filter(None, arg.split(",")):
        _apply_variant(c, variant)
    return c


def _apply_variant(c: ConfigDict, arg: str) -> None:
    if arg == "tiny":
        tiny_run(c)
        c.data.seq_len = 64
        c.data.docs_per_row = 4
        c.eval_every = 20  # one evaluation, at the end: it samples and fits the n-gram
        c.model.update(dict(width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64))
        c.eval.update(dict(num_docs=64, batch_size=16, ngram_docs=500, num_samples=32, max_new_tokens=24, show=2))
    elif arg == "peer":
        c.batch_size = 8
        c.data.seq_len = 256
        c.data.vocab_size = 8192
        c.data.docs_per_row = 16
        c.model.update(dict(width=512, depth=8, num_heads=8, num_kv_heads=2, head_dim=64, mlp_dim=1408,
                            tie_embeddings=False))
    else:
        raise ValueError(f"unknown variant {arg!r} for lm_shapes; use '', 'tiny', 'peer' (comma-separated)")
