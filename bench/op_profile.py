"""Where a compiled program's time goes: one call traced with `jax.profiler`, each XLA op's time summed
and matched to the compiled HLO, reported per op and per kind (matrix products, reductions, other
fusions, copies). Used to find the costs behind BENCHMARKS.md's profiles before changing anything.

    python bench/op_profile.py train --tokens 4096          # bench/train.py's led-base step
    python bench/op_profile.py generate --num-beams 4       # bench/generate.py's case a, per decoding step
    python bench/op_profile.py generate --variant int8      # ... with one of its --variants

Reading it on XLA:CPU: YNNPACK's fusions (`ynn_fusion.N`) and XLA's own loop fusions are traced, but
XLA's Eigen dots are not, so "untraced" (time inside the call with no traced op running) is mostly
matrix products. Ops of a decoding loop run once per step; `generate` reports them per step.
Figures are this machine's at the moment of the run: compare kinds within one run, not across runs.
(Named op_profile: bench/ is first on sys.path for its scripts, and a `profile.py` here would shadow
the standard library's, which torch imports.)
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    """bench/<name>.py as a module (its name clashes with packages of the repository)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hlo_kinds(hlo_text: str) -> dict[str, str]:
    """Op name -> its kind in the compiled HLO text: "matmul" (a dot or a fusion holding one),
    "reduction", "copy", "fusion" (anything else fused), or the op's own name."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head:
            current = bodies.setdefault(head.group(1), [])
        elif current is not None:
            current.append(line)
    kinds = {}
    for lines in bodies.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
            if not m:
                continue
            name, op = m.groups()
            called = re.search(r"calls=%?([\w.\-]+)", line)
            ops = {op}
            if called and called.group(1) in bodies:
                ops |= set(re.findall(r"= \S+ ([\w\-]+)\(", "\n".join(bodies[called.group(1)])))
            kinds[name] = ("matmul" if ops & {"dot", "convolution"} else "reduction" if ops & {"reduce", "reduce-window"}
                           else "copy" if op == "copy" else "fusion" if op == "fusion" else op)
    return kinds


def traced_ops(trace_dir: str):
    """(name, start_ns, end_ns) of every XLA op event in the trace."""
    import jax
    path = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0]
    events = []
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA:CPU's executor threads
                continue
            events += [(e.name, e.start_ns, e.end_ns) for e in line.events
                       if not e.name.startswith(("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool"))]
    return events


def busy_ns(events) -> int:
    """Time during which at least one op runs."""
    total, end = 0, None
    for _, s, e in sorted(events, key=lambda x: x[1]):
        if end is None or s > end:
            total, end = total + e - s, e
        elif e > end:
            total, end = total + e - end, e
    return total


def report(events, kinds: dict[str, str], wall_s: float, per: int = 1, top: int = 25, min_count: int = 1):
    """Prints time per kind and the `top` ops, divided by `per` (decoding steps); only ops that ran at
    least `min_count` times (a loop body's ops)."""
    time_of, count = collections.Counter(), collections.Counter()
    for name, s, e in events:
        time_of[name] += e - s
        count[name] += 1
    chosen = [n for n in time_of if count[n] >= min_count]
    unit = "ms" if per == 1 else "ms/step"
    by_kind = collections.Counter()
    for n in chosen:
        by_kind[kinds.get(n, "?")] += time_of[n]
    traced = [ev for ev in events if count[ev[0]] >= min_count]
    span = (max(e for _, _, e in traced) - min(s for _, s, _ in traced)) if traced else 0
    print(f"call {wall_s * 1e3:.1f} ms; traced ops span {span / 1e6 / per:.2f} {unit}, busy "
          f"{busy_ns(traced) / 1e6 / per:.2f} {unit} (the rest: untraced Eigen dots and the runtime)")
    print("| kind | " + unit + " | ops |\n|---|---:|---:|")
    for kind, ns in by_kind.most_common():
        print(f"| {kind} | {ns / 1e6 / per:.2f} | {sum(1 for n in chosen if kinds.get(n, '?') == kind)} |")
    print(f"\n| op | kind | {unit} | calls |\n|---|---|---:|---:|")
    for n in sorted(chosen, key=lambda n: -time_of[n])[:top]:
        print(f"| {n} | {kinds.get(n, '?')} | {time_of[n] / 1e6 / per:.3f} | {count[n]} |")


def profile_train(args):
    step, state, batch, mesh = _load("train").setup_ours(args.tokens, args.remat, args.dtype)
    import flax.linen as nn
    import jax

    from led_flax.parallel import sharding
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        compiled = step.jitted.lower(state, batch).compile()  # compiled once: its HLO names the ops

    def call():
        nonlocal state
        state, metrics = compiled(state, batch)
        float(metrics["loss"])
    call()  # a warm call before the traced one
    return compiled.as_text(), call, 1, 1


def profile_generate(args):
    bench_generate = _load("generate")
    import jax

    from led_flax import convert
    from led_flax.decoding.generation import generate
    directory = os.path.join(args.workdir, "hf")
    if not os.path.isdir(directory):
        bench_generate.make_checkpoint(directory)
    from led_flax.model.quantize import QuantizeSpec
    dtype, scheme, cross_cache = bench_generate.VARIANTS[args.variant]
    loaded = convert.load(directory).quantized(QuantizeSpec(scheme) if scheme else None).with_compute(
        dtype, cross_cache)
    model, params = loaded.module, jax.device_put(loaded.params)
    ids, am, glob_ = bench_generate._inputs(1, args.tokens)
    kw = dict(num_beams=args.num_beams, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    dump = os.path.join(args.workdir, "hlo")
    generate(model, params, ids, am, glob_, **kw)  # compiles (the HLO is dumped, see main)
    texts = sorted(glob.glob(os.path.join(dump, "*jit__program*after_optimizations.txt")), key=os.path.getsize)
    hlo = open(texts[-1]).read() if texts else ""
    return hlo, lambda: generate(model, params, ids, am, glob_, **kw), args.new_tokens, args.new_tokens - 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", choices=["train", "generate"])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--remat", default="none", choices=["none", "full", "save_dots"], help="train")
    parser.add_argument("--dtype", default="float32", help="train: the compute dtype")
    parser.add_argument("--num-beams", type=int, default=4, help="generate")
    parser.add_argument("--new-tokens", type=int, default=128, help="generate")
    parser.add_argument("--variant", default="f32", help="generate: a variant of bench/generate.py (int8, bf16, ...)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="led-flax-profile-")
    if args.program == "generate":  # the decoding program's compiled HLO, to name its ops' kinds
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={args.workdir}/hlo "
                                   "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*_program.*").strip()
    import jax
    hlo, call, per, min_count = (profile_train if args.program == "train" else profile_generate)(args)
    trace = os.path.join(args.workdir, "trace")
    with jax.profiler.trace(trace):
        t0 = time.perf_counter()
        call()
        wall = time.perf_counter() - t0
    report(traced_ops(trace), hlo_kinds(hlo), wall, per=per, top=args.top, min_count=min_count)


if __name__ == "__main__":
    main()
