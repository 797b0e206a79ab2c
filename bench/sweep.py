"""A sweep over a setting that changes only numbers: 5 length penalties over the same batch, led-flax
against a baseline revision of itself, in one run, each in its own process.

Before issue 24 the whole GenerationConfig keyed the jitted program, so each length penalty compiled
its own; now the numbers are traced arguments (`led_flax.decoding.settings`) and the sweep compiles
one program. The led-base-16384 shape (6+6 layers, d_model 768, vocab 50265, window 1024) with random
weights, float32; a batch of 2 documents of 2,048 tokens, beam 4, exactly 32 new tokens per call
(`max_new_tokens` = `min_new_tokens`), so every call does the same work. No persistent compilation
cache: each process starts cold. Reported per revision: XLA compilations (jax.monitoring's events),
their seconds, and the sweep's total seconds; and the ratios.

    python bench/sweep.py --baseline 4174bca

The baseline's sources are exported with `git archive` into a temporary folder that the child puts
first on its path (it checks that its `led_flax` came from there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VALUES = (0.6, 0.8, 1.0, 1.5, 2.0)
BATCH, TOKENS, BEAMS, NEW = 2, 2048, 4, 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(source: str | None) -> dict:
    if source:
        sys.path.insert(0, source)
    import jax
    import jax.numpy as jnp
    import numpy as np

    import led_flax
    from led_flax import LEDConfig, generate, init_params, model_for
    from led_flax.model.config import RELEASED
    if source:
        assert os.path.abspath(led_flax.__file__).startswith(os.path.abspath(source)), led_flax.__file__
    compiles = {"count": 0, "seconds": 0.0}

    def on_duration(event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles["count"] += 1
            compiles["seconds"] += duration
    jax.monitoring.register_event_duration_secs_listener(on_duration)

    config = LEDConfig.from_hf({**RELEASED["allenai/led-base-16384"], "dropout": 0.0})
    model = model_for(config)
    params = jax.jit(lambda key: init_params(model, key))(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.vocab_size, (BATCH, TOKENS))
    ids[:, 0], ids[:, -1] = 0, 2
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    jax.block_until_ready(params)
    before = dict(compiles)
    rows, start = [], time.perf_counter()
    for value in VALUES:
        t = time.perf_counter()
        out = generate(model, params, ids, np.ones_like(ids), glob, num_beams=BEAMS, max_new_tokens=NEW,
                       min_new_tokens=NEW, length_penalty=value)
        rows.append({"length_penalty": value, "seconds": time.perf_counter() - t,
                     "scores": [float(s) for s in jnp.asarray(out.scores)]})
    return {"compiles": compiles["count"] - before["count"], "compile_s": compiles["seconds"] - before["seconds"],
            "total_s": time.perf_counter() - start, "rows": rows}


def _run(source: str | None) -> dict:
    args = [sys.executable, os.path.abspath(__file__), "--child"] + ([source] if source else [])
    r = subprocess.run(args, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if r.returncode:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--baseline", default="4174bca", help="the revision to compare with (git archive)")
    p.add_argument("--child", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child or None)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        before = _run(tmp)
    after = _run(None)
    print(f"5 length penalties {VALUES}, batch {BATCH} x {TOKENS} tokens, beam {BEAMS}, {NEW} new tokens\n")
    print("| revision | compilations | compile s | sweep s | per value s |")
    print("|---|---:|---:|---:|---|")
    for name, r in ((f"baseline {args.baseline}", before), ("this checkout", after)):
        per = ", ".join(f"{row['seconds']:.1f}" for row in r["rows"])
        print(f"| {name} | {r['compiles']} | {r['compile_s']:.1f} | {r['total_s']:.1f} | {per} |")
    same = all(abs(a - b) <= 1e-4 * abs(a) for x, y in zip(before["rows"], after["rows"])
               for a, b in zip(x["scores"], y["scores"]))
    print(f"\nsweep time: {before['total_s'] / after['total_s']:.2f}x faster; compilations "
          f"{before['compiles']} -> {after['compiles']}; same scores (rtol 1e-4): {same}")


if __name__ == "__main__":
    main()
