"""One prepared run on an accelerator: parity with transformers on the device, then led-flax beside the
PyTorch reference on the same device and the same weights. Every figure in one short run (at most
`--budget-s`, 300 s by default), each written to `--out` as soon as it is measured.

On a GPU machine, with its own jax, torch and transformers (nothing of ours is installed but the
wheel, without its dependencies):

    pip install --no-deps dist/led_flax-*.whl        # or: pip install --no-deps --target DIR . ; PYTHONPATH=DIR
    python bench/device.py --out device-results

Here, on the CPU at tiny shapes (tests/test_device_script.py runs it, so it cannot rot):

    python bench/device.py --tiny --out /tmp/device-results

It imports jax, flax, optax, numpy, torch, transformers, safetensors, pyyaml and led_flax (whose
modules used here need nothing more; orbax and tokenizers are not touched). Where the machine's
versions differ from our pins (newer jax, older transformers) and an API is missing, the row says
"skipped" and why, and the run goes on.

Rows:
- `versions`: Python, the packages, the backend, the device kind and count.
- `parity float32` / `parity bfloat16`: a small random LED, ours and transformers' with the same
  weights on the device: logits (norm-relative error) and greedy ids. float32 runs with
  `jax_default_matmul_precision="highest"` and torch's TF32 off (tolerance 1e-4); bfloat16 computes
  in bfloat16 on both sides (tolerance 3e-2, ids compared and reported, not required equal).
- `encoder`: led-base's encoder, bfloat16, batch 8 at 16,384 tokens.
- `train 4k` / `train 16k`: one training step of led-base (bfloat16 compute, float32 weights and
  AdamW, remat full on our side, gradient checkpointing on the reference's), batch 1.
- `generate`: beam 4 at 4,096 tokens, 64 new tokens (both forced to 64: `min_new_tokens`).
- `splash encoder` / `splash train 16k`: the `encoder` and the longest `train` row with
  `attention_implementation="splash"` (the Pallas kernel) against our own xla path, with their largest
  difference. They need a TPU backend; elsewhere they say "skipped" and why.
Each timed row: seconds (best of the repeats, after a warm-up that compiles), tokens/s, the peak
device memory (jax: the process's peak so far, `memory_stats()`; torch: this row's,
`max_memory_allocated`), and MFU: the model's FLOPs (counted below, from the architecture; not XLA's
`cost_analysis`, which counts the band's masked half and misses custom calls) over the time and the
device kind's dense bf16 peak (PEAK_FLOPS; "unknown" for a kind not in it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device with jax

# dense bf16 peak FLOP/s by device kind (substring of `device_kind`, first match wins)
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
              "A10G": 70e12, "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
              "TPU v4": 275e12}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy", "torch", "transformers", "tokenizers",
            "safetensors", "yaml", "led_flax")


@dataclasses.dataclass(frozen=True)
class Shapes:
    """What each row runs: the full run's, or `--tiny`'s for the CPU."""

    model: dict  # LEDConfig fields of the timed model
    parity: dict  # LEDConfig fields of the parity model
    parity_run: tuple[int, int]  # (tokens, greedy new tokens) of the parity inputs
    encoder: tuple[int, int]  # (batch, tokens)
    train: tuple[int, ...]  # tokens of each training row
    generate: tuple[int, int, int]  # (tokens, beams, new tokens)
    repeats: int


def shapes(tiny: bool) -> Shapes:
    from led_flax.model.config import RELEASED
    parity = dict(vocab_size=512, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, attention_window=[16, 32],
                  max_encoder_position_embeddings=256, max_decoder_position_embeddings=64, dropout=0.0)
    if tiny:
        return Shapes(model=parity, parity=parity, parity_run=(64, 4), encoder=(2, 256), train=(128,),
                      generate=(128, 4, 4), repeats=1)
    return Shapes(model={**RELEASED["allenai/led-base-16384"], "dropout": 0.0}, parity=parity, parity_run=(200, 16),
                  encoder=(8, 16384), train=(4096, 16384), generate=(4096, 4, 64), repeats=2)


# ---------------------------------------------------------------------------------------------- FLOPs
def encoder_flops(c, n: int, global_tokens: int = 1) -> float:
    """Forward FLOPs of the encoder on one sequence of n tokens: per layer and token, the four
    projections (8 D^2), the feed-forward (4 D F), and the banded scores and values over the window's
    w + 1 keys and the global columns (4 D (w + 1 + g)); the global rows add 4 D g per token."""
    d, f = c.d_model, c.encoder_ffn_dim
    return n * sum(8 * d * d + 4 * d * f + 4 * d * (w + 1 + global_tokens) + 4 * d * global_tokens
                   for w in c.attention_window)


def decoder_flops(c, n: int, t: int) -> float:
    """Forward FLOPs of the decoder and LM head over t target tokens, teacher-forced, with n encoder
    tokens: per layer, self-attention projections (8 D^2 t), cross-attention queries and outputs
    (4 D^2 t), keys and values of the encoder output (4 D^2 n), the t x t self scores and values
    (4 D t^2), the cross scores and values (4 D t n), the feed-forward (4 D F t); the LM head 2 D V t."""
    d, f = c.d_model, c.decoder_ffn_dim
    layer = 12 * d * d * t + 4 * d * d * n + 4 * d * t * t + 4 * d * t * n + 4 * d * f * t
    return c.decoder_layers * layer + 2 * d * c.vocab_size * t


def generation_flops(c, n: int, beams: int, new: int) -> float:
    """The encoder once, the cross keys and values once, then each step's decoder for every beam:
    per layer 12 D^2 + 4 D F + the self scores over the step's position and the cross scores over n."""
    d, f = c.d_model, c.decoder_ffn_dim
    steps = sum(beams * (c.decoder_layers * (12 * d * d + 4 * d * f + 4 * d * (i + 1) + 4 * d * n)
                         + 2 * d * c.vocab_size) for i in range(new))
    return encoder_flops(c, n) + c.decoder_layers * 4 * d * d * n + steps


# ---------------------------------------------------------------------------------------------- the run
class Unavailable(RuntimeError):
    """A row this machine cannot run by design (splash attention off a TPU): skipped, no traceback."""


class Run:
    """Rows, each written to OUT/results.json the moment it is measured; OUT/results.md at the end."""

    def __init__(self, out: str, budget_s: float):
        self.out, self.budget_s, self.start, self.rows = out, budget_s, time.perf_counter(), []
        os.makedirs(out, exist_ok=True)

    def row(self, name: str, fn):
        left = self.budget_s - (time.perf_counter() - self.start)
        if left < 0.1 * self.budget_s:
            result = {"status": f"skipped: out of time ({self.budget_s:.0f} s budget)"}
        else:
            try:
                result = {"status": "ok", **fn()}
            except Exception as e:  # a row that cannot run on this machine says why; the run goes on
                result = {"status": f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
                if not isinstance(e, Unavailable):
                    traceback.print_exc(file=sys.stderr)
        result = {"row": name, **result, "elapsed_s": round(time.perf_counter() - self.start, 1)}
        self.rows.append(result)
        print(json.dumps(result), flush=True)
        self._write("results.json", json.dumps(self.rows, indent=1) + "\n")
        return result

    def _write(self, name: str, text: str):
        tmp = os.path.join(self.out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, os.path.join(self.out, name))

    def finish(self):
        keys = ["row", "status", "led-flax s", "reference s", "speed-up", "led-flax tokens/s", "reference tokens/s",
                "led-flax peak GiB", "reference peak GiB", "led-flax MFU", "reference MFU", "max rel err", "ids equal"]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            if r["row"] == "versions":
                continue
            lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
        versions = next((r for r in self.rows if r["row"] == "versions"), {})
        head = ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("row", "status", "elapsed_s"))
        self._write("results.md", f"{head}\n\n" + "\n".join(lines) + "\n")


def versions() -> dict:
    import importlib
    import jax
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a package missing on this machine is a fact to report
            out[name] = f"missing ({type(e).__name__})"
    device = jax.devices()[0]
    out.update(backend=jax.default_backend(), device_kind=device.device_kind, devices=jax.device_count())
    return out


def peak_flops() -> float | None:
    import jax
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def mfu(flops: float, seconds: float):
    peak = peak_flops()
    return "unknown" if peak is None else f"{100 * flops / seconds / peak:.1f}%"


def jax_peak_gib():
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2 ** 30, 2) if "peak_bytes_in_use" in stats else "n/a"


def torch_device():
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_reset():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def torch_peak_gib():
    import torch
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if torch.cuda.is_available() else "n/a"


def torch_sync():
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn(), after one warm-up call (compilation)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


_MODELS: dict = {}


def models(fields: dict, work: str, dtype: str = "float32"):
    """(our LEDConfig, our params on the device, the reference's torch model on its device), with the
    same random weights: ours drawn as the reference draws them, written as an HF checkpoint, read back
    by transformers. The HF checkpoint is written once per architecture; the torch model is fresh."""
    import jax
    import torch
    import transformers

    from led_flax import LEDConfig, LEDForConditionalGeneration, convert, init_params
    config = LEDConfig(**fields)
    key = json.dumps(fields, sort_keys=True)
    if key not in _MODELS:
        params = init_params(LEDForConditionalGeneration(config), jax.random.PRNGKey(0))
        _MODELS[key] = params, convert.to_hf(config, jax.device_get(params),
                                             os.path.join(work, f"hf-{len(_MODELS)}"))
    params, hf = _MODELS[key]
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    reference = transformers.LEDForConditionalGeneration.from_pretrained(hf, dtype=torch_dtype)
    return config, params, reference.to(torch_device()).eval()


def inputs(config, batch: int, n: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, config.vocab_size, (batch, n)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 0, 2
    glob = np.zeros_like(ids)
    glob[:, 0] = 1
    return ids, np.ones_like(ids), glob


def parity(shp: Shapes, work: str, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from led_flax import generate, model_for
    if dtype == "float32":
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    try:
        config, params, reference = models(shp.parity, work, dtype)
        model = model_for(config, dtype=jnp.dtype(dtype))
        n, new = shp.parity_run
        ids, mask, glob = inputs(config, 2, n)
        dec = np.tile(np.array([[2, 0, 17, 29, 41]], np.int32), (2, 1))
        ours = np.asarray(model.apply({"params": params}, ids, attention_mask=mask, global_attention_mask=glob,
                                      decoder_input_ids=dec).logits, np.float32)
        t = lambda a: torch.from_numpy(np.asarray(a, np.int64)).to(torch_device())
        with torch.no_grad():
            theirs = reference(input_ids=t(ids), attention_mask=t(mask), global_attention_mask=t(glob),
                               decoder_input_ids=t(dec)).logits.float().cpu().numpy()
        err = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
        ours_ids = generate(model, params, ids, mask, glob, max_new_tokens=new, min_new_tokens=new).sequences
        with torch.no_grad():
            their_ids = reference.generate(input_ids=t(ids), attention_mask=t(mask), global_attention_mask=t(glob),
                                           max_new_tokens=new, min_new_tokens=new, num_beams=1,
                                           do_sample=False).cpu().numpy()
        equal = float(np.mean(ours_ids[:, :their_ids.shape[1]] == their_ids[:, :ours_ids.shape[1]]))
        tolerance = 1e-4 if dtype == "float32" else 3e-2
        if err > tolerance or (dtype == "float32" and equal < 1.0):
            raise AssertionError(f"logits rel err {err:.2e} (tolerance {tolerance}), ids equal {equal:.0%}")
        return {"max rel err": f"{err:.2e}", "tolerance": tolerance, "ids equal": f"{100 * equal:.0f}%"}
    finally:
        jax.config.update("jax_default_matmul_precision", None)


def encoder_row(shp: Shapes, work: str) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from led_flax import model_for
    batch, n = shp.encoder
    config, params, reference = models(shp.model, work, "bfloat16")
    model = model_for(config, dtype=jnp.bfloat16)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    ids, mask, glob = inputs(config, batch, n)
    encode = jax.jit(lambda p, i, m, g: model.apply({"params": p}, i, m, g, num_global_slots=1,
                                                    method="encode").last_hidden_state)
    args = [jnp.asarray(x) for x in (ids, mask, glob)]
    ours = best_time(lambda: encode(params, *args).block_until_ready(), shp.repeats)
    ours_peak = jax_peak_gib()
    t = lambda a: torch.from_numpy(a.astype("int64")).to(torch_device())
    encoder, targs = reference.get_encoder(), [t(x) for x in (ids, mask, glob)]
    torch_reset()

    def theirs_call():
        with torch.no_grad():
            encoder(input_ids=targs[0], attention_mask=targs[1], global_attention_mask=targs[2])
        torch_sync()
    theirs = best_time(theirs_call, shp.repeats)
    flops = batch * encoder_flops(config, n)
    return {"shape": f"batch {batch} x {n} tokens, bfloat16", "led-flax s": round(ours, 3),
            "reference s": round(theirs, 3), "speed-up": f"{theirs / ours:.2f}x",
            "led-flax tokens/s": round(batch * n / ours), "reference tokens/s": round(batch * n / theirs),
            "led-flax peak GiB": ours_peak, "reference peak GiB": torch_peak_gib(),
            "led-flax MFU": mfu(flops, ours), "reference MFU": mfu(flops, theirs)}


def train_row(shp: Shapes, work: str, n: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from led_flax.model.heads import model_for
    from led_flax.parallel import sharding as shd
    from led_flax.train import step as step_lib
    from led_flax.train.config import OptimizerConfig
    labels = 256 if n >= 1024 else 16
    config, params, reference = models(shp.model, work, "float32")
    model = model_for(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, remat="full")
    optimizer = OptimizerConfig()
    tx = step_lib.optimizer(optimizer, 10)
    mesh = shd.make_mesh(1, 1, 1, jax.devices()[:1])
    shapes = jax.eval_shape(step_lib.fresh_state(model, tx, 0), jax.random.PRNGKey(0))
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    state = jax.jit(lambda p: step_lib.init_state(p, tx, 0), out_shardings=shardings)(params)
    step = step_lib.make_train_step(model, tx, step_lib.schedule(optimizer, 10), mesh, shardings, dropout=False)
    ids, mask, glob = inputs(config, 1, n)
    target = np.random.default_rng(1).integers(3, config.vocab_size, (1, labels)).astype(np.int32)
    batch = {"input_ids": ids[None], "attention_mask": mask[None], "global_attention_mask": glob[None],
             "labels": target[None]}
    holder = {"state": state}

    def ours_call():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics)
    ours = best_time(ours_call, shp.repeats)
    ours_peak = jax_peak_gib()
    holder.clear()  # the train state's buffers go before the reference allocates its own
    del state
    reference.train()
    reference.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(reference.parameters(), lr=1e-5)
    t = lambda a: torch.from_numpy(a.astype("int64")).to(torch_device())
    targs = dict(input_ids=t(ids), attention_mask=t(mask), global_attention_mask=t(glob), labels=t(target))
    torch_reset()

    def theirs_call():
        with torch.autocast(torch_device(), dtype=torch.bfloat16):
            loss = reference(**targs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch_sync()
    theirs = best_time(theirs_call, shp.repeats)
    flops = 3 * (encoder_flops(config, n) + decoder_flops(config, n, labels))
    return {"shape": f"{n} tokens, {labels} labels, bfloat16 compute, remat full", "led-flax s": round(ours, 3),
            "reference s": round(theirs, 3), "speed-up": f"{theirs / ours:.2f}x",
            "led-flax tokens/s": round(n / ours), "reference tokens/s": round(n / theirs),
            "led-flax peak GiB": ours_peak, "reference peak GiB": torch_peak_gib(),
            "led-flax MFU": mfu(flops, ours), "reference MFU": mfu(flops, theirs)}


def generate_row(shp: Shapes, work: str) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from led_flax import generate, model_for
    n, beams, new = shp.generate
    config, params, reference = models(shp.model, work, "bfloat16")
    model = model_for(config, dtype=jnp.bfloat16)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    ids, mask, glob = inputs(config, 1, n)
    ours = best_time(lambda: generate(model, params, ids, mask, glob, num_beams=beams, max_new_tokens=new,
                                      min_new_tokens=new), shp.repeats)
    ours_peak = jax_peak_gib()
    t = lambda a: torch.from_numpy(a.astype("int64")).to(torch_device())
    targs = dict(input_ids=t(ids), attention_mask=t(mask), global_attention_mask=t(glob))
    torch_reset()

    def theirs_call():
        with torch.no_grad():
            reference.generate(**targs, num_beams=beams, max_new_tokens=new, min_new_tokens=new, do_sample=False)
        torch_sync()
    theirs = best_time(theirs_call, shp.repeats)
    flops = generation_flops(config, n, beams, new)
    return {"shape": f"{n} tokens, beam {beams}, {new} new tokens, bfloat16", "led-flax s": round(ours, 3),
            "reference s": round(theirs, 3), "speed-up": f"{theirs / ours:.2f}x",
            "led-flax tokens/s": round(beams * new / ours), "reference tokens/s": round(beams * new / theirs),
            "led-flax peak GiB": ours_peak, "reference peak GiB": torch_peak_gib(),
            "led-flax MFU": mfu(flops, ours), "reference MFU": mfu(flops, theirs)}


def require_tpu():
    import jax
    if jax.default_backend() != "tpu":
        raise Unavailable(f"splash attention rows need a TPU backend; this one is {jax.default_backend()}")


def splash_encoder_row(shp: Shapes, work: str) -> dict:
    """The encoder as in `encoder`, with attention_implementation splash against our own xla path (the
    baseline: the oracle the tests check splash against), and their largest difference."""
    require_tpu()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from led_flax import model_for
    batch, n = shp.encoder
    config, params, _ = models(shp.model, work, "bfloat16")
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
    args = [jnp.asarray(x) for x in inputs(config, batch, n)]
    times, outs = {}, {}
    for implementation in ("xla", "splash"):
        model = model_for(config.replace(attention_implementation=implementation), dtype=jnp.bfloat16)
        encode = jax.jit(lambda p, i, m, g, model=model: model.apply({"params": p}, i, m, g, num_global_slots=1,
                                                                     method="encode").last_hidden_state)
        outs[implementation] = np.asarray(encode(params, *args), np.float32)
        times[implementation] = best_time(lambda: encode(params, *args).block_until_ready(), shp.repeats)
    err = np.abs(outs["splash"] - outs["xla"]).max() / np.abs(outs["xla"]).max()
    flops = batch * encoder_flops(config, n)
    return {"shape": f"batch {batch} x {n} tokens, bfloat16; led-flax = splash, reference = led-flax xla",
            "led-flax s": round(times["splash"], 3), "reference s": round(times["xla"], 3),
            "speed-up": f"{times['xla'] / times['splash']:.2f}x", "led-flax tokens/s": round(batch * n / times["splash"]),
            "reference tokens/s": round(batch * n / times["xla"]), "led-flax MFU": mfu(flops, times["splash"]),
            "reference MFU": mfu(flops, times["xla"]), "max rel err": f"{err:.1e}"}


def splash_train_row(shp: Shapes, work: str, n: int) -> dict:
    """One training step as in `train`, splash against our xla path, from the same state."""
    require_tpu()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from led_flax.model.heads import model_for
    from led_flax.parallel import sharding as shd
    from led_flax.train import step as step_lib
    from led_flax.train.config import OptimizerConfig
    labels = 256 if n >= 1024 else 16
    config, params, _ = models(shp.model, work, "float32")
    optimizer = OptimizerConfig()
    tx = step_lib.optimizer(optimizer, 10)
    mesh = shd.make_mesh(1, 1, 1, jax.devices()[:1])
    ids, mask, glob = inputs(config, 1, n)
    target = np.random.default_rng(1).integers(3, config.vocab_size, (1, labels)).astype(np.int32)
    batch = {"input_ids": ids[None], "attention_mask": mask[None], "global_attention_mask": glob[None],
             "labels": target[None]}
    times, losses = {}, {}
    for implementation in ("xla", "splash"):
        model = model_for(config.replace(attention_implementation=implementation), dtype=jnp.bfloat16,
                          param_dtype=jnp.float32, remat="full")
        shapes = jax.eval_shape(step_lib.fresh_state(model, tx, 0), jax.random.PRNGKey(0))
        shardings = step_lib.state_shardings(shapes, tx, mesh)
        step = step_lib.make_train_step(model, tx, step_lib.schedule(optimizer, 10), mesh, shardings, dropout=False)
        fresh = lambda: jax.jit(lambda p: step_lib.init_state(p, tx, 0), out_shardings=shardings)(params)
        _, metrics = step(fresh(), batch)
        losses[implementation] = float(metrics["loss"])
        holder = {"state": fresh()}

        def call():
            holder["state"], metrics = step(holder["state"], batch)
            jax.block_until_ready(metrics)
        times[implementation] = best_time(call, shp.repeats)
        holder.clear()
    flops = 3 * (encoder_flops(config, n) + decoder_flops(config, n, labels))
    return {"shape": f"{n} tokens, {labels} labels, bfloat16, remat full; led-flax = splash, reference = led-flax xla",
            "led-flax s": round(times["splash"], 3), "reference s": round(times["xla"], 3),
            "speed-up": f"{times['xla'] / times['splash']:.2f}x", "led-flax tokens/s": round(n / times["splash"]),
            "reference tokens/s": round(n / times["xla"]), "led-flax MFU": mfu(flops, times["splash"]),
            "reference MFU": mfu(flops, times["xla"]),
            "max rel err": f"{abs(losses['splash'] - losses['xla']) / abs(losses['xla']):.1e} (first-step loss)"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.json (row by row) and results.md")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for the CPU and the test suite")
    parser.add_argument("--budget-s", type=float, default=300.0, help="rows not started by then are skipped")
    args = parser.parse_args(argv)
    run = Run(args.out, args.budget_s)
    shp = shapes(args.tiny)
    run.row("versions", versions)
    with tempfile.TemporaryDirectory(prefix="led-flax-device-") as work:
        run.row("parity float32", lambda: parity(shp, work, "float32"))
        run.row("parity bfloat16", lambda: parity(shp, work, "bfloat16"))
        run.row("encoder", lambda: encoder_row(shp, work))
        for n in shp.train:
            run.row(f"train {n // 1024}k" if n >= 1024 else f"train {n}", lambda n=n: train_row(shp, work, n))
        run.row("generate", lambda: generate_row(shp, work))
        run.row("splash encoder", lambda: splash_encoder_row(shp, work))
        run.row(f"splash train {shp.train[-1] // 1024}k" if shp.train[-1] >= 1024 else f"splash train {shp.train[-1]}",
                lambda: splash_train_row(shp, work, shp.train[-1]))
    run.finish()
    print(f"wrote {os.path.join(args.out, 'results.json')} and results.md", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
