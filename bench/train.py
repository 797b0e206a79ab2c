"""One training step at the led-base-16384 shape, led-flax against transformers' PyTorch LED, in one run.

The released led-base-16384 architecture (d_model 768, 6 + 6 layers, 12 heads, ffn 3072, window 1024,
vocabulary 50,265, dropout 0.1), random weights, batch 1: 4,096 input tokens (the first global) and
256 label tokens, float32, AdamW with global-norm clipping. Ours is `train.step`'s jitted step
(donated state, one-device mesh); the reference is `LEDForConditionalGeneration` + `torch.optim.AdamW`.
Then the peak memory of our 16,384-token step with gradient checkpointing (`nn.remat` per layer).
Each case runs in its own subprocess, so its peak resident memory is its own.

    python bench/train.py                    # 4,096-token step both ways, then our 16,384-token step
    python bench/train.py --skip-16k         # the comparison only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
            decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, attention_window=1024,
            max_encoder_position_embeddings=16384, max_decoder_position_embeddings=1024, dropout=0.1,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
LABELS = 256


def _batch(n):
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(3, BASE["vocab_size"], (1, n)).astype(np.int32)
    ids[0, -1] = 2
    glob = np.zeros((1, n), np.int32)
    glob[0, 0] = 1
    labels = rng.integers(3, BASE["vocab_size"], (1, LABELS)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones((1, n), np.int32), "global_attention_mask": glob,
            "labels": labels}


def run_ours(n, steps, remat):
    from train.cli import configure_xla
    configure_xla()  # as `led-flax train` does
    import jax

    from led_flax import LEDConfig, sharding
    from led_flax.modeling import model_for
    from train import step as step_lib
    from train.config import OptimizerConfig

    model = model_for(LEDConfig(**BASE), "conditional_generation", gradient_checkpointing=remat)
    opt = OptimizerConfig(learning_rate=3e-5, schedule="constant", weight_decay=0.01, max_grad_norm=1.0)
    tx = step_lib.optimizer(opt, 1000)
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])

    fresh = step_lib.fresh_state(model, tx, 0)
    shardings = step_lib.state_shardings(jax.eval_shape(fresh, jax.random.PRNGKey(0)), tx, mesh)
    state = jax.jit(fresh, out_shardings=shardings)(jax.random.PRNGKey(0))
    step = step_lib.make_train_step(model, tx, step_lib.schedule(opt, 1000), mesh, shardings, dropout=True)
    batch = step_lib.global_batch({k: v[None] for k, v in _batch(n).items()}, mesh)
    t0 = time.perf_counter()
    state, m = step(state, batch)  # compiles
    float(m["loss"])
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        float(m["loss"])
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "first_step_s": first, "loss": float(m["loss"])}


def run_reference(n, steps, remat):
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.LEDForConditionalGeneration(transformers.LEDConfig(**BASE))
    if remat:
        model.gradient_checkpointing_enable()
    model.train()
    b = {k: torch.tensor(v, dtype=torch.long) for k, v in _batch(n).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    step()  # warm-up (allocates the optimizer state)
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "first_step_s": first, "loss": loss, "threads": torch.get_num_threads()}


def child(impl, n, steps, remat):
    result = (run_ours if impl == "led-flax" else run_reference)(n, steps, remat)
    result.update(impl=impl, tokens=n, remat=remat,
                  peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    result["tokens_per_s"] = (n + LABELS) / result["seconds"]
    print(json.dumps(result))


def _run(impl, n, steps, remat):
    out = subprocess.run([sys.executable, __file__, "--child", impl, str(n), str(int(remat)), "--steps", str(steps)],
                         capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if out.returncode:
        sys.exit(f"{impl} at {n} tokens failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {impl:12s} {n:6d} tokens{' (remat)' if remat else ''}: {r['seconds']:.2f} s/step, "
          f"peak {r['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (best is kept)")
    parser.add_argument("--skip-16k", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "TOKENS", "REMAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.steps, bool(int(args.child[2])))

    ours = _run("led-flax", args.tokens, args.steps, False)
    ref = _run("transformers", args.tokens, args.steps, False)
    print(f"| step at {args.tokens} + {LABELS} tokens | s/step | tokens/s | peak GiB | first step s | loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in (ours, ref):
        print(f"| {r['impl']} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | "
              f"{r['first_step_s']:.1f} | {r['loss']:.3f} |")
    print(f"\nspeed-up {ref['seconds'] / ours['seconds']:.2f}x; peak memory ratio "
          f"{ours['peak_rss_gib'] / ref['peak_rss_gib']:.2f}")
    if not args.skip_16k:
        big = _run("led-flax", 16384, 1, True)
        print(f"\nled-flax 16384 + {LABELS} tokens with gradient checkpointing: {big['seconds']:.1f} s/step, "
              f"peak {big['peak_rss_gib']:.2f} GiB (first step with compilation {big['first_step_s']:.1f} s)")


if __name__ == "__main__":
    main()
