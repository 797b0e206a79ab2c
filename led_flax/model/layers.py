"""The building blocks both stacks share: dense and LayerNorm as the reference builds them, dropout and
LayerDrop, the embedding table (also the tied LM head), the feed-forward block, and the prelude of a
stack (token embeddings, learned positions, `layernorm_embedding`, dropout).

Shapes: b batch, t length, D d_model, V vocabulary.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from . import quantize
from .activations import ACTIVATIONS
from .config import LEDConfig
from .inputs import check_token_ids

Dtype = Any


class Dense(nn.Module):
    """nn.Dense (kernel [I, O], bias [O], the same names and arithmetic), whose kernel may also be a
    `quantize.QuantizedArray` (W [O, I]), applied by `quantize.dense`."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_std: float = 0.02

    @nn.compact
    def __call__(self, x):
        """x: [..., I] -> [..., O] in the compute dtype."""
        kernel = quantize.quantized_param(self, "kernel")
        if kernel is None:
            kernel = self.param("kernel", nn.initializers.normal(self.init_std), (x.shape[-1], self.features),
                                self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype) if self.use_bias else None
        return apply_dense(x, kernel, bias, self.dtype)


def apply_dense(x, kernel, bias, dtype):
    """x [..., I] times kernel [I, O] (or a `quantize.QuantizedArray` W [O, I]) plus bias [O] (or None)
    -> [..., O] in `dtype`: nn.Dense's arithmetic."""
    if isinstance(kernel, quantize.QuantizedArray):
        y = quantize.dense(x, kernel, dtype)
    else:  # nn.Dense's own steps
        x, kernel = jnp.asarray(x, dtype), jnp.asarray(kernel, dtype)
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    if bias is not None:
        y += jnp.reshape(jnp.asarray(bias, dtype), (1,) * (y.ndim - 1) + (-1,))
    return y


def fused_dense(modules, x):
    """Several bound `Dense` layers that read the same x [..., I], as one product over their kernels
    joined along the output axis: [..., sum of O] split back into one [..., O_k] per layer. For a
    decoding step, whose few rows make each product a pass over its weights: one pass over three
    kernels costs less than three (BENCHMARKS.md). Inside a loop the join depends on the weights only,
    so XLA computes it once, before the loop. Every output column is the same dot as the layer's own.
    The layers' parameters must exist (apply, not init); all share one dtype and kind of kernel."""
    params = [m.variables["params"] for m in modules]
    kernels = [p["kernel"] for p in params]
    if isinstance(kernels[0], quantize.QuantizedArray):
        kernel = quantize.concatenate_outputs(kernels)
        sizes = [k.shape[-2] for k in kernels]
    else:
        kernel = jnp.concatenate(kernels, axis=-1)  # [I, sum O]
        sizes = [k.shape[-1] for k in kernels]
    biases = [p.get("bias") for p in params]
    bias = None if biases[0] is None else jnp.concatenate(biases)
    y = apply_dense(x, kernel, bias, modules[0].dtype)
    return jnp.split(y, list(itertools.accumulate(sizes))[:-1], axis=-1)


def dense(cfg: LEDConfig, features: int, dtype, param_dtype, name: str | None = None, use_bias: bool = True):
    """A Dense initialised as the reference's Linear: normal(init_std) kernel, zero bias."""
    return Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, init_std=cfg.init_std, name=name)


def layer_norm(dtype, param_dtype, name: str | None = None):
    """torch's LayerNorm: eps 1e-5 and the two-pass variance (flax defaults to 1e-6 and E[x²]-E[x]²)."""
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name)


def dropout(module: nn.Module, x, rate: float, deterministic: bool, sequence_axis: str | None = None):
    """Inverted dropout with the module's `dropout` rng; the identity when deterministic or rate 0.
    With `sequence_axis` (x holds this device's slice of a sharded sequence) each device draws its own."""
    if deterministic or rate == 0.0:
        return x
    key = module.make_rng("dropout")
    if sequence_axis is not None:
        key = jax.random.fold_in(key, jax.lax.axis_index(sequence_axis))
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def layerdrop(module: nn.Module, rate: float, deterministic: bool, before, after):
    """LayerDrop: the layer's output, or (with probability `rate` in training) its input."""
    if deterministic or rate == 0.0:
        return after
    return jnp.where(jax.random.bernoulli(module.make_rng("dropout"), rate), before, after)


def constrain(hidden, tokens_over_sequence: bool = False):
    """Hidden states [b, t, D] between layers: batch split over the data axes, the model dimension whole
    (a no-op outside `nn.logical_axis_rules`, see `sharding.RULES`). With `tokens_over_sequence` (the
    encoder outside a sequence-sharded region) the length goes over the sequence axis; the decoder's
    tokens, and an encoder already running on one device's slice, stay whole."""
    return nn.with_logical_constraint(hidden, ("act_batch", "act_length" if tokens_over_sequence else None,
                                               "act_embed"))


class Embed(nn.Module):
    """An embedding table [num_embeddings, features]; lookups of `padding_idx` give its row no gradient,
    as torch's do. `attend` is the tied LM head. The table may be a `quantize.QuantizedArray`."""

    num_embeddings: int
    features: int
    init_std: float
    padding_idx: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        def init(key, shape, dtype):
            table = jax.random.normal(key, shape, dtype) * self.init_std
            return table if self.padding_idx is None else table.at[self.padding_idx].set(0)

        quantized = quantize.quantized_param(self, "embedding")
        self.embedding = quantized if quantized is not None else self.param(
            "embedding", init, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        """ids: [...] int -> rows [..., D] in the compute dtype."""
        if isinstance(self.embedding, quantize.QuantizedArray):
            return self.embedding.take_rows(ids, self.dtype)  # [..., D]
        rows = jnp.take(jnp.asarray(self.embedding), ids, axis=0)  # [..., D]
        if self.padding_idx is not None:  # no gradient reaches the table through padding lookups
            rows = jnp.where((ids == self.padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)
        return rows.astype(self.dtype)

    def attend(self, x):
        """x: [b, t, D] -> [b, t, V]: scores against every row."""
        if isinstance(self.embedding, quantize.QuantizedArray):
            return quantize.dense(x, self.embedding, self.dtype)  # [b, t, V]
        rows = math.prod(x.shape[:-1])
        if rows <= quantize.ROW_LIMIT:  # a decoding step: the product as [V, r], transposed apart (fused into
            # the product, the transpose makes XLA:CPU's product about twice as slow; BENCHMARKS.md)
            table = self.embedding.astype(self.dtype)
            logits = jax.lax.optimization_barrier(jnp.einsum("vd,rd->vr", table, x.reshape(rows, x.shape[-1])))
            return logits.T.reshape(x.shape[:-1] + (self.num_embeddings,))  # [b, t, V]
        return jnp.einsum("btd,vd->btv", x, self.embedding.astype(self.dtype))  # [b, t, V]


# Feed-forward intermediates [tokens, ffn_dim] of more bytes than this are computed a slice of the
# sequence at a time (lax.map), so a long input's FFN never holds its whole [n, ffn_dim] activations
# (at 64k tokens and ffn 3072 in float32: 805 MB each). Chunks are rows of the same products: the
# numbers do not move. Not while dropout draws (training), whose rng cannot be drawn inside the loop.
FFN_BYTES_PER_STEP = 32 * 2**20


def feed_forward(module: nn.Module, cfg: LEDConfig, hidden, fc1, fc2, final_layer_norm, deterministic: bool,
                 sequence_axis: str | None = None):
    """The post-LN feed-forward block of encoder and decoder layers: LN(x + fc2(act(fc1(x)))).
    hidden: [b, t, D]; fc1: D -> F and fc2: F -> D modules; past `FFN_BYTES_PER_STEP` of [b, t, F]
    intermediates (and without dropout) the sequence runs in chunks."""
    residual = hidden
    act = ACTIVATIONS[cfg.activation_function]
    b, t, _ = hidden.shape
    dropping = not deterministic and (cfg.activation_dropout > 0.0 or cfg.dropout > 0.0)
    token_bytes = b * fc1.features * jnp.dtype(module.dtype).itemsize
    chunks = -(-t * token_bytes // FFN_BYTES_PER_STEP)
    if chunks > 1 and not dropping and not module.is_initializing():
        size = -(-t // chunks)  # tokens per chunk; the last chunk is padded
        padded = jnp.pad(hidden, [(0, 0), (0, chunks * size - t), (0, 0)])
        xs = jnp.moveaxis(padded.reshape(b, chunks, size, -1), 1, 0)  # [chunks, b, size, D]
        h = jax.lax.map(lambda x: fc2(act(fc1(x))), xs)  # [chunks, b, size, D]
        h = jnp.moveaxis(h, 0, 1).reshape(b, chunks * size, -1)[:, :t]  # [b, t, D]
        return final_layer_norm(residual + h)
    h = act(fc1(hidden))
    h = dropout(module, h, cfg.activation_dropout, deterministic, sequence_axis)
    h = dropout(module, fc2(h), cfg.dropout, deterministic, sequence_axis)
    return final_layer_norm(residual + h)


class Stack(nn.Module):
    """What the encoder and decoder stacks share: their settings and their embeddings."""

    config: LEDConfig
    shared: Embed | None  # the tied token embeddings; None: the stack's own `embed_tokens` (untied)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # what each layer keeps for the backward pass (`REMAT_POLICIES`)
    scan_layers: bool = True  # layers as nn.scan over stacked parameters (`stacking.py`); False: unrolled
    # the mesh axis the encoder's sequence is sharded over (the stack then runs inside `jax.shard_map`,
    # see `led_flax.parallel.sequence`); None: unsharded
    sequence_axis: str | None = None

    def setup_embeddings(self, max_positions: int) -> None:
        """Called from `setup`: `embed_tokens` (the shared table, or the stack's own), `embed_positions`
        with `max_positions` rows and `layernorm_embedding`."""
        cfg = self.config
        check_remat(self.remat)
        self.embed_tokens = self.shared if self.shared is not None else Embed(
            cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.pad_token_id, self.dtype, self.param_dtype)
        self.embed_positions = Embed(max_positions, cfg.d_model, cfg.init_std, dtype=self.dtype,
                                     param_dtype=self.param_dtype)
        self.layernorm_embedding = layer_norm(self.dtype, self.param_dtype)


def input_embeddings(stack: nn.Module, ids, embeds, names: tuple[str, str]):
    """The token embeddings of a stack (encoder or decoder): looked up from ids (checked on the host)
    or given, [b, t, D] in the stack's dtype. Raises ValueError unless exactly one is given."""
    if (ids is None) == (embeds is None):
        raise ValueError(f"pass exactly one of {names[0]} and {names[1]}")
    if embeds is None:
        check_token_ids(ids, stack.config.vocab_size, names[0])
        embeds = stack.embed_tokens(ids)
    return embeds.astype(stack.dtype)


def embed_positions(stack: nn.Module, embeds, positions, deterministic: bool, sequence_axis: str | None = None):
    """embeds [b, t, D] plus the learned positions [t], then layernorm_embedding and dropout: the start
    of both stacks."""
    hidden = stack.layernorm_embedding(embeds + stack.embed_positions(positions)[None])
    return dropout(stack, hidden, stack.config.dropout, deterministic, sequence_axis)


# what a layer keeps for the backward pass: "none" keeps every activation; "full" only its input (the
# layer is recomputed); "save_dots" its input and the outputs of its weight matmuls (the projections and
# the feed-forward products, not the attention's batched score products)
REMAT_POLICIES = {
    "none": None,
    "full": lambda: None,
    "save_dots": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> str:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r} is not one of {', '.join(REMAT_POLICIES)}")
    return remat


def with_remat(fn, remat: str, in_scan: bool = False):
    """`fn(layer, *arrays)` under `nn.remat` with the named policy (`REMAT_POLICIES`). Python flags reach
    the layer through `fn`'s closure, so nothing is static by position. Inside a scan, XLA cannot
    merge the recomputation away, so common-subexpression prevention is off there (jax's advice)."""
    policy = REMAT_POLICIES[check_remat(remat)]
    return fn if policy is None else nn.remat(fn, policy=policy(), prevent_cse=not in_scan)


def scan_layers(fn, length: int, in_axes: tuple):
    """nn.scan of `fn(layer, carry, *args) -> (carry, per-layer outputs)` over `length` layers whose
    parameters carry a leading layer axis. in_axes: per arg, `nn.broadcast` (the same for every layer)
    or 0 (sliced along its leading axis). The outputs stack along a new leading axis. Dropout rngs
    differ per layer."""
    return nn.scan(fn, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=in_axes, length=length)


def split_layers(stacked, length: int) -> list:
    """Per-layer outputs of a scan (leading axis `length`) -> a list of `length` trees."""
    return [jax.tree_util.tree_map(lambda x, i=i: x[i], stacked) for i in range(length)]
