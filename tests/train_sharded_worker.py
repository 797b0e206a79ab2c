"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS) by test_train_sharding.py: prints JSON."""

import json

import jax
import numpy as np

from led_flax import LEDConfig
from led_flax.model.heads import model_for
from led_flax.parallel import sharding as shd
from led_flax.train import config as config_lib, step as step_lib
from led_flax.train.dry_run import plan

out = {"devices": len(jax.devices())}
config = LEDConfig(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=8,
                   max_encoder_position_embeddings=64, max_decoder_position_embeddings=32, dropout=0.0)
model = model_for(config, "conditional_generation")
opt = config_lib.OptimizerConfig(learning_rate=1e-2, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0,
                                 grad_accum_steps=2)
tx = step_lib.optimizer(opt, 10)
lr = step_lib.schedule(opt, 10)

rng = np.random.default_rng(0)
batches = []
for _ in range(2):
    n = 24
    ids = rng.integers(3, 96, (2, 8, n)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, ::3, n - 5:] = 0  # some padded rows
    ids[mask == 0] = 1
    glob = np.zeros_like(ids)
    glob[..., 0] = 1
    labels = rng.integers(3, 96, (2, 8, 10)).astype(np.int32)
    labels[:, ::2, 7:] = -100
    batches.append({"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob, "labels": labels})


def train(mesh):
    fresh = step_lib.fresh_state(model, tx, 0)
    shapes = jax.eval_shape(fresh, jax.random.PRNGKey(0))
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    state = jax.jit(fresh, out_shardings=shardings)(jax.random.PRNGKey(0))
    step = step_lib.make_train_step(model, tx, lr, mesh, shardings, 0.0, dropout=False)
    losses = []
    for b in batches:
        state, m = step(state, step_lib.global_batch(b, mesh))
        losses.append(float(m["loss"]))
    return state, shardings, losses


one_state, _, one_losses = train(shd.make_mesh(1, 1, 1, jax.devices()[:1]))
mesh = shd.make_mesh(2, 2, 2)
state, shardings, losses = train(mesh)
flat_one = {shd.path_of(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(one_state["params"])}
flat = {shd.path_of(k): v for k, v in jax.tree_util.tree_leaves_with_path(state["params"])}
out["losses_1"], out["losses_8"] = one_losses, losses
out["max_param_diff"] = max(float(np.max(np.abs(np.asarray(flat[k]) - flat_one[k]))) for k in flat)
out["shards"] = {k: [list(v.shape), list(v.addressable_shards[0].data.shape)] for k, v in flat.items()}
mu = {}
for k, v in jax.tree_util.tree_leaves_with_path(state["opt_state"]):
    names = "/".join(str(x.key) for x in k if isinstance(x, jax.tree_util.DictKey))
    if names.endswith("encoder/scan_0_1/fc1/kernel"):
        mu[jax.tree_util.keystr(k)] = list(v.addressable_shards[0].data.shape)
out["moment_shards"] = mu
b = step_lib.global_batch(batches[0], mesh)
out["batch_shard"] = list(b["input_ids"].addressable_shards[0].data.shape)

for name in ("led-base-16384", "led-large-16384"):  # the shipped configs, by name
    cfg = config_lib.load(name)
    p = plan(cfg, step=name == "led-base-16384")  # the step's eval_shape once: it traces the whole model
    encoder = p.setup.state["params"]["led"]["encoder"]
    fc1 = encoder[next(k for k in encoder if k.startswith("scan_"))]["fc1"]["kernel"]  # the one scanned run
    out[name] = {"mesh": dict(p.setup.mesh.shape), "params_bytes": p.params_bytes, "state_bytes": p.state_bytes,
                 "fc1_shard": list(fc1.sharding.shard_shape(tuple(fc1.shape))),
                 "batch_shard": list(p.batch_shard), "kept_whole": p.kept_whole,
                 "loss_shape": list(p.step_output[1]["loss"].shape) if p.step_output else []}
print("RESULT " + json.dumps(out))
