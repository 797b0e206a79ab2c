"""`led-flax train --dry-run`: the sharded train state and step, abstractly (`jax.eval_shape`): the mesh,
every parameter's shard shape, and the bytes each device holds. No weights, no data.

It builds its state through `train.step.build_setup`, as the run does, so it runs the same config check
and fails where the run would."""

from __future__ import annotations

import re
import time

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

from led_flax.parallel import sharding as shd

from . import step as step_lib
from .config import TrainConfig
from .model import architecture


@dataclass(frozen=True)
class Plan:
    """A config's job, abstractly: its `Setup` and what each device would hold."""
    setup: step_lib.Setup
    params_bytes: tuple[int, int]  # (on each device, in all)
    state_bytes: tuple[int, int]  # params and optimizer state: (on each device, in all)
    batch_shard: tuple[int, ...]  # one device's block of a step's batch [accum, examples, tokens]
    kept_whole: list[str]  # parameter dimensions that a mesh axis does not divide (see sharding.kept_whole)
    step_output: tuple | None  # the train step's abstract (state, metrics), or None when not traced
    # with compile: XLA's memory_analysis() of the compiled step, bytes per device on this backend, and
    # "compile_s", the seconds that lowering and compiling the step took
    memory: dict | None = None


def plan(cfg: TrainConfig, devices=None, step: bool = True, compile: bool = False) -> Plan:
    """`cfg`'s job on `devices` (default: all), abstractly; with `step`, also the train step's
    abstract outputs (it traces the whole model); with `compile`, the step compiled for this backend
    and XLA's memory analysis of it (no weights, no data). Raises what `step_lib.build_setup` raises."""
    s = step_lib.build_setup(cfg, architecture(cfg), devices)
    accum = cfg.optimizer.grad_accum_steps
    micro = cfg.data.batch_size // accum
    n, t = cfg.data.max_source_length, cfg.data.max_target_length
    batch = {k: jax.ShapeDtypeStruct((accum, micro, n), jnp.int32)
             for k in ("input_ids", "attention_mask", "global_attention_mask")}
    batch["labels"] = jax.ShapeDtypeStruct((accum, micro, t), jnp.int32)
    step_output = memory = None
    if step or compile:
        train_step = step_lib.make_train_step(s.model, s.tx, s.lr, s.mesh, s.shardings,
                                              cfg.optimizer.label_smoothing, cfg.model.dropout)
        with jax.set_mesh(s.mesh), nn.logical_axis_rules(shd.RULES):
            step_output = jax.eval_shape(train_step.jitted, s.state, batch)
            if compile:
                start = time.perf_counter()
                m = train_step.jitted.lower(s.state, batch).compile().memory_analysis()
                memory = {"compile_s": time.perf_counter() - start,"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                          "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
                          "code": m.generated_code_size_in_bytes}
    return Plan(setup=s, params_bytes=shd.bytes_per_device(s.state["params"], s.shardings["params"]),
                state_bytes=shd.bytes_per_device(s.state, s.shardings),
                batch_shard=step_lib.batch_shardings(s.mesh)["input_ids"].shard_shape((accum, micro, n)),
                kept_whole=shd.kept_whole(s.state["params"], s.mesh), step_output=step_output, memory=memory)


def dry_run(cfg: TrainConfig, compile: bool = False) -> str:
    p = plan(cfg, compile=compile)
    s = p.setup
    gib = 2 ** 30
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(s.state["params"]))
    lines = [f"model: {cfg.model.init} ({n_params:,} parameters), compute {cfg.model.dtype}, "
             f"remat {cfg.model.remat}, scan_layers {cfg.model.scan_layers}, attention "
             f"{cfg.model.attention_implementation}",
             f"mesh: {dict(s.mesh.shape)} over {s.mesh.devices.size} devices",
             f"params: {p.params_bytes[1] / gib:.3f} GiB, {p.params_bytes[0] / gib:.3f} GiB per device",
             f"train state (params + AdamW moments): {p.state_bytes[1] / gib:.3f} GiB, "
             f"{p.state_bytes[0] / gib:.3f} GiB per device",
             f"batch [accum, examples, tokens] per device: {p.batch_shard}"]
    flat = jax.tree_util.tree_leaves_with_path(s.state["params"])
    specs = jax.tree_util.tree_leaves(s.shardings["params"])
    lines.append("parameter shardings (the first encoder and decoder layer or scanned run; the others repeat "
                 "them):")
    for (keys, leaf), sh in zip(flat, specs):
        path = shd.path_of(keys)
        if re.search(r"/(layers_[1-9]\d*|scan_[1-9]\d*_\d+)/", path):
            continue
        lines.append(f"  {path:<72} {str(tuple(leaf.shape)):<16} {str(sh.spec):<28} shard "
                     f"{sh.shard_shape(tuple(leaf.shape))}")
    if p.kept_whole:
        lines.append("kept whole (the mesh axis does not divide them): " + ", ".join(p.kept_whole))
    if p.memory is not None:
        m = p.memory
        lines.append(f"compiled step, XLA's memory analysis per device on this backend ({jax.default_backend()}, "
                     f"{jax.devices()[0].device_kind}; other backends schedule differently): arguments "
                     f"{m['arguments'] / gib:.3f} GiB, outputs {m['outputs'] / gib:.3f} GiB (aliased with arguments "
                     f"{m['aliased'] / gib:.3f} GiB), temporaries {m['temporaries'] / gib:.3f} GiB; lowered and compiled in "
                     f"{m['compile_s']:.1f} s")
    return "\n".join(lines)
