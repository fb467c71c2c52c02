"""Encode a dataset split to discrete code grids with a trained tokenizer run (VQ-VAE, VQ-GAN, dVAE),
for the autoregressive stage (DALL-E / Chameleon-style transformers train on these codes).

    python -m experiments.tokenize --config configs/vqgan_shapes.py --workdir runs/vqgan_shapes \
        [--split train] [--num_examples 20000] [--out FILE]

Writes FILE (default WORKDIR/tokens/<split>.npz): `codes` int16/int32 [N, h, w], `index` (the
example's index in the split), `caption` (its text), and `step`/`codebook_size` of the tokenizer.
An existing file is never overwritten.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from experiments.common import parse
from jvlm.config import ConfigError, check_data_source


def _flags(p):
    p.add_argument("--workdir", required=True, help="the tokenizer run's workdir (its newest checkpoint is used)")
    p.add_argument("--split", default="train")
    p.add_argument("--num_examples", type=int, default=None, help="default: the whole split")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--out", default=None, help="default: WORKDIR/tokens/<split>.npz")


def main(argv=None) -> None:
    args, config = parse(__doc__, _flags, argv)
    from jvlm.data import shapes
    from jvlm.eval.image_tokenizer import ImageTokenizer

    try:
        check_data_source(config, ("shapes",), "experiments.tokenize")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)
    out = args.out or os.path.join(args.workdir, "tokens", f"{args.split}.npz")
    if os.path.exists(out):
        sys.exit(f"error: {out} exists; remove it or pass --out to write elsewhere (codes are never overwritten)")
    try:
        tok = ImageTokenizer.load(args.workdir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    source = shapes.ShapesSource(args.split, image_size=tok.image_size, seed=config.data.seed)
    n = len(source) if args.num_examples is None else min(args.num_examples, len(source))
    codes, captions, t0 = [], [], time.time()
    for start in range(0, n, args.batch_size):
        rows = [source[i] for i in range(start, min(start + args.batch_size, n))]
        codes.append(tok.tokenize(np.stack([r["image"] for r in rows]), args.batch_size))
        captions += [r["caption"] for r in rows]
        done = start + len(rows)
        rate = done / max(time.time() - t0, 1e-9)
        print(f"[tokenize] {done}/{n} ({100 * done // n}%) | {rate:.0f} images/s | ETA {(n - done) / rate:.0f}s",
              file=sys.stderr, flush=True)
    codes = np.concatenate(codes)
    dtype = np.int16 if tok.codebook_size <= np.iinfo(np.int16).max else np.int32
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".partial.npz"
    np.savez(tmp, codes=codes.astype(dtype), index=np.arange(n), caption=np.array(captions),
             step=tok.step, codebook_size=tok.codebook_size)
    os.replace(tmp, out)  # a killed run leaves no half-written file under the final name
    print(f"wrote {out}: {n} code grids {codes.shape[1]}x{codes.shape[2]} of {tok.codebook_size} codes "
          f"(tokenizer step {tok.step})")


if __name__ == "__main__":
    from jvlm import cpu_flags

    cpu_flags.apply()  # before JAX starts its CPU backend; see jvlm/cpu_flags.py
    main()
