"""Generate text with a trained language-model run.

    python -m experiments.generate --workdir runs/lm_shapes --prompt "a small red" --prompt "two"
        [--num 4] [--max_new_tokens 64] [--temperature 1.0] [--top_k 0] [--top_p 1.0] [--seed 0]

The model is the run's own (WORKDIR/config.json, its newest checkpoint, EMA parameters when kept); decoding is
one compiled program (prefill + a while-loop over a KV cache). Prints each prompt with its continuations, then one
JSON line: compile time and decode tokens/s after compilation. Temperature 0 is greedy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="the lm run's workdir")
    p.add_argument("--prompt", action="append", default=[], help="repeatable; default: one empty prompt (BOS)")
    p.add_argument("--num", type=int, default=1, help="continuations per prompt")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.num < 1 or args.max_new_tokens < 1:
        sys.exit("error: --num and --max_new_tokens must be at least 1")
    if args.temperature == 0 and args.num > 1:
        sys.exit("error: greedy decoding (--temperature 0) gives one continuation; pass --temperature > 0 with --num")

    from jvlm.eval.language_model import LanguageModel
    from jvlm.models.generation import Sampling

    try:
        lm = LanguageModel.load(args.workdir)
        s = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, stop_ids=(lm.tokenizer.eos_id,), pad_id=lm.tokenizer.pad_id)
        s.check()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    prompts = args.prompt or [""]
    ids = [lm.encode(q) for q in prompts for _ in range(args.num)]
    start = time.perf_counter()
    lm.generate_ids(ids, s, args.seed)  # compiles (and runs once)
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    out = lm.generate_ids(ids, s, args.seed)
    seconds = time.perf_counter() - start
    for i, q in enumerate(prompts):
        print(f"prompt: {q!r}")
        for row in out[i * args.num:(i + 1) * args.num]:
            print(f"  -> {q}{' ' if q else ''}{lm.tokenizer.decode(row)}")
    generated = sum(len(r) for r in out)
    print(json.dumps({"step": lm.step, "compile_and_first_s": round(compiled, 2), "decode_s": round(seconds, 3),
                      "tokens_per_s": round(generated / seconds, 1)}))


if __name__ == "__main__":
    main()
