"""Long documents: the encoder at 16k, 32k and 64k tokens on one device, the per-device memory of the
64k encoder split over 8 devices' sequence axis, and the reference beside it, in one run.

The led-base-16384 shape (d_model 768, 6 encoder layers, 12 heads, ffn 3072, window 1024), random
weights saved once by transformers (one decoder layer: only the encoder runs), its position table
extended by tiling (`led-flax convert --max-encoder-positions`) to 65,536 rows for ours and to 32,768
for the reference (exported back to HF, which transformers loads). One global token (the first),
float32, batch 1. Each run is its own subprocess, so its peak resident memory (ru_maxrss) is its own.
The 8-device figure is XLA's `memory_analysis()` of the compiled programs (temporary bytes per device)
on 8 fake CPU devices, against the same for the one-device program.

    python bench/long.py
    python bench/long.py --lengths 16384 32768 --skip-reference   # a quicker look
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from encoder import BASE  # noqa: E402 - bench/encoder.py's shape and document
from encoder import inputs as _encoder_inputs  # noqa: E402
from encoder import time_reference  # noqa: E402


def _inputs(n):
    return tuple(x.astype("int32") for x in _encoder_inputs(n))


def _encode(work, n):
    """Our 64k-extended checkpoint: (the module, its params, a jitted encoder, its inputs at n tokens)."""
    import jax
    import jax.numpy as jnp

    from led_flax.io import pretrained
    loaded = pretrained.load(os.path.join(work, "ours-64k"))
    model, params = loaded.module, loaded.params
    encode = jax.jit(lambda p, i, a, g: model.apply({"params": p}, i, a, g, num_global_slots=1,
                                                    method="encode").last_hidden_state)
    return model, params, encode, tuple(jnp.asarray(x) for x in _inputs(n))


def prepare(work):
    """The HF checkpoint, ours extended to 64k, and an HF export extended to 32k."""
    import torch
    import transformers

    from led_flax import convert
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    transformers.LEDForConditionalGeneration(transformers.LEDConfig(**BASE)).save_pretrained(os.path.join(work, "hf"))
    convert.convert_checkpoint(os.path.join(work, "hf"), os.path.join(work, "ours-64k"), max_encoder_positions=65536)
    convert.convert_checkpoint(os.path.join(work, "hf"), os.path.join(work, "ours-32k"), max_encoder_positions=32768)
    convert.export_checkpoint(os.path.join(work, "ours-32k"), os.path.join(work, "hf-32k"))


def run_ours(work, n, repeats):
    _, params, encode, (ids, am, glob) = _encode(work, n)
    t0 = time.perf_counter()
    compiled = encode.lower(params, ids, am, glob).compile()
    compile_s = time.perf_counter() - t0
    compiled(params, ids, am, glob).block_until_ready()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled(params, ids, am, glob).block_until_ready()
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "compile_s": compile_s,
            "temp_gib": compiled.memory_analysis().temp_size_in_bytes / 2**30}


def run_reference(work, n, repeats):
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    directory = os.path.join(work, "hf" if n <= 16384 else "hf-32k")
    encoder = transformers.LEDModel.from_pretrained(directory).get_encoder().eval()
    return {"seconds": time_reference(encoder, n, repeats), "threads": torch.get_num_threads()}


def run_sharded(work, n, devices):
    """Compiled temporary memory per device: the encoder on one device, and split over `devices`."""
    import jax
    from jax.sharding import PartitionSpec as P

    from led_flax.parallel import sequence, sharding
    model, params, one, (ids, am, glob) = _encode(work, n)
    single = one.lower(params, ids, am, glob).compile().memory_analysis().temp_size_in_bytes
    mesh = sharding.make_mesh(1, 1, 1, sequence=devices)
    sharded_model = sequence.sharded_model(model, mesh)
    body = lambda p, i, a, g: sharded_model.apply({"params": p}, i, a, g, num_global_slots=1,
                                                  method="encode").last_hidden_state
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(),) + (sequence.TOKENS,) * 3,
                               out_specs=P(None, sequence.SEQUENCE_AXIS), axis_names={sequence.SEQUENCE_AXIS}))
    compiled = fn.lower(params, ids, am, glob).compile()
    per_device = compiled.memory_analysis().temp_size_in_bytes
    t0 = time.perf_counter()
    compiled(params, ids, am, glob).block_until_ready()
    return {"devices": devices, "single_temp_gib": single / 2**30, "per_device_temp_gib": per_device / 2**30,
            "ratio": per_device / single, "seconds_8_fake_devices": time.perf_counter() - t0}


def child(kind, work, n, repeats):
    if kind == "sharded":
        result = run_sharded(work, n, 8)
    else:
        result = (run_ours if kind == "led-flax" else run_reference)(work, n, repeats)
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result.update(kind=kind, tokens=n)
    print(json.dumps(result))


def _run(args, env=None):
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}, cwd=os.path.dirname(HERE))
    if out.returncode:
        sys.exit(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--workdir")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "WORK", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]), args.repeats)
    if args.child is None and not args.workdir:
        args.workdir = tempfile.mkdtemp(prefix="led-flax-long-")
    work = args.workdir
    if not os.path.isdir(os.path.join(work, "ours-64k")):
        prepare(work)

    rows = {}
    for n in args.lengths:
        rows["led-flax", n] = _run(["--child", "led-flax", work, str(n), "--repeats", str(args.repeats)])
        print(f"  led-flax     {n:6d} tokens: {rows['led-flax', n]['seconds']:.2f} s", file=sys.stderr)
        if not args.skip_reference and n <= 32768:
            rows["transformers", n] = _run(["--child", "transformers", work, str(n), "--repeats", str(args.repeats)])
            print(f"  transformers {n:6d} tokens: {rows['transformers', n]['seconds']:.2f} s", file=sys.stderr)
    longest = max(args.lengths)
    sharded = _run(["--child", "sharded", work, str(longest)],
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})

    print("| tokens | led-flax s | led-flax peak GiB | led-flax XLA temp GiB | transformers s | transformers peak GiB "
          "| speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.lengths:
        a = rows["led-flax", n]
        r = rows.get(("transformers", n))
        ref = f"{r['seconds']:.2f} | {r['peak_rss_gib']:.2f} | {r['seconds'] / a['seconds']:.2f}x" if r else "- | - | -"
        print(f"| {n} | {a['seconds']:.2f} | {a['peak_rss_gib']:.2f} | {a['temp_gib']:.2f} | {ref} |")
    lo = min(args.lengths)
    print(f"\nled-flax: time x{rows['led-flax', longest]['seconds'] / rows['led-flax', lo]['seconds']:.2f} for "
          f"x{longest / lo:.0f} tokens")
    print(f"{longest} tokens over {sharded['devices']} devices' sequence axis: {sharded['per_device_temp_gib']:.3f} GiB "
          f"of XLA temporaries per device against {sharded['single_temp_gib']:.3f} GiB on one device "
          f"({sharded['ratio']:.3f}); the 8 fake devices share this CPU: {sharded['seconds_8_fake_devices']:.1f} s")


if __name__ == "__main__":
    main()
