"""Run in a subprocess with 8 fake CPU devices by test_sequence.py: the sequence-sharded encoder,
generation and train-step gradients against the unsharded model, on a sequence-only mesh (8) and a
sequence x data mesh (4 x 2). Prints one JSON line of relative errors and ids.

With the argument `splash` (test_splash.py), the sharded model runs attention_implementation splash
(the kernel in interpret mode, on each device's slice) against the unsharded xla model, on one
data x sequence x tensor = 2 x 2 x 2 mesh only (interpret mode is slow; XLA's partitioner aborted
there until the kernel kept its examples whole inside the sequence region): the encoder on the case
with globals on shard boundaries and padding across a shard, greedy generation and the gradients."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from led_flax import LEDConfig, init_params, model_for
from led_flax.decoding.generation import GenerationConfig, generate
from led_flax.parallel import sequence, sharding as shd
from led_flax.train import step as step_lib
from led_flax.utils.trees import flatten

MESHES = {"sequence8": dict(sequence=8), "sequence4xdata2": dict(data=2, sequence=4)}
SPLASH = sys.argv[1:] == ["splash"]


def config(window, implementation="xla"):
    return LEDConfig(vocab_size=61, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=24, attention_window=window,
                     max_encoder_position_embeddings=128, max_decoder_position_embeddings=16, dropout=0.0,
                     init_std=0.3, attention_implementation=implementation)


def sharded_model(window):
    """The model the sharded runs use: the oracle's (xla), or splash's."""
    return model_for(config(window, "splash" if SPLASH else "xla"))


def inputs(n, globals_per_row, pad_from=None, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 61, (2, n)).astype(np.int32)
    am = np.ones_like(ids)
    if pad_from is not None:
        am[1, pad_from:] = 0
        ids[1, pad_from:] = 1
    gm = np.zeros_like(ids)
    for row, positions in enumerate(globals_per_row):
        gm[row, positions] = 1
    return ids, am, gm


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def mesh_of(name):
    return shd.make_mesh(**{"data": 1, "fsdp": 1, "tensor": 1, **MESHES[name]})


out = {"devices": len(jax.devices()), "encoder": {}, "generate": {}, "grads": {}}
# (window, length, globals of each row, padding of row 1 from, meshes): 8 devices hold 2 (window 2) or 8
# (window 8) tokens each, 4 devices 16
CASES = {
    "window2_no_global": (2, 16, ([], []), None, ["sequence8"]),
    "window8_one_global": (8, 64, ([0], [0]), None, ["sequence8"]),
    "window8_globals_on_shard_boundaries_padding_across_one": (8, 64, ([0, 7, 8, 15, 16, 40], [0, 23, 24]), 20,
                                                               ["sequence8", "sequence4xdata2"]),
    "windows_2_and_8_many_globals": ([2, 8], 64, ([0, 1, 2, 31, 32, 33, 63], [5]), 37, ["sequence8"]),
}
if SPLASH:
    MESHES = {"data2xsequence2xtensor2": dict(data=2, sequence=2, tensor=2)}
    CASES = {"window8_globals_on_shard_boundaries_padding_across_one": (8, 64, ([0, 7, 8, 15, 16, 40], [0, 23, 24]), 20,
                                                                        list(MESHES))}
for name, (window, n, globals_per_row, pad_from, meshes) in CASES.items():
    cfg = config(window)
    model = model_for(cfg)
    params = init_params(model, jax.random.PRNGKey(1))
    ids, am, gm = inputs(n, globals_per_row, pad_from)
    slots = max(1, max(len(g) for g in globals_per_row))
    ref = model.apply({"params": params}, ids, attention_mask=am, global_attention_mask=gm,
                      num_global_slots=slots, method="encode").last_hidden_state
    for mesh_name in meshes:
        got = sequence.encode(sharded_model(window), params, ids, am, gm, mesh=mesh_of(mesh_name),
                              num_global_slots=slots)
        real = am[:, :, None] > 0  # padding rows are zeros in both, compared too
        out["encoder"][f"{name}/{mesh_name}"] = {"rel": rel(np.where(real, got, 0), np.where(real, ref, 0)),
                                                 "sharding": str(got.sharding.spec)}

# generation: greedy and beam search ids and scores
cfg = config(8)
model = model_for(cfg)
params = init_params(model, jax.random.PRNGKey(2))
ids, am, gm = inputs(64, ([0, 16], [0]), pad_from=30, seed=3)
SEARCHES = (("greedy", GenerationConfig(max_length=12, no_repeat_ngram_size=1), "sequence8"),
            ("beam", GenerationConfig(max_length=12, num_beams=3, num_return_sequences=2, no_repeat_ngram_size=2),
             "sequence4xdata2"))
if SPLASH:
    SEARCHES = (("greedy", SEARCHES[0][1], "data2xsequence2xtensor2"),)
for search, gen, mesh_name in SEARCHES:
    ref = generate(model, params, ids, am, gm, gen, num_global_slots=2)
    got = generate(sharded_model(8), params, ids, am, gm, gen, num_global_slots=2, mesh=mesh_of(mesh_name))
    out["generate"][search] = {"ref": ref.sequences.tolist(), "mesh": mesh_name, "ids": got.sequences.tolist(),
                               "scores_rel": rel(got.scores, ref.scores)}

# gradients of the train step's loss (the labels shifted into the decoder, one global slot)
rng = np.random.default_rng(4)
batch = {"input_ids": ids, "attention_mask": am, "global_attention_mask": (np.arange(64) == 0)[None].repeat(2, 0).astype(np.int32),
         "labels": rng.integers(3, 61, (2, 9)).astype(np.int32)}
batch["labels"][1, 6:] = -100


def loss_and_grads(mesh):
    def loss(p):
        arrays = {k: jnp.asarray(v) for k, v in batch.items()}
        s, c = step_lib.batch_loss(model if mesh is None else sharded_model(8), p, arrays, None, mesh=mesh)
        return s / c
    return jax.jit(jax.value_and_grad(loss))(params)


ref_loss, ref_grads = loss_and_grads(None)
ref_flat = flatten(jax.device_get(ref_grads))
total = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in ref_flat.values()))
for mesh_name in MESHES:
    mesh = mesh_of(mesh_name)
    with jax.set_mesh(mesh):
        loss, grads = loss_and_grads(mesh)
    flat = flatten(jax.device_get(grads))
    diff = {k: np.linalg.norm(np.asarray(flat[k], np.float64) - np.asarray(v, np.float64)) for k, v in ref_flat.items()}
    worst = max(float(diff[k] / max(np.linalg.norm(np.asarray(v, np.float64)), 1e-3 * total)) for k, v in ref_flat.items())
    out["grads"][mesh_name] = {"loss_rel": rel(loss, ref_loss), "worst_leaf_rel": worst,
                               "all_rel": float(np.sqrt(sum(d ** 2 for d in diff.values())) / total)}
print("RESULT " + json.dumps(out))
