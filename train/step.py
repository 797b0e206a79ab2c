"""The optimizer, the sharded train state and the jitted train and eval steps.

`build_setup(cfg, led_config)` makes what a run and a dry run of one config share: the config check,
the mesh, the models, the optimizer and the train state's abstract shapes and shardings.

The loss of a step is the token sum over the token count of the whole step: every microbatch of
every device adds its summed cross entropy and its count, and one division happens at the end (not a
mean of per-microbatch means). Gradients are accumulated the same way, in float32.
"""

from __future__ import annotations

import re
from functools import partial
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from led_flax.parallel import sequence
from led_flax.parallel import sharding as shd
from led_flax.model.config import LEDConfig
from led_flax.model.losses import token_cross_entropy
from led_flax.model.inputs import shift_tokens_right
from led_flax.model.heads import model_for

from .config import OptimizerConfig, TrainConfig, check, with_attention
from .dropout_prng import DROPOUT_PRNG  # the masks' generator: XLA's, fast on a CPU (dropout_prng.py)

FROZEN = re.compile(r"final_logits_bias$")  # a buffer in the reference: it never trains
NO_DECAY = re.compile(r"(bias|scale)$")  # biases and LayerNorms, as transformers' Trainer


def _label_tree(params, fn):
    return jax.tree_util.tree_map_with_path(lambda keys, _: fn(shd.path_of(keys)), params)


def schedule(cfg: OptimizerConfig, steps: int) -> optax.Schedule:
    """Linear warmup from 0, then linear or cosine decay to `end_learning_rate` at `steps`, or constant."""
    warm = max(cfg.warmup_steps, 0)
    rest = max(steps - warm, 1)
    if cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.learning_rate, cfg.end_learning_rate, rest)
    elif cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.learning_rate, rest, alpha=cfg.end_learning_rate / cfg.learning_rate)
    else:
        decay = optax.constant_schedule(cfg.learning_rate)
    if not warm:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warm), decay], [warm])


def optimizer(cfg: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on kernels and embeddings) after global-norm clipping;
    `final_logits_bias` is frozen."""
    adamw = optax.adamw(schedule(cfg, steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        mask=lambda p: _label_tree(p, lambda path: not NO_DECAY.search(path)))
    trained = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw) if cfg.max_grad_norm else adamw
    return optax.multi_transform({"train": trained, "frozen": optax.set_to_zero()},
                                 lambda p: _label_tree(p, lambda path: "frozen" if FROZEN.search(path) else "train"))


def batch_loss(model, params, batch, key, label_smoothing: float = 0.0, deterministic: bool = True, mesh=None):
    """(summed token cross entropy, token count) of one microbatch: arrays [b, ...]. With a mesh whose
    sequence axis has several devices, under `jax.shard_map` each device runs the encoder on its slice
    of the tokens (`led_flax.parallel.sequence`); the loss is the same on every device."""
    if sequence.devices_of(mesh) > 1:
        tokens = sequence.TOKENS
        specs = {k: PartitionSpec() if k == "labels" else tokens for k in batch}
        body = partial(batch_loss, sequence.sharded_model(model, mesh), label_smoothing=label_smoothing,
                       deterministic=deterministic)
        return jax.shard_map(lambda p, b, k: body(p, b, k), mesh=mesh, in_specs=(PartitionSpec(), specs, PartitionSpec()),
                             out_specs=PartitionSpec(), axis_names={sequence.SEQUENCE_AXIS},
                             check_vma=sequence.checks_vma(model))(params, batch, key)
    cfg = model.config
    decoder_input_ids = shift_tokens_right(batch["labels"], cfg.pad_token_id, cfg.decoder_start_token_id)
    out = model.apply({"params": params}, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      global_attention_mask=batch["global_attention_mask"], decoder_input_ids=decoder_input_ids,
                      num_global_slots=1, deterministic=deterministic,
                      rngs=None if deterministic else {"dropout": key})
    return token_cross_entropy(out.logits, batch["labels"], label_smoothing=label_smoothing)


def loss_and_grads(model, params, batch, key, label_smoothing: float = 0.0, deterministic: bool = True,
                   mesh=None):
    """Batch arrays [accum, b, ...] -> (loss, token count, grads), all normalised by the step's count."""
    def micro(carry, xs):
        grads, total, count = carry
        mb, i = xs
        (s, c), g = jax.value_and_grad(
            lambda p: batch_loss(model, p, mb, jax.random.fold_in(key, i), label_smoothing, deterministic, mesh),
            has_aux=True)(params)
        grads = jax.tree_util.tree_map(lambda a, b: a + b.astype(a.dtype), grads, g)
        return (grads, total + s, count + c), None

    zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), params)
    accum = batch["labels"].shape[0]
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (grads, total, count), _ = jax.lax.scan(micro, init, (batch, jnp.arange(accum)))
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    return total / denom, count, jax.tree_util.tree_map(lambda g: g / denom, grads)


def init_state(params, tx, seed: int) -> dict:
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": jax.random.key_data(jax.random.key(seed, impl=DROPOUT_PRNG))}


def fresh_state(model, tx, seed: int):
    """rng -> a new train state: `model.init`'s parameters (the reference's init), zeroed AdamW moments."""
    def fresh(rng):
        ids = jnp.ones((1, 2), jnp.int32)
        return init_state(model.init(rng, ids, decoder_input_ids=ids)["params"], tx, seed)
    return fresh


def state_shardings(state_shapes: dict, tx, mesh) -> dict:
    """NamedShardings for the train state: params by the logical rules, and every copy of the
    parameter tree inside the optimizer state (AdamW's mu and nu), as optax's own
    `tree_map_params` finds them, sharded as the params; counters and the PRNG key replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    params = shd.param_shardings(state_shapes["params"], mesh)

    def masked(leaf) -> bool:  # a parameter that another transform of `multi_transform` holds
        return isinstance(leaf, optax.MaskedNode)

    opt = optax.tree_utils.tree_map_params(tx, lambda leaf, sharding: leaf if masked(leaf) else sharding,
                                           state_shapes["opt_state"], params,
                                           transform_non_params=lambda _: replicated, is_leaf=masked)
    return {"step": replicated, "params": params, "opt_state": opt, "rng": replicated}


@dataclass(frozen=True)
class Setup:
    """What a run and a dry run of one config both build (`build_setup`)."""
    config: LEDConfig
    model: nn.Module  # trains: the config's dropout, nn.remat per layer with gradient checkpointing
    eval_model: nn.Module  # the same parameters, no remat: validation loss and generation
    mesh: Mesh
    tx: optax.GradientTransformation
    lr: optax.Schedule  # step -> learning rate
    state: dict  # the train state as ShapeDtypeStructs that carry their shardings
    shardings: dict  # the train state's NamedShardings (the same tree)


def build_setup(cfg: TrainConfig, led_config: LEDConfig, devices=None) -> Setup:
    """The mesh over `devices` (default: every process's), `config.check`, the models (compute dtype
    `model.dtype`, float32 parameters), the optimizer and the abstract sharded train state; no weights.
    Raises ShardingError (a mesh that does not fit the devices) or TrainConfigError."""
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, devices, sequence=cfg.mesh.sequence)
    led_config = with_attention(cfg, led_config)
    check(cfg, led_config, mesh, shd.data_group(mesh)[1])
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    model = model_for(led_config, "conditional_generation", dtype=dtype, param_dtype=jnp.float32,
                      remat=cfg.model.remat, scan_layers=cfg.model.scan_layers)
    eval_model = model_for(led_config, "conditional_generation", dtype=dtype, param_dtype=jnp.float32,
                           scan_layers=cfg.model.scan_layers)
    tx = optimizer(cfg.optimizer, cfg.steps)
    shapes = jax.eval_shape(fresh_state(model, tx, cfg.seed), jax.random.PRNGKey(0))
    shardings = state_shardings(shapes, tx, mesh)
    state = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                   shapes, shardings)
    return Setup(config=led_config, model=model, eval_model=eval_model, mesh=mesh, tx=tx,
                 lr=schedule(cfg.optimizer, cfg.steps), state=state, shardings=shardings)


def initial_state(setup: Setup, seed: int, params=None) -> dict:
    """A new train state placed as `setup.shardings`: `params` (a host tree, e.g. pretrained weights,
    cast to the state's dtypes) or, without them, `model.init`'s; zeroed optimizer moments."""
    if params is None:
        fresh = fresh_state(setup.model, setup.tx, seed)
        return jax.jit(fresh, out_shardings=setup.shardings)(jax.random.PRNGKey(seed))
    host = jax.tree_util.tree_map(np.asarray, params)
    placed = jax.tree_util.tree_map(
        lambda a, s: jax.make_array_from_callback(a.shape, s.sharding, lambda idx: a[idx].astype(s.dtype)),
        host, setup.state["params"])
    return jax.jit(lambda p: init_state(p, setup.tx, seed), in_shardings=(setup.shardings["params"],),
                   out_shardings=setup.shardings)(placed)


BATCH_KEYS = ("input_ids", "attention_mask", "global_attention_mask", "labels")


def batch_shardings(mesh, accumulate: bool = True) -> dict:
    """NamedShardings of the batch arrays [accum, b, n] (or [b, n]), by key: the example axis over data x
    fsdp; the source tokens over the sequence axis (labels whole)."""
    ndim, axis = (3, 1) if accumulate else (2, 0)
    return {k: NamedSharding(mesh, shd.batch_spec(ndim, axis, tokens=k != "labels")) for k in BATCH_KEYS}


def make_train_step(model, tx, lr_schedule, mesh, shardings, label_smoothing: float = 0.0, dropout: bool = True):
    """The jitted step (state, batch) -> (state, metrics), with explicit shardings and the state donated."""
    deterministic = not dropout

    def step(state, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=DROPOUT_PRNG), state["step"])
        loss, count, grads = loss_and_grads(model, state["params"], batch, key, label_smoothing, deterministic, mesh)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss": loss, "tokens": count, "grad_norm": optax.global_norm(grads),
                   "update_norm": optax.global_norm(updates), "learning_rate": lr_schedule(state["step"])}
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "rng": state["rng"]}, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step, in_shardings=(shardings, batch_shardings(mesh)),
                     out_shardings=(shardings, replicated), donate_argnums=(0,))

    def run(state, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
            return jitted(state, batch)
    run.jitted = jitted
    return run


def make_eval_step(model, mesh, param_sharding):
    """The jitted (params, batch [b, ...]) -> (summed loss, token count), no dropout, no smoothing."""
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(lambda p, b: batch_loss(model, p, b, None, mesh=mesh),
                     in_shardings=(param_sharding, batch_shardings(mesh, accumulate=False)),
                     out_shardings=(replicated, replicated))

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
            return jitted(params, batch)
    return run


def global_batch(batch: dict, mesh, accumulate: bool = True) -> dict:
    """This process's rows (all their tokens) -> global arrays sharded over the mesh. The processes of a
    data group (`sharding.data_group`) give the same rows; each device takes its block of the rows and,
    over the sequence axis, of the tokens."""
    shardings = batch_shardings(mesh, accumulate)
    group, groups = shd.data_group(mesh)
    rows_axis = 1 if accumulate else 0
    out = {}
    for k, v in batch.items():
        rows = v.shape[rows_axis]
        shape = v.shape[:rows_axis] + (rows * groups,) + v.shape[rows_axis + 1:]

        def block(index, v=v, rows=rows):  # global index -> this group's rows
            index = list(index)
            r = index[rows_axis]
            index[rows_axis] = slice((r.start or 0) - group * rows, (r.stop if r.stop is not None else rows * groups)
                                     - group * rows)
            return v[tuple(index)]
        out[k] = jax.make_array_from_callback(shape, shardings[k], block)
    return out
