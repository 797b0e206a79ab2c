"""One training step at the led-base-16384 shape, led-flax against transformers' PyTorch LED, in one run.

The released led-base-16384 architecture (d_model 768, 6 + 6 layers, 12 heads, ffn 3072, window 1024,
vocabulary 50,265, dropout 0.1), random weights, batch 1: 4,096 input tokens (the first global) and
256 label tokens, float32, AdamW with global-norm clipping. Ours is `train.step`'s jitted step
(donated state, one-device mesh); the reference is `LEDForConditionalGeneration` + `torch.optim.AdamW`.
Ours runs its scanned layers (`nn.scan`), with each `model.remat` setting (none | full | save_dots)
where asked, in float32 or bfloat16 compute (float32 params and AdamW); the reference runs plain or
with `gradient_checkpointing_enable()`. Each case runs in its own subprocess, so its peak resident
memory is its own; a case whose resident memory passes --memory-limit GiB is stopped and recorded so
(the machine has 24 GiB).

    python bench/train.py                    # 4k: both, ours in bf16 too; 16k: reference checkpointed, ours per remat
    python bench/train.py --skip-16k         # the 4k comparison only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

from led_flax.model.config import RELEASED  # noqa: E402

BASE = {**RELEASED["allenai/led-base-16384"], "dropout": 0.1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "decoder_start_token_id": 2}
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


def setup_ours(n, remat, dtype, scan=True):
    """Our jitted step at n tokens, with its fresh state, the batch and the one-device mesh."""
    from led_flax.train.cli import configure_xla
    configure_xla()  # as `led-flax train` does
    import jax

    from led_flax import LEDConfig
    from led_flax.parallel import sharding
    from led_flax.model.heads import model_for
    from led_flax.train import step as step_lib
    from led_flax.train.config import OptimizerConfig

    import jax.numpy as jnp
    model = model_for(LEDConfig(**BASE), "conditional_generation", remat=remat, dtype=jnp.dtype(dtype),
                      scan_layers=scan)
    opt = OptimizerConfig(learning_rate=3e-5, schedule="constant", weight_decay=0.01, max_grad_norm=1.0)
    tx = step_lib.optimizer(opt, 1000)
    mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])

    fresh = step_lib.fresh_state(model, tx, 0)
    shardings = step_lib.state_shardings(jax.eval_shape(fresh, jax.random.PRNGKey(0)), tx, mesh)
    state = jax.jit(fresh, out_shardings=shardings)(jax.random.PRNGKey(0))
    step = step_lib.make_train_step(model, tx, step_lib.schedule(opt, 1000), mesh, shardings, dropout=True)
    batch = step_lib.global_batch({k: v[None] for k, v in _batch(n).items()}, mesh)
    return step, state, batch, mesh


def run_ours(n, steps, remat, dtype, scan=True):
    step, state, batch, _ = setup_ours(n, remat, dtype, scan)
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


def run_reference(n, steps, remat, dtype, scan=True):
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    model = transformers.LEDForConditionalGeneration(transformers.LEDConfig(**BASE))
    if dtype != "float32":
        raise SystemExit("the reference runs in float32 here")
    if remat != "none":
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


def child(impl, n, steps, remat, dtype, scan):
    result = (run_ours if impl == "led-flax" else run_reference)(n, steps, remat, dtype, scan)
    result.update(impl=impl if scan else f"{impl} (unrolled layers)", tokens=n, remat=remat, dtype=dtype,
                  peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    result["tokens_per_s"] = (n + LABELS) / result["seconds"]
    print(json.dumps(result))


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**20
    except (OSError, StopIteration):
        return 0.0


def _run(impl, n, steps, remat, dtype, limit_gib, scan=True):
    """One case in a subprocess; its result, or {"stopped": why} when it passed the memory limit."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", impl, str(n), remat, dtype, str(int(scan)),
                             "--steps", str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    over = []

    def watch():
        while proc.poll() is None:
            rss = _rss_gib(proc.pid)
            if rss > limit_gib:
                over.append(rss)
                proc.kill()
                return
            time.sleep(0.2)
    threading.Thread(target=watch, daemon=True).start()
    out, err = proc.communicate()
    label = f"{impl} {n} tokens remat={remat} {dtype}"
    if over:
        print(f"  {label}: stopped at {over[0]:.1f} GiB resident (limit {limit_gib} GiB)", file=sys.stderr)
        return {"impl": impl, "tokens": n, "remat": remat, "dtype": dtype, "stopped": f"over {limit_gib} GiB"}
    if proc.returncode:
        sys.exit(f"{label} failed:\n{err[-3000:]}")
    r = json.loads(out.strip().splitlines()[-1])
    print(f"  {label}: {r['seconds']:.2f} s/step, peak {r['peak_rss_gib']:.2f} GiB", file=sys.stderr)
    return r


def _table(rows, ref):
    print(f"| step at {rows[0]['tokens']} + {LABELS} tokens | remat | compute | s/step | speed-up | tokens/s | "
          f"peak GiB | first step s | loss |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "stopped" in r:
            print(f"| {r['impl']} | {r['remat']} | {r['dtype']} | {r['stopped']} | | | | | |")
            continue
        speed_up = f"{ref['seconds'] / r['seconds']:.2f}x" if "seconds" in ref else "(reference stopped)"
        print(f"| {r['impl']} | {r['remat']} | {r['dtype']} | {r['seconds']:.2f} | {speed_up} | "
              f"{r['tokens_per_s']:.0f} | {r['peak_rss_gib']:.2f} | {r['first_step_s']:.1f} | {r['loss']:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first (best is kept)")
    parser.add_argument("--skip-16k", action="store_true")
    parser.add_argument("--remat-16k", nargs="+", default=["full", "save_dots", "none"],
                        choices=["none", "full", "save_dots"], help="our remat settings at 16k")
    parser.add_argument("--memory-limit", type=float, default=20.0, help="stop a case past this resident GiB")
    parser.add_argument("--unrolled", action="store_true", help="also our 4k float32 step with unrolled layers")
    parser.add_argument("--skip-4k", action="store_true")
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "TOKENS", "REMAT", "DTYPE", "SCAN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]), args.steps, args.child[2], args.child[3],
                     bool(int(args.child[4])))

    if not args.skip_4k:
        ref = _run("transformers", args.tokens, args.steps, "none", "float32", args.memory_limit)
        rows = [_run("led-flax", args.tokens, args.steps, "none", dtype, args.memory_limit)
                for dtype in ("float32", "bfloat16")]
        if args.unrolled:
            rows.append(_run("led-flax", args.tokens, args.steps, "none", "float32", args.memory_limit, scan=False))
        _table([ref] + rows, ref)
    if not args.skip_16k:
        ref16 = _run("transformers", 16384, 1, "full", "float32", args.memory_limit)
        print()
        _table([ref16] + [_run("led-flax", 16384, 1, remat, "float32", args.memory_limit)
                          for remat in args.remat_16k], ref16)


if __name__ == "__main__":
    main()
