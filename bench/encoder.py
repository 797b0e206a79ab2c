"""Encoder forward pass, led-flax against transformers' PyTorch LED, in one run.

The led-base-16384 shape (d_model 768, 6 layers, 12 heads, ffn 3072, window 1024), random weights,
one global token (the first), float32, batch 1. Each (implementation, length) runs in its own
subprocess so that its peak resident memory is its own.

    python bench/encoder.py                 # 4,096 and 16,384 tokens
    python bench/encoder.py --lengths 4096  # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from led_flax.model.config import RELEASED  # noqa: E402

BASE = {**RELEASED["allenai/led-base-16384"], "decoder_layers": 1, "dropout": 0.0}


def inputs(n):
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(3, BASE["vocab_size"], (1, n))
    glob = np.zeros((1, n), np.int64)
    glob[0, 0] = 1
    return ids, np.ones((1, n), np.int64), glob


def run_ours(n, repeats):
    import jax
    import jax.numpy as jnp

    from led_flax import LEDConfig, LEDModel, init_params
    cfg = LEDConfig(**BASE)
    model = LEDModel(cfg)
    params = init_params(model, jax.random.PRNGKey(0))
    ids, am, glob = inputs(n)
    encode = jax.jit(lambda p, i, a, g: model.apply({"params": p}, i, a, g, num_global_slots=1,
                                                    method="encode").last_hidden_state)
    args = (params, jnp.asarray(ids), jnp.asarray(am), jnp.asarray(glob))
    t0 = time.perf_counter()
    compiled = encode.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    compiled(*args).block_until_ready()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "compile_s": compile_s}


def run_reference(n, repeats):
    import torch
    import transformers
    from transformers.models.led.modeling_led import LEDEncoder
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    encoder = LEDEncoder(transformers.LEDConfig(**BASE)).eval()
    return {"seconds": time_reference(encoder, n, repeats), "threads": torch.get_num_threads()}


def time_reference(encoder, n, repeats) -> float:
    """The best of `repeats` calls of a transformers LED encoder on `inputs(n)`, after a warm-up."""
    import torch
    ids, am, glob = (torch.tensor(x, dtype=torch.long) for x in inputs(n))
    with torch.inference_mode():
        encoder(input_ids=ids, attention_mask=am, global_attention_mask=glob)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoder(input_ids=ids, attention_mask=am, global_attention_mask=glob)
            times.append(time.perf_counter() - t0)
    return min(times)


def child(impl, n, repeats):
    result = (run_ours if impl == "led-flax" else run_reference)(n, repeats)
    result.update(impl=impl, tokens=n, peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    result["tokens_per_s"] = n / result["seconds"]
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.repeats)

    rows = {}
    for n in args.lengths:
        for impl in ("led-flax", "transformers"):
            out = subprocess.run([sys.executable, __file__, "--child", impl, str(n), "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if out.returncode:
                sys.exit(f"{impl} at {n} tokens failed:\n{out.stderr[-3000:]}")
            rows[impl, n] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {impl:12s} {n:6d} tokens: {rows[impl, n]['seconds']:.2f} s", file=sys.stderr)

    print("| tokens | led-flax s | transformers s | led-flax tok/s | transformers tok/s | speed-up | "
          "led-flax peak GiB | transformers peak GiB | memory ratio | led-flax compile s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.lengths:
        a, r = rows["led-flax", n], rows["transformers", n]
        print(f"| {n} | {a['seconds']:.2f} | {r['seconds']:.2f} | {a['tokens_per_s']:.0f} | {r['tokens_per_s']:.0f} | "
              f"{r['seconds'] / a['seconds']:.2f}x | {a['peak_rss_gib']:.2f} | {r['peak_rss_gib']:.2f} | "
              f"{a['peak_rss_gib'] / r['peak_rss_gib']:.2f} | {a['compile_s']:.1f} |")
    if len(args.lengths) > 1:
        lo, hi = min(args.lengths), max(args.lengths)
        for impl in ("led-flax", "transformers"):
            growth = rows[impl, hi]["seconds"] / rows[impl, lo]["seconds"]
            print(f"\n{impl}: time x{growth:.2f} for x{hi / lo:.0f} tokens", end="")
        print()


if __name__ == "__main__":
    main()
