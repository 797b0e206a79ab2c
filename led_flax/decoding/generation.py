"""Generation under one `jax.jit`: greedy, beam search and sampling with a static decoder cache.

The encoder runs once, the cross-attention keys and values are computed once (`init_cache`), and
the decoder steps one token at a time inside a `lax.while_loop` that stops when every sequence is
done. Greedy search and sampling follow transformers 5's `_sample`, beam search its `_beam_search`
(max(2, 1 + number of eos ids) x num_beams candidates per step, only the top num_beams may finish,
the length penalty counts generated tokens), and the logits processors and warpers its
`logits_process.py`, in the same order (`processors.py`, `warpers.py`). `min_length` and `max_length`
count the decoder start token, as there. The encoder's input ids travel into the program for the
processors that read them (`encoder_no_repeat_ngram_size`, `encoder_repetition_penalty`).

The settings are split (`settings.split`): what changes shapes or control flow keys the program, and
the numbers (length_penalty, temperature, top_p, repetition_penalty, ..., one per input) are traced
arguments, so a sweep over them or a batch of requests with their own values runs one program.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jax.sharding import PartitionSpec as P

from led_flax.parallel import sequence
from led_flax.model.attention import count_global_slots, kernel_mesh
from .generation_config import GenerationConfig, GenerationSettingWarning
from led_flax.model.inputs import check_token_ids
from .search import beam_search, greedy_or_sample
from .settings import GenerationValues, split
from led_flax.model.stacking import unstack_layers

__all__ = ["GenerationConfig", "GenerationSettingWarning", "GenerateOutput", "generate"]


@struct.dataclass
class GenerateOutput:
    sequences: Any  # [b * num_return_sequences, length] int32, padded with pad_token_id
    scores: Any  # [b * num_return_sequences]: beam search's length-penalised score, else the summed log-prob


def _program(params, input_ids, attention_mask, global_attention_mask, rng, values: GenerationValues, *, model,
             cfg: GenerationConfig, slots: int, mesh):
    """Encoder once, cache once, then the decoding loop: one compiled program per (model, static
    settings, global slots, input shape, mesh), held by jax's own jit cache; `values` are traced. With
    a mesh whose sequence axis has several devices, the whole program runs under `jax.shard_map`,
    each device on its slice of the input (`led_flax.parallel.sequence`); the loop runs the same on
    every device."""
    search = partial(_search, model=sequence.sharded_model(model, mesh), cfg=cfg, slots=slots)
    if sequence.devices_of(mesh) == 1:
        return search(params, input_ids, attention_mask, global_attention_mask, rng, values)
    tokens = sequence.TOKENS
    sharded = jax.shard_map(search, mesh=mesh, in_specs=(P(), tokens, tokens, tokens, P(), P()), out_specs=P(),
                            axis_names={sequence.SEQUENCE_AXIS}, check_vma=sequence.checks_vma(model))
    return sharded(params, input_ids, attention_mask, global_attention_mask, rng, values)


_STATIC = ("model", "cfg", "slots", "mesh")
_run = jax.jit(_program, static_argnames=_STATIC)

# XLA:CPU options for a program whose cross-attention cache is int8: YNNPACK then fuses each product
# with the int8 -> float conversion of its keys or values (by default XLA writes a float32 copy of
# them first, every step), and keeps the int8 weights' multiply-and-sum products (reductions).
# A whole int8+kv8 beam-4 generation: 6.29 against 7.02 s; a float cache gains nothing from it
# (BENCHMARKS.md). Experimental in XLA 0.10; jax is pinned to 0.10.x.
CPU_INT8_CACHE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
_run_int8_cache = jax.jit(_program, static_argnames=_STATIC, compiler_options=CPU_INT8_CACHE_OPTIONS)


def program_for(model):
    """The jitted program `generate` runs for `model`: call it as
    `program(params, input_ids, attention_mask, global_attention_mask, prng_key, values, model=model,
    cfg=static, slots=num_global_slots, mesh=mesh_or_None)` (the keywords are static), where
    `static, values = settings.split(resolved_generation_config, batch)`. `jax.export.export(program, platforms=("tpu", "cuda"))` lowers it for the accelerators
    (tests/test_lowering.py). On a CPU with an int8 cross-attention cache it is compiled with
    `CPU_INT8_CACHE_OPTIONS`."""
    if model.cross_cache == "int8" and jax.default_backend() == "cpu":
        return _run_int8_cache
    return _run


def _search(params, input_ids, attention_mask, global_attention_mask, rng, values: GenerationValues, *, model,
            cfg: GenerationConfig, slots: int):
    if model.scan_layers:
        # a decode step reads every weight once: scanning over stacked weights slices (copies) them at
        # every step, 2-3x slower on a CPU, so the loop runs the unrolled layers over per-layer slices
        # taken once here (BENCHMARKS.md)
        params = unstack_layers(params, model.config)
        model = model.clone(scan_layers=False)
    variables = {"params": params}
    enc = model.apply(variables, input_ids, attention_mask, global_attention_mask, num_global_slots=slots,
                      method="encode").last_hidden_state
    batch = input_ids.shape[0]
    # the beams of an input share its encoder output and cross-attention keys and values
    cache = model.apply(variables, enc, cfg.max_length, cfg.num_beams, method="init_cache")

    def step(token, cache):
        out = model.apply(variables, token, enc, attention_mask, cache=cache, method="decode")
        return out.logits[:, -1].astype(jnp.float32), out.cache

    search = beam_search if cfg.num_beams > 1 else greedy_or_sample
    if model.sequence_axis is not None:  # the encoder-side processors read the whole input: [b, n] ids, small
        input_ids = jax.lax.all_gather(input_ids, model.sequence_axis, axis=1, tiled=True)
    keys = jax.vmap(lambda seed: jax.random.fold_in(rng, seed))(values.seed)  # [b]: a key per input
    return search(step, cache, cfg, values, batch, keys, input_ids)


def generate(model, params, input_ids, attention_mask=None, global_attention_mask=None,
             generation_config: GenerationConfig | None = None, prng_key=None, num_global_slots=None,
             sharding=None, mesh=None, seeds=None, **overrides) -> GenerateOutput:
    """Generates summaries (or any decoder output) for a batch, in one compiled program per
    (batch shape, settings).

    input_ids: [b, n]; attention_mask: [b, n] (default all ones); global_attention_mask: [b, n]
    (default: the first token, as LED's summarization checkpoints expect; transformers puts none).
    sharding: where to put the batch (a NamedSharding over the batch axis spreads it over devices).
    mesh: a mesh with a `sequence` axis of several devices splits each document over them
    (`led_flax.parallel.sequence`; n must be a multiple of `sequence.length_unit`); the batch goes over the
    other axes as `sharding` says. overrides: GenerationConfig fields. The numbers that do not change
    the program (length_penalty, temperature, top_p, typical_p, epsilon_cutoff, eta_cutoff,
    repetition_penalty, encoder_repetition_penalty, the exponential decay factor) may be one value or
    a list of b, one per input: a new value compiles nothing (`led_flax.decoding.settings`).
    prng_key: the key sampling draws from; seeds: [b] integers in [0, 2**32), input r draws from
    fold_in(prng_key, seeds[r]) (default: r), so its sample does not depend on the other inputs of the
    batch or on its place in it. Returns the sequences (decoder start token first, padded with
    pad_token_id, trimmed to the longest) and their scores.
    Raises TypeError for an override that is not a GenerationConfig field (or a transformers setting
    led-flax does not implement), ValueError for a bad value, group beam search, a token id outside
    the vocabulary, or per-input settings or seeds that are not one per input.
    """
    config = model.config
    cfg = generation_config or GenerationConfig()
    cfg = (cfg.replace(**overrides) if overrides else cfg).resolved(config)  # as given when already resolved
    input_ids = np.asarray(input_ids)
    check_token_ids(input_ids, config.vocab_size, "input_ids")
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    if attention_mask is None:
        attention_mask = np.ones_like(input_ids)
    if global_attention_mask is None:
        global_attention_mask = np.zeros_like(input_ids)
        global_attention_mask[:, 0] = 1
    slots = count_global_slots(global_attention_mask, attention_mask, num_global_slots)
    if cfg.do_sample and prng_key is None:
        raise ValueError("sampling needs a PRNG key: pass prng_key=jax.random.PRNGKey(seed)")
    rng = prng_key if prng_key is not None else jax.random.PRNGKey(0)
    if cfg.num_beams == 1 and cfg.num_return_sequences > 1:
        raise ValueError("num_return_sequences > 1 needs num_beams > 1 (sampling several per input: repeat "
                         "the inputs)")
    if sequence.devices_of(mesh) > 1:
        sequence.check_length(config, input_ids.shape[1], sequence.devices_of(mesh))
    arrays = [jnp.asarray(x, jnp.int32) for x in (input_ids, attention_mask, global_attention_mask)]
    if sharding is not None:
        arrays = [jax.device_put(x, sharding) for x in arrays]
    static, values = split(cfg, input_ids.shape[0], seeds)
    with kernel_mesh(config.attention_implementation, sharding):  # splash's kernel under a mesh: shard_map
        result = program_for(model)(params, *arrays, rng, values, model=model, cfg=static, slots=slots, mesh=mesh)
    length = int(result.length)
    return GenerateOutput(sequences=np.asarray(result.sequences)[:, :length], scores=np.asarray(result.scores))
