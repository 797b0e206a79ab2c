"""One document's encoder spread over several devices: the sequence axis of the mesh.

Each device holds a contiguous slice of the tokens, a whole number of attention blocks. The model
modules, cloned with `sequence_axis`, run inside `jax.shard_map` (manual over the sequence axis only:
batch and parameter sharding over the other axes stay automatic) and exchange what Longformer's local
attention needs: one block of keys and values from each neighbour, the few global tokens' keys and
values, and the partial softmax statistics of the global rows (`attention.py`). The encoder's [n, D]
activations are never gathered onto one device. The decoder runs whole on every device; its
cross-attention combines its softmax over the devices' encoder positions the same way, so the
encoder output is never gathered either.

The functions here wrap the model's calls: `encode` (the encoder alone), `loss_fn` (the train step's
summed loss) and, in `generation.generate`, the whole decoding loop.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

SEQUENCE_AXIS = "sequence"


def devices_of(mesh: Mesh | None) -> int:
    """How many devices the sequence is split over (1 without a mesh or a sequence axis)."""
    if mesh is None or SEQUENCE_AXIS not in mesh.shape:
        return 1
    return mesh.shape[SEQUENCE_AXIS]


def length_unit(config, devices: int) -> int:
    """Input lengths must be a multiple of this: each of `devices` shards then holds whole attention
    blocks of every layer (block = window / 2), and the whole length is a multiple of the largest
    window (the reference's padding). 1 device: the largest window. config: an LEDConfig (only its
    `attention_window` is read). The one home of this rule: the encoder, the buckets and training's
    lengths all ask it."""
    window = max(config.attention_window)
    if devices == 1:  # the unsharded encoder pads each layer to its own blocks itself
        return window
    return math.lcm(devices * math.lcm(*(w // 2 for w in config.attention_window)), window)


def sharded_model(model, mesh: Mesh | None):
    """`model` cloned to run on one sequence shard when the mesh splits the sequence, else `model`."""
    if devices_of(mesh) == 1:
        return model
    return model.clone(sequence_axis=SEQUENCE_AXIS)


def checks_vma(model) -> bool:
    """Whether `jax.shard_map` over the sequence axis checks which values vary over it (`check_vma`):
    not when the encoder may run the splash kernel, whose Pallas call gives its outputs no such type
    (and in interpret mode, its loop's carries lose it: "manual axis types do not match"); MaxText
    runs its shard_map around splash unchecked too."""
    return model.config.attention_implementation == "xla"


def check_length(config, n: int, devices: int) -> None:
    """Raises ValueError when n tokens cannot be split over `devices` into whole attention blocks."""
    unit = length_unit(config, devices)
    if n % unit:
        raise ValueError(f"an input of {n} tokens does not split over {devices} sequence devices into whole "
                         f"attention blocks: pad it to a multiple of {unit} (led_flax.parallel.sequence.length_unit)")


TOKENS = P(None, SEQUENCE_AXIS)  # [b, n] inputs: the tokens over the sequence axis, the batch automatic


def encode_program(model, mesh, num_global_slots: int, mask_names=("attention_mask", "global_attention_mask")):
    """The jitted encoder with the sequence split over the mesh's `sequence` axis: (params,
    input_ids [b, n], {name: mask [b, n]} for `mask_names`) -> last hidden state [b, n, D], sharded
    along the sequence. `mesh` may be a `jax.sharding.AbstractMesh`, for `jax.export` (tests lower it
    for TPU and CUDA on 8 abstract devices)."""
    sharded = sharded_model(model, mesh)

    def body(params, ids, masks):
        return sharded.apply({"params": params}, ids, num_global_slots=num_global_slots, method="encode",
                             **masks).last_hidden_state

    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), TOKENS, {k: TOKENS for k in mask_names}),
                                 out_specs=P(None, SEQUENCE_AXIS), axis_names={SEQUENCE_AXIS},
                                 check_vma=checks_vma(model)))


def encode(model, params, input_ids, attention_mask=None, global_attention_mask=None, *, mesh: Mesh,
           num_global_slots: int):
    """The encoder's last hidden state [b, n, D], computed with the sequence split over the mesh's
    `sequence` axis and returned sharded along it. input_ids and masks: [b, n], n a multiple of
    `length_unit`. num_global_slots: static (the masks are traced inside the program)."""
    check_length(model.config, input_ids.shape[1], devices_of(mesh))
    masks = {k: v for k, v in (("attention_mask", attention_mask), ("global_attention_mask", global_attention_mask))
             if v is not None}
    program = encode_program(model, mesh, num_global_slots, tuple(masks))
    return program(params, jnp.asarray(input_ids), {k: jnp.asarray(v) for k, v in masks.items()})


__all__ = ["SEQUENCE_AXIS", "devices_of", "length_unit", "sharded_model", "checks_vma", "check_length",
           "encode_program", "encode"]
