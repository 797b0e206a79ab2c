"""`led-flax train --dry-run`: the sharded train state and step, abstractly (`jax.eval_shape`): the mesh,
every parameter's shard shape, and the bytes each device holds. No weights, no data."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from led_flax import sharding as shd
from led_flax.modeling import model_for

from . import step as step_lib
from .config import TrainConfig
from .model import architecture


def plan(cfg: TrainConfig, devices=None, step: bool = True) -> dict:
    """Abstract state, shardings and sizes of `cfg`'s job on `devices` (default: all); with `step`,
    also the train step's abstract outputs (it traces the whole model)."""
    config = architecture(cfg)
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    model = model_for(config, "conditional_generation", dtype=dtype, param_dtype=jnp.float32,
                      gradient_checkpointing=cfg.model.gradient_checkpointing)
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices)
    tx = step_lib.optimizer(cfg.optimizer, cfg.steps)

    shapes = jax.eval_shape(step_lib.fresh_state(model, tx, cfg.seed), jax.random.PRNGKey(0))
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    accum = cfg.optimizer.grad_accum_steps
    micro = cfg.data.batch_size // accum
    n, t = cfg.data.max_source_length, cfg.data.max_target_length
    batch = {k: jax.ShapeDtypeStruct((accum, micro, n), jnp.int32)
             for k in ("input_ids", "attention_mask", "global_attention_mask")}
    batch["labels"] = jax.ShapeDtypeStruct((accum, micro, t), jnp.int32)
    train_step = step_lib.make_train_step(model, tx, step_lib.schedule(cfg.optimizer, cfg.steps), mesh, shardings,
                                          cfg.optimizer.label_smoothing, cfg.model.dropout)
    step_output = None
    if step:
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
            step_output = jax.eval_shape(train_step.jitted, shapes, batch)
    params_dev, params_all = shd.bytes_per_device(shapes["params"], shardings["params"])
    state_dev, state_all = shd.bytes_per_device(shapes, shardings)
    batch_shard = step_lib.batch_shardings(mesh).shard_shape((accum, micro, n))
    return {"config": config, "mesh": mesh, "shapes": shapes, "shardings": shardings,
            "params_bytes": (params_dev, params_all), "state_bytes": (state_dev, state_all),
            "batch_shard": batch_shard, "kept_whole": shd.kept_whole(shapes["params"], mesh),
            "step_output": step_output}


def dry_run(cfg: TrainConfig) -> str:
    p = plan(cfg)
    gib = 2 ** 30
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(p["shapes"]["params"]))
    lines = [f"model: {cfg.model.init} ({n_params:,} parameters), compute {cfg.model.dtype}, "
             f"gradient checkpointing {cfg.model.gradient_checkpointing}",
             f"mesh: {dict(p['mesh'].shape)} over {p['mesh'].devices.size} devices",
             f"params: {p['params_bytes'][1] / gib:.3f} GiB, {p['params_bytes'][0] / gib:.3f} GiB per device",
             f"train state (params + AdamW moments): {p['state_bytes'][1] / gib:.3f} GiB, "
             f"{p['state_bytes'][0] / gib:.3f} GiB per device",
             f"batch [accum, examples, tokens] per device: {p['batch_shard']}"]
    flat = jax.tree_util.tree_leaves_with_path(p["shapes"]["params"])
    specs = jax.tree_util.tree_leaves(p["shardings"]["params"])
    lines.append("parameter shardings (first encoder and decoder layer; the others repeat them):")
    for (keys, leaf), sh in zip(flat, specs):
        path = shd.path_of(keys)
        if "layers_" in path and not ("layers_0/" in path):
            continue
        lines.append(f"  {path:<72} {str(tuple(leaf.shape)):<16} {str(sh.spec):<28} shard "
                     f"{sh.shard_shape(tuple(leaf.shape))}")
    if p["kept_whole"]:
        lines.append("kept whole (the mesh axis does not divide them): " + ", ".join(p["kept_whole"]))
    return "\n".join(lines)
