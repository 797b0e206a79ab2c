"""Generation, led-flax against transformers' `generate`, in one run, on the same weights.

The led-base-16384 shape (d_model 768, 6+6 layers, 12 heads, vocab 50265, window 1024) with random
weights, float32:
  (a) one 4,096-token document, greedy and beam 4, exactly 128 new tokens;
  (b) a batch of 4 documents of 2,048 tokens, greedy, exactly 64 new tokens.
Reported: seconds (compilation excluded), generated tokens/s, per-token decode latency (time after
the encoder, per step), and for led-flax the compile time cold (empty cache) and warm (a new process
reading JAX's persistent compilation cache). Each implementation runs in its own subprocess.

    python bench/generate.py

--variants adds rows for led-flax's inference options on the same weights, each in its own process,
against the reference's float32 in the same run: compute dtypes (bf16, f16), weight-only quantization
(int8, int4, nf4; `led_flax.model.quantize`, its default spec: int8 embedding/LM head, bfloat16 position
tables) and the int8 cross-attention cache (+kv8). Per variant: seconds, decode ms/step, encoder
seconds, resident parameter MB, the process's peak RSS, the speed-up, and the share of the generated
ids equal to our float32's.

    python bench/generate.py --cases a-beam4 --variants f32 int8 int8+kv8 int4 nf4 bf16 f16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from led_flax.model.config import RELEASED  # noqa: E402

BASE = {**RELEASED["allenai/led-base-16384"], "dropout": 0.0}
CASES = {  # name: (batch, tokens, num_beams, new tokens)
    "a-greedy": (1, 4096, 1, 128),
    "a-beam4": (1, 4096, 4, 128),
    "b-greedy": (4, 2048, 1, 64),
}


def make_checkpoint(directory):
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    transformers.LEDForConditionalGeneration(transformers.LEDConfig(**BASE)).save_pretrained(directory)


def _inputs(batch, n):
    import numpy as np
    rng = np.random.default_rng(0)
    ids = rng.integers(3, BASE["vocab_size"], (batch, n))
    ids[:, 0], ids[:, -1] = 0, 2
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    return ids, np.ones_like(ids), glob


VARIANTS = {  # name: (compute dtype, quantization scheme or None, cross cache)
    "f32": ("float32", None, "float"), "bf16": ("bfloat16", None, "float"), "f16": ("float16", None, "float"),
    "int8": ("float32", "int8", "float"), "int8+kv8": ("float32", "int8", "int8"),
    "int4": ("float32", "int4", "float"), "nf4": ("float32", "nf4", "float"),
}


def run_ours(directory, cases, cache_dir, repeats, variant="f32"):
    t_start = time.perf_counter()
    import jax

    from led_flax import convert
    from led_flax.decoding.generation import generate
    from led_flax.model.quantize import QuantizeSpec, param_bytes
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    dtype, scheme, cross_cache = VARIANTS[variant]
    loaded = convert.load(directory).quantized(QuantizeSpec(scheme) if scheme else None).with_compute(
        dtype, cross_cache)
    model, params = loaded.module, jax.device_put(loaded.params)
    encode = jax.jit(lambda p, i, a, g: model.apply({"params": p}, i, a, g, num_global_slots=1,
                                                    method="encode").last_hidden_state)
    out = {"load_s": time.perf_counter() - t_start, "param_mb": param_bytes(params) / 1e6}
    for name in cases:
        b, n, beams, new = CASES[name]
        ids, am, glob = _inputs(b, n)
        kw = dict(num_beams=beams, max_new_tokens=new, min_new_tokens=new)
        t0 = time.perf_counter()
        seqs = generate(model, params, ids, am, glob, **kw).sequences
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            seqs = generate(model, params, ids, am, glob, **kw).sequences
            times.append(time.perf_counter() - t0)
        encode(params, ids, am, glob).block_until_ready()
        t0 = time.perf_counter()
        encode(params, ids, am, glob).block_until_ready()
        enc_s = time.perf_counter() - t0
        sec = min(times)
        out[name] = {"seconds": sec, "first_call_s": first, "compile_s": first - sec, "encoder_s": enc_s,
                     "new_tokens": int(seqs.shape[1] - 1), "ids": seqs[:, :12].tolist(),
                     "all_ids": seqs.tolist()}
    out["process_s"] = time.perf_counter() - t_start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_reference(directory, cases, repeats):
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    model = transformers.LEDForConditionalGeneration.from_pretrained(directory).eval()
    out = {}
    for name in cases:
        b, n, beams, new = CASES[name]
        ids, am, glob = (torch.tensor(x) for x in _inputs(b, n))
        kw = dict(num_beams=beams, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=am, global_attention_mask=glob, **kw)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                seqs = model.generate(input_ids=ids, attention_mask=am, global_attention_mask=glob, **kw)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.led.encoder(input_ids=ids, attention_mask=am, global_attention_mask=glob)
            enc_s = time.perf_counter() - t0
        out[name] = {"seconds": min(times), "encoder_s": enc_s, "new_tokens": int(seqs.shape[1] - 1),
                     "ids": seqs[:, :12].tolist()}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _child(args):
    cases = args.cases
    if args.child == "reference":
        result = run_reference(args.ckpt, cases, args.repeats)
    else:
        result = run_ours(args.ckpt, cases, args.cache, args.repeats, args.child_variant)
    print(json.dumps(result))


def _spawn(kind, ckpt, cache, cases, repeats, variant="f32"):
    cmd = [sys.executable, __file__, "--child", kind, "--ckpt", ckpt, "--cache", cache, "--repeats", str(repeats),
           "--child-variant", variant, "--cases", *cases]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if r.returncode:
        sys.exit(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=[], choices=list(VARIANTS),
                        help="also run these led-flax variants (rows against the reference's float32)")
    parser.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--child-variant", default="f32", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)

    work = tempfile.mkdtemp(prefix="led-bench-")
    ckpt, cache = os.path.join(work, "hf"), os.path.join(work, "jax-cache")
    make_checkpoint(ckpt)
    cold = _spawn("ours", ckpt, cache, args.cases, args.repeats)
    warm = _spawn("ours", ckpt, cache, args.cases, args.repeats)  # same cache: compilation read back
    ref = _spawn("reference", ckpt, cache, args.cases, args.repeats)

    print("| case | led-flax s | transformers s | led-flax tok/s | transformers tok/s | speed-up | "
          "led-flax ms/token | transformers ms/token | compile cold s | compile warm s | same ids |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in args.cases:
        o, r = warm[name], ref[name]
        b = CASES[name][0]
        tok_o, tok_r = b * o["new_tokens"] / o["seconds"], b * r["new_tokens"] / r["seconds"]
        lat_o = 1000 * (o["seconds"] - o["encoder_s"]) / o["new_tokens"]
        lat_r = 1000 * (r["seconds"] - r["encoder_s"]) / r["new_tokens"]
        print(f"| {name} | {o['seconds']:.2f} | {r['seconds']:.2f} | {tok_o:.1f} | {tok_r:.1f} | "
              f"{tok_o / tok_r:.2f}x | {lat_o:.1f} | {lat_r:.1f} | {cold[name]['compile_s']:.1f} | "
              f"{warm[name]['compile_s']:.1f} | {o['ids'] == r['ids']} |")
    if args.variants:
        _variant_rows(args, ckpt, cache, warm, ref)
    print(f"\nwarm start: a new process loaded the checkpoint in {warm['load_s']:.1f} s and returned its first "
          f"result {warm['load_s'] + warm[args.cases[0]]['first_call_s']:.1f} s after starting; cold: "
          f"{cold['load_s'] + cold[args.cases[0]]['first_call_s']:.1f} s")


def _agreement(a, b) -> float:
    """The share of generated ids (the start token left out) equal at the same place."""
    import numpy as np
    a, b = np.asarray(a)[:, 1:], np.asarray(b)[:, 1:]
    n = min(a.shape[1], b.shape[1])
    return float((a[:, :n] == b[:, :n]).mean())


def _variant_rows(args, ckpt, cache, f32, ref):
    runs = {v: f32 if v == "f32" else _spawn("ours", ckpt, cache, args.cases, args.repeats, v) for v in args.variants}
    print("\n| case | variant | s | speed-up vs transformers f32 | decode ms/step | encoder s | params MB | "
          "peak RSS MB | ids equal to f32 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.cases:
        r = ref[name]
        print(f"| {name} | transformers f32 | {r['seconds']:.2f} | 1.00x | "
              f"{1000 * (r['seconds'] - r['encoder_s']) / r['new_tokens']:.1f} | {r['encoder_s']:.2f} | | "
              f"{ref['peak_rss_mb']:.0f} | |")
        for v, o in runs.items():
            c = o[name]
            print(f"| {name} | {v} | {c['seconds']:.2f} | {r['seconds'] / c['seconds']:.2f}x | "
                  f"{1000 * (c['seconds'] - c['encoder_s']) / c['new_tokens']:.1f} | {c['encoder_s']:.2f} | "
                  f"{o['param_mb']:.0f} | {o['peak_rss_mb']:.0f} | {_agreement(c['all_ids'], f32[name]['all_ids']):.1%} |")


if __name__ == "__main__":
    main()
