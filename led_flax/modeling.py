"""LED as Flax linen modules: encoder, decoder, and the four heads of transformers' LED.

Parameter names follow the PyTorch module names (`led/encoder/layers_0/self_attn/longformer_self_attn/
query/kernel` is `led.encoder.layers.0.self_attn.longformer_self_attn.query.weight`, transposed), so
the conversion table in `convert/` stays short. Losses live in `losses.py`; generation and the train
step live outside the modules and call `apply`.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import losses
from .attention import (FactoredProjection, count_global_slots, gather_rows, global_token_indices,
                        longformer_self_attention, softmax_dtype)
from .config import LEDConfig
from .outputs import (LEDDecoderOutput, LEDEncoderBaseModelOutput, LEDSeq2SeqLMOutput, LEDSeq2SeqModelOutput,
                      LEDSeq2SeqQuestionAnsweringModelOutput, LEDSeq2SeqSequenceClassifierOutput)

Dtype = Any

ACTIVATIONS = {
    "gelu": partial(nn.gelu, approximate=False),  # torch's exact GELU, not jax's default tanh form
    "gelu_new": partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
}


# ---------------------------------------------------------------------------------------------- helpers
def check_token_ids(ids, vocab_size: int, name: str) -> None:
    """Host-side check: JAX would silently read NaN (or clamp) for ids outside the table."""
    if ids is None or isinstance(ids, jax.core.Tracer):
        return
    a = np.asarray(ids)
    bad = (a < 0) | (a >= vocab_size)
    if bad.any():
        found = sorted(set(a[bad].tolist()))[:8]
        raise ValueError(f"{name} holds token ids outside the vocabulary [0, {vocab_size}): {found}; "
                         f"check that the tokenizer belongs to this checkpoint (labels use -100 to "
                         f"ignore a position, inputs never do)")


def shift_tokens_right(input_ids, pad_token_id: int, decoder_start_token_id: int):
    """[b, t] -> [b, t]: start token first, the rest shifted right, -100 replaced by padding."""
    input_ids = jnp.asarray(input_ids)
    start = jnp.full((input_ids.shape[0], 1), decoder_start_token_id, input_ids.dtype)
    shifted = jnp.concatenate([start, input_ids[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


def _dense(cfg: LEDConfig, features: int, dtype, param_dtype, name: str | None = None, use_bias: bool = True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=nn.initializers.normal(cfg.init_std), bias_init=nn.initializers.zeros)


def _layer_norm(dtype, param_dtype, name: str | None = None):
    # torch's LayerNorm: eps 1e-5 and the two-pass variance (flax defaults to 1e-6 and E[x²]-E[x]²)
    return nn.LayerNorm(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, name=name)


def _dropout(module: nn.Module, x, rate: float, deterministic: bool):
    if deterministic or rate == 0.0:
        return x
    keep = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _layerdrop(module: nn.Module, rate: float, deterministic: bool, before, after):
    """LayerDrop: the layer's output, or (with probability `rate` in training) its input."""
    if deterministic or rate == 0.0:
        return after
    return jnp.where(jax.random.bernoulli(module.make_rng("dropout"), rate), before, after)


def _constrain(hidden):
    """Hidden states [b, t, D] between layers: batch split over the data axes, the rest whole (a no-op
    outside `nn.logical_axis_rules`, see `sharding.RULES`)."""
    return nn.with_logical_constraint(hidden, ("act_batch", "act_length", "act_embed"))


def _input_embeddings(stack: nn.Module, ids, embeds, names: tuple[str, str]):
    """The token embeddings of a stack (encoder or decoder) from ids (checked on the host) or given
    embeddings, in the stack's dtype."""
    if (ids is None) == (embeds is None):
        raise ValueError(f"pass exactly one of {names[0]} and {names[1]}")
    if embeds is None:
        check_token_ids(ids, stack.config.vocab_size, names[0])
        embeds = stack.embed_tokens(ids)
    return embeds.astype(stack.dtype)


def _embed_positions(stack: nn.Module, embeds, positions, deterministic: bool):
    """Embeddings plus learned positions, layernorm_embedding, dropout: the start of both stacks."""
    hidden = stack.layernorm_embedding(embeds + stack.embed_positions(positions)[None])
    return _dropout(stack, hidden, stack.config.dropout, deterministic)


class Embed(nn.Module):
    """An embedding table; lookups of `padding_idx` give its row no gradient, as torch's does."""

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

        self.embedding = self.param("embedding", init, (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        rows = jnp.take(jnp.asarray(self.embedding), ids, axis=0)  # [..., D]
        if self.padding_idx is not None:  # no gradient reaches the table through padding lookups
            rows = jnp.where((ids == self.padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)
        return rows.astype(self.dtype)

    def attend(self, x):
        # x: [b, t, D]; table: [V, D] -> [b, t, V]
        return jnp.einsum("btd,vd->btv", x, self.embedding.astype(self.dtype))


def _feed_forward(module: nn.Module, cfg: LEDConfig, hidden, fc1, fc2, final_layer_norm, deterministic: bool):
    """The post-LN feed-forward block of encoder and decoder layers."""
    residual = hidden
    h = ACTIVATIONS[cfg.activation_function](fc1(hidden))
    h = _dropout(module, h, cfg.activation_dropout, deterministic)
    h = _dropout(module, fc2(h), cfg.dropout, deterministic)
    return final_layer_norm(residual + h)


# ---------------------------------------------------------------------------------------------- encoder
@struct.dataclass
class EncoderMasks:
    """Per-batch masks computed once and shared by every encoder layer."""

    real: Any  # [b, n] bool: not padding
    is_global: Any  # [b, n] bool
    global_idx: Any  # [b, g] int32: positions of the global tokens, n in empty slots
    global_valid: Any  # [b, g] bool


class _DenseParams(nn.Module):
    """The parameters of an nn.Dense (same names, shapes and init), returned unapplied, split by head."""

    features: int
    init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, heads: int, head_dim: int):
        kernel = self.param("kernel", nn.initializers.normal(self.init_std), (self.features, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        # kernel: [D, D] -> [D, h, d]; bias: [D] -> [h, d]
        return (jnp.asarray(kernel, self.dtype).reshape(self.features, heads, head_dim),
                jnp.asarray(bias, self.dtype).reshape(heads, head_dim))


class LongformerSelfAttention(nn.Module):
    config: LEDConfig
    layer_id: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, masks: EncoderMasks, deterministic: bool = True, output_attentions: bool = False):
        cfg = self.config
        b, n, D = hidden.shape
        h, hd = cfg.encoder_attention_heads, D // cfg.encoder_attention_heads
        dense = partial(_dense, cfg, D, self.dtype, self.param_dtype)
        split = lambda x: x.reshape(x.shape[0], x.shape[1], h, hd)  # [b, n, D] -> [b, n, h, d]
        scale = math.sqrt(hd)

        q = split(dense("query")(hidden) / scale)
        k = split(dense("key")(hidden))
        v = split(dense("value")(hidden))
        g = masks.global_idx.shape[1]
        if g:
            qg = split(dense("query_global")(gather_rows(hidden, masks.global_idx)) / scale)  # [b, g, h, d]
            if g < hd and not self.is_initializing():  # fold the projection into the few global queries
                kg, vg = (FactoredProjection(hidden, *_DenseParams(D, cfg.init_std, self.dtype, self.param_dtype,
                                                                   name=name)(h, hd))
                          for name in ("key_global", "value_global"))
            else:
                kg = split(dense("key_global")(hidden))  # [b, n, h, d]
                vg = split(dense("value_global")(hidden))  # [b, n, h, d]
        else:
            qg = kg = vg = None
            if self.is_initializing():  # create the global projections even when the init batch has none
                for name in ("query_global", "key_global", "value_global"):
                    dense(name)(hidden[:, :0])
        rate = cfg.attention_dropout
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        out, probs, global_probs = longformer_self_attention(
            q, k, v, qg, kg, vg, one_sided=cfg.attention_window[self.layer_id] // 2, real=masks.real,
            is_global=masks.is_global, global_idx=masks.global_idx, global_valid=masks.global_valid,
            dropout_rate=rate, dropout_rng=rng, return_probs=output_attentions)
        return out.reshape(b, n, D), probs, global_probs


class LEDEncoderAttention(nn.Module):
    config: LEDConfig
    layer_id: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, masks, deterministic=True, output_attentions=False):
        out, probs, global_probs = LongformerSelfAttention(
            self.config, self.layer_id, self.dtype, self.param_dtype, name="longformer_self_attn")(
            hidden, masks, deterministic, output_attentions)
        out = _dense(self.config, self.config.d_model, self.dtype, self.param_dtype, "output")(out)
        return out, probs, global_probs


class LEDEncoderLayer(nn.Module):
    config: LEDConfig
    layer_id: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, masks, deterministic=True, output_attentions=False):
        cfg = self.config
        residual = hidden
        h, probs, global_probs = LEDEncoderAttention(cfg, self.layer_id, self.dtype, self.param_dtype,
                                                     name="self_attn")(hidden, masks, deterministic,
                                                                       output_attentions)
        h = _dropout(self, h, cfg.dropout, deterministic)
        hidden = _layer_norm(self.dtype, self.param_dtype, "self_attn_layer_norm")(residual + h)
        dense = partial(_dense, cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = _feed_forward(self, cfg, hidden, dense(cfg.encoder_ffn_dim, name="fc1"),
                               dense(cfg.d_model, name="fc2"),
                               _layer_norm(self.dtype, self.param_dtype, "final_layer_norm"), deterministic)
        return hidden, probs, global_probs


class LEDEncoder(nn.Module):
    config: LEDConfig
    embed_tokens: Embed
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.embed_positions = Embed(cfg.max_encoder_position_embeddings, cfg.d_model, cfg.init_std,
                                     dtype=self.dtype, param_dtype=self.param_dtype)
        layer = nn.remat(LEDEncoderLayer, static_argnums=(3, 4)) if self.gradient_checkpointing else LEDEncoderLayer
        self.layers = [layer(cfg, i, self.dtype, self.param_dtype) for i in range(cfg.encoder_layers)]
        self.layernorm_embedding = _layer_norm(self.dtype, self.param_dtype)

    def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None, inputs_embeds=None,
                 num_global_slots: int | None = None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False):
        cfg = self.config
        inputs_embeds = _input_embeddings(self, input_ids, inputs_embeds, ("input_ids", "inputs_embeds"))
        b, n = inputs_embeds.shape[:2]
        if n > cfg.max_encoder_position_embeddings:
            raise ValueError(f"the input has {n} tokens but the encoder has "
                             f"{cfg.max_encoder_position_embeddings} positions; truncate the input")
        slots = count_global_slots(global_attention_mask, attention_mask, num_global_slots)
        if attention_mask is None:
            attention_mask = jnp.ones((b, n), jnp.int32)
        if global_attention_mask is None:
            global_attention_mask = jnp.zeros((b, n), jnp.int32)

        # pad on the right to a multiple of the largest window, as the reference does
        window = max(cfg.attention_window)
        pad = -n % window
        real = attention_mask > 0
        is_global = (global_attention_mask > 0) & real  # 4.x's -1 padding reads as local
        if pad:
            pad_embed = self.embed_tokens(jnp.full((b, pad), cfg.pad_token_id, jnp.int32))
            inputs_embeds = jnp.concatenate([inputs_embeds, pad_embed], axis=1)
            real = jnp.pad(real, [(0, 0), (0, pad)])
            is_global = jnp.pad(is_global, [(0, 0), (0, pad)])
        m = n + pad
        # padding positions past the table reuse its last row: they never reach a real token
        positions = jnp.minimum(jnp.arange(m), cfg.max_encoder_position_embeddings - 1)
        hidden = _embed_positions(self, inputs_embeds, positions, deterministic)

        idx, valid = global_token_indices(is_global, slots)
        masks = EncoderMasks(real=real, is_global=is_global, global_idx=idx, global_valid=valid)
        all_hidden, all_attn, all_global = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                all_hidden.append(hidden)
            new_hidden, probs, global_probs = layer(hidden, masks, deterministic, output_attentions)
            hidden = _constrain(_layerdrop(self, cfg.encoder_layerdrop, deterministic, hidden, new_hidden))
            if output_attentions:
                all_attn.append(probs[:, :, :n])
                if slots:
                    all_global.append(global_probs)  # kept at the padded length, as in HF
        if output_hidden_states:
            all_hidden.append(hidden)
        return LEDEncoderBaseModelOutput(
            last_hidden_state=hidden[:, :n],
            hidden_states=tuple(x[:, :n] for x in all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attn) if output_attentions else None,
            global_attentions=tuple(all_global) if output_attentions and slots else None,
        )


# ---------------------------------------------------------------------------------------------- decoder
class LEDDecoderAttention(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        dense = partial(_dense, cfg, cfg.d_model, self.dtype, self.param_dtype)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (
            dense() for _ in range(4))

    def _heads(self, x):  # [b, t, D] -> [b, h, t, d]
        h = self.config.decoder_attention_heads
        return x.reshape(x.shape[0], x.shape[1], h, x.shape[2] // h).transpose(0, 2, 1, 3)

    def key_value(self, states):
        """states: [b, s, D] -> keys and values [b, h, s, d], heads first: the layout of the decoder
        cache, so that a decoding step reads it without a transpose."""
        return self._heads(self.k_proj(states)), self._heads(self.v_proj(states))

    def __call__(self, hidden, mask, key_value, deterministic=True, output_attentions=False):
        """hidden: [b, t, D]; mask: [b or 1, 1, t, s] bool or None; key_value: ([b, h, s, d], [b, h, s, d])."""
        cfg = self.config
        b, t, D = hidden.shape
        hd = D // cfg.decoder_attention_heads
        q = self._heads(self.q_proj(hidden) * hd ** -0.5)  # [b, h, t, d]
        k, v = key_value
        h, kb = q.shape[1], k.shape[0]
        g = b // kb  # > 1 when beams share one cached encoder output
        # the g query rows of one input become one query axis: [kb, h, g*t, d], heads first
        qg = q.reshape(kb, g, h, t, hd).transpose(0, 2, 1, 3, 4).reshape(kb, h, g * t, hd)
        sdt = softmax_dtype(q.dtype)
        scores = jnp.einsum("bhqd,bhsd->bhqs", qg, k).astype(sdt)  # [kb, h, g*t, s]
        if mask is not None:  # [b or kb or 1, 1, t or 1, s] -> [kb or 1, 1, g*t, s]
            mask = jnp.broadcast_to(mask, (mask.shape[0], 1, t, mask.shape[-1]))
            if mask.shape[0] == b and g > 1:
                mask = mask.reshape(kb, g, 1, t, -1).transpose(0, 2, 1, 3, 4).reshape(kb, 1, g * t, -1)
            elif g > 1:
                mask = jnp.tile(mask, (1, 1, g, 1))
            scores = jnp.where(mask, scores, float(jnp.finfo(sdt).min))
        probs = jax.nn.softmax(scores, axis=-1)
        dropped = _dropout(self, probs, cfg.attention_dropout, deterministic)
        out = jnp.einsum("bhqs,bhsd->bhqd", dropped.astype(self.dtype), v)  # [kb, h, g*t, d]
        out = out.reshape(kb, h, g, t, hd).transpose(0, 2, 3, 1, 4).reshape(b, t, D)  # [b, t, D]
        probs = probs.reshape(kb, h, g, t, -1).transpose(0, 2, 1, 3, 4).reshape(b, h, t, -1)  # [b, h, t, s]
        return self.out_proj(out), (probs if output_attentions else None)


class LEDDecoderLayer(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        args = (self.config, self.dtype, self.param_dtype)
        self.self_attn = LEDDecoderAttention(*args)
        self.self_attn_layer_norm = _layer_norm(self.dtype, self.param_dtype)
        self.encoder_attn = LEDDecoderAttention(*args)
        self.encoder_attn_layer_norm = _layer_norm(self.dtype, self.param_dtype)
        dense = partial(_dense, self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        self.fc1 = dense(self.config.decoder_ffn_dim)
        self.fc2 = dense(self.config.d_model)
        self.final_layer_norm = _layer_norm(self.dtype, self.param_dtype)

    def cross_key_value(self, encoder_hidden_states):
        return self.encoder_attn.key_value(encoder_hidden_states)

    def __call__(self, hidden, self_mask, encoder_hidden_states, cross_mask, layer_cache=None,
                 cache_index=None, deterministic=True, output_attentions=False):
        cfg = self.config
        residual = hidden
        key_value = self.self_attn.key_value(hidden)
        new_cache = None
        if layer_cache is not None:  # write this step's keys/values into the static cache
            zero = jnp.zeros_like(cache_index)
            at = (zero, zero, cache_index, zero)  # [b, h, s, d]: write at position cache_index
            key_value = (jax.lax.dynamic_update_slice(layer_cache["self_k"], key_value[0].astype(
                             layer_cache["self_k"].dtype), at),
                         jax.lax.dynamic_update_slice(layer_cache["self_v"], key_value[1].astype(
                             layer_cache["self_v"].dtype), at))
            new_cache = dict(layer_cache, self_k=key_value[0], self_v=key_value[1])
        h, self_probs = self.self_attn(hidden, self_mask, key_value, deterministic, output_attentions)
        h = _dropout(self, h, cfg.dropout, deterministic)
        hidden = self.self_attn_layer_norm(residual + h)

        residual = hidden
        cross_kv = ((layer_cache["cross_k"], layer_cache["cross_v"]) if layer_cache is not None
                    else self.encoder_attn.key_value(encoder_hidden_states))
        h, cross_probs = self.encoder_attn(hidden, cross_mask, cross_kv, deterministic, output_attentions)
        h = _dropout(self, h, cfg.dropout, deterministic)
        hidden = self.encoder_attn_layer_norm(residual + h)
        hidden = _feed_forward(self, cfg, hidden, self.fc1, self.fc2, self.final_layer_norm, deterministic)
        return hidden, self_probs, cross_probs, new_cache


class LEDDecoder(nn.Module):
    config: LEDConfig
    embed_tokens: Embed
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.embed_positions = Embed(cfg.max_decoder_position_embeddings, cfg.d_model, cfg.init_std,
                                     dtype=self.dtype, param_dtype=self.param_dtype)
        layer = nn.remat(LEDDecoderLayer, static_argnums=(7, 8)) if self.gradient_checkpointing else LEDDecoderLayer
        self.layers = [layer(cfg, self.dtype, self.param_dtype) for _ in range(cfg.decoder_layers)]
        self.layernorm_embedding = _layer_norm(self.dtype, self.param_dtype)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1):
        """A static-shape cache for `max_length` decoder positions; cross-attention keys and values
        are computed here, once. With `beams` > 1 the self-attention cache holds `beams` rows per
        input (consecutive), which share the input's cross-attention keys and values."""
        cfg = self.config
        if max_length > cfg.max_decoder_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_decoder_position_embeddings "
                             f"({cfg.max_decoder_position_embeddings}); lower it")
        b = encoder_hidden_states.shape[0]
        h = cfg.decoder_attention_heads
        zeros = jnp.zeros((b * beams, h, max_length, cfg.d_model // h), self.dtype)  # [b, h, s, d]
        layers = []
        for layer in self.layers:
            k, v = layer.cross_key_value(encoder_hidden_states.astype(self.dtype))
            layers.append({"self_k": zeros, "self_v": zeros, "cross_k": k, "cross_v": v})
        return {"index": jnp.zeros((), jnp.int32), "layers": tuple(layers)}

    def __call__(self, input_ids=None, attention_mask=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, inputs_embeds=None, cache=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        cfg = self.config
        inputs_embeds = _input_embeddings(self, input_ids, inputs_embeds,
                                          ("decoder_input_ids", "decoder_inputs_embeds"))
        b, t = inputs_embeds.shape[:2]

        if cache is None:
            if t > cfg.max_decoder_position_embeddings:
                raise ValueError(f"the decoder input has {t} tokens but the decoder has "
                                 f"{cfg.max_decoder_position_embeddings} positions; truncate the labels")
            positions = jnp.arange(t)
            self_mask = None
            if t > 1:  # the reference builds no mask at all for a single uncached token
                self_mask = jnp.tril(jnp.ones((t, t), bool))[None, None]  # [1, 1, t, t]
                if attention_mask is not None:
                    self_mask = self_mask & (attention_mask > 0)[:, None, None, :]
        else:
            index = cache["index"]
            s = cache["layers"][0]["self_k"].shape[2]
            positions = index + jnp.arange(t)
            self_mask = (jnp.arange(s)[None, :] <= positions[:, None])[None, None]  # [1, 1, t, s]
            if attention_mask is not None:  # [b, s] over the cache positions
                self_mask = self_mask & (attention_mask > 0)[:, None, None, :]
        cross_mask = None
        if encoder_attention_mask is not None:
            cross_mask = (encoder_attention_mask > 0)[:, None, None, :]  # [b, 1, 1, n]

        hidden = _embed_positions(self, inputs_embeds, positions, deterministic)
        all_hidden, all_self, all_cross, new_layers = [], [], [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            layer_cache = None if cache is None else cache["layers"][i]
            new_hidden, self_probs, cross_probs, new_cache = layer(
                hidden, self_mask, encoder_hidden_states, cross_mask, layer_cache,
                None if cache is None else cache["index"], deterministic, output_attentions)
            hidden = _constrain(_layerdrop(self, cfg.decoder_layerdrop, deterministic, hidden, new_hidden))
            new_layers.append(new_cache)
            all_self.append(self_probs)
            all_cross.append(cross_probs)
        if output_hidden_states:
            all_hidden.append(hidden)
        new_cache = None if cache is None else {"index": cache["index"] + t, "layers": tuple(new_layers)}
        return LEDDecoderOutput(
            last_hidden_state=hidden, cache=new_cache,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions else None)


# ---------------------------------------------------------------------------------------------- models
class LEDModel(nn.Module):
    """The bare encoder-decoder (`transformers.LEDModel`); its params sit at the root of the tree."""

    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        cfg = self.config
        self.shared = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.pad_token_id, self.dtype,
                            self.param_dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, gradient_checkpointing=self.gradient_checkpointing)
        self.encoder = LEDEncoder(cfg, self.shared, **kw)
        self.decoder = LEDDecoder(cfg, self.shared, **kw)

    def encode(self, input_ids=None, attention_mask=None, global_attention_mask=None, inputs_embeds=None,
               num_global_slots=None, deterministic=True, output_attentions=False, output_hidden_states=False):
        return self.encoder(input_ids, attention_mask, global_attention_mask, inputs_embeds, num_global_slots,
                            deterministic, output_attentions, output_hidden_states)

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_inputs_embeds=None, cache=None, deterministic=True,
               output_attentions=False, output_hidden_states=False):
        return self.decoder(decoder_input_ids, decoder_attention_mask, encoder_hidden_states,
                            encoder_attention_mask, decoder_inputs_embeds, cache, deterministic,
                            output_attentions, output_hidden_states)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1):
        return self.decoder.init_cache(encoder_hidden_states, max_length, beams)

    def attend(self, hidden):
        return self.shared.attend(hidden)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None,
                 decoder_inputs_embeds=None, num_global_slots=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        cfg = self.config
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("without input_ids, pass decoder_input_ids or decoder_inputs_embeds")
            decoder_input_ids = shift_tokens_right(input_ids, cfg.pad_token_id, cfg.decoder_start_token_id)
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, global_attention_mask, inputs_embeds,
                                          num_global_slots, deterministic, output_attentions, output_hidden_states)
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = LEDEncoderBaseModelOutput(*encoder_outputs)
        dec = self.decode(decoder_input_ids, encoder_outputs.last_hidden_state, attention_mask,
                          decoder_attention_mask, decoder_inputs_embeds, None, deterministic,
                          output_attentions, output_hidden_states)
        return LEDSeq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, cache=dec.cache,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            encoder_global_attentions=encoder_outputs.global_attentions)


def _seq2seq_fields(out: LEDSeq2SeqModelOutput) -> dict:
    return {k: getattr(out, k) for k in LEDSeq2SeqModelOutput.__dataclass_fields__}


class _LEDHead(nn.Module):
    """A model with the body under `led/`, as in every transformers LED head."""

    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    gradient_checkpointing: bool = False

    def setup(self):
        self.led = LEDModel(self.config, self.dtype, self.param_dtype, self.gradient_checkpointing)
        self.setup_head()

    def setup_head(self):
        raise NotImplementedError

    def encode(self, *args, **kwargs):
        return self.led.encode(*args, **kwargs)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1):
        return self.led.init_cache(encoder_hidden_states, max_length, beams)


class LEDForConditionalGeneration(_LEDHead):
    """Summarization: the tied LM head plus `final_logits_bias`, a buffer that never gets a gradient."""

    def setup_head(self):
        cfg = self.config
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (1, cfg.vocab_size),
                                            self.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, self.dtype, self.param_dtype, use_bias=False)

    def logits(self, hidden):
        """hidden: [b, t, D] -> logits [b, t, V] in float32 (or float64)."""
        if self.config.tie_word_embeddings:
            logits = self.led.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        dt = softmax_dtype(logits.dtype)
        return logits.astype(dt) + jax.lax.stop_gradient(self.final_logits_bias).astype(dt)

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, encoder_attention_mask=None,
               decoder_attention_mask=None, decoder_inputs_embeds=None, cache=None, deterministic=True,
               output_attentions=False, output_hidden_states=False):
        """One decoder pass (or a cached step); returns logits and the updated cache."""
        dec = self.led.decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask,
                              decoder_attention_mask, decoder_inputs_embeds, cache, deterministic,
                              output_attentions, output_hidden_states)
        return LEDSeq2SeqLMOutput(logits=self.logits(dec.last_hidden_state), last_hidden_state=dec.last_hidden_state,
                                  cache=dec.cache, decoder_hidden_states=dec.hidden_states,
                                  decoder_attentions=dec.attentions, cross_attentions=dec.cross_attentions)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 labels=None, num_global_slots=None, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
        out = self.led(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                       global_attention_mask, inputs_embeds, decoder_inputs_embeds, num_global_slots,
                       deterministic, output_attentions, output_hidden_states)
        logits = self.logits(out.last_hidden_state)
        loss = None if labels is None else losses.mean_token_cross_entropy(logits, labels)
        return LEDSeq2SeqLMOutput(loss=loss, logits=logits, **_seq2seq_fields(out))


class LEDClassificationHead(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, hidden, deterministic=True):
        cfg = self.config
        hidden = _dropout(self, hidden, cfg.classifier_dropout, deterministic)
        hidden = jnp.tanh(_dense(cfg, cfg.d_model, self.dtype, self.param_dtype, "dense")(hidden))
        hidden = _dropout(self, hidden, cfg.classifier_dropout, deterministic)
        return _dense(cfg, cfg.num_labels, self.dtype, self.param_dtype, "out_proj")(hidden)


class LEDForSequenceClassification(_LEDHead):
    """transformers 4.x's head: the decoder state at the last eos of the input, through a tanh MLP."""

    def setup_head(self):
        self.classification_head = LEDClassificationHead(self.config, self.dtype, self.param_dtype)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 labels=None, num_global_slots=None, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        if input_ids is None:
            raise ValueError("LEDForSequenceClassification pools at the input's last eos token, so it needs "
                             "input_ids (inputs_embeds alone cannot say where eos is), as in transformers")
        eos = input_ids == cfg.eos_token_ids[0]  # [b, n]
        if not isinstance(input_ids, jax.core.Tracer):
            counts = (np.asarray(input_ids) == cfg.eos_token_ids[0]).sum(axis=1)
            if len(set(counts.tolist())) > 1 or counts.min() == 0:
                raise ValueError(f"every example needs the same, non-zero number of eos tokens "
                                 f"(id {cfg.eos_token_ids[0]}); found {counts.tolist()}")
        if decoder_input_ids is not None and decoder_input_ids.shape != input_ids.shape:
            raise ValueError(f"the head pools the decoder state at the input's last eos, so decoder_input_ids "
                             f"must have the input's shape {input_ids.shape}, not {decoder_input_ids.shape}; "
                             f"leave them out to use the shifted input")
        out = self.led(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                       global_attention_mask, inputs_embeds, decoder_inputs_embeds, num_global_slots,
                       deterministic, output_attentions, output_hidden_states)
        n = eos.shape[1]
        last_eos = n - 1 - jnp.argmax(eos[:, ::-1], axis=1)  # [b]
        pooled = jnp.take_along_axis(out.last_hidden_state, last_eos[:, None, None], axis=1)[:, 0]  # [b, D]
        logits = self.classification_head(pooled, deterministic)
        logits = logits.astype(softmax_dtype(logits.dtype))
        loss = None if labels is None else losses.classification_loss(logits, labels, cfg.problem_type,
                                                                      cfg.num_labels)
        return LEDSeq2SeqSequenceClassifierOutput(loss=loss, logits=logits, **_seq2seq_fields(out))


class LEDForQuestionAnswering(_LEDHead):
    """Span extraction: start and end logits from the decoder states."""

    def setup_head(self):
        self.qa_outputs = _dense(self.config, 2, self.dtype, self.param_dtype)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, start_positions=None, end_positions=None,
                 inputs_embeds=None, decoder_inputs_embeds=None, num_global_slots=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        out = self.led(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                       global_attention_mask, inputs_embeds, decoder_inputs_embeds, num_global_slots,
                       deterministic, output_attentions, output_hidden_states)
        logits = self.qa_outputs(out.last_hidden_state)  # [b, t, 2]
        logits = logits.astype(softmax_dtype(logits.dtype))
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = losses.span_loss(start_logits, end_logits, start_positions, end_positions)
        return LEDSeq2SeqQuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                                      **_seq2seq_fields(out))


MODEL_CLASSES = {
    "base": LEDModel,
    "conditional_generation": LEDForConditionalGeneration,
    "sequence_classification": LEDForSequenceClassification,
    "question_answering": LEDForQuestionAnswering,
}


def model_for(config: LEDConfig, head: str | None = None, **kwargs) -> nn.Module:
    """The module for `head` (default: the one `config.architectures` names, else summarization)."""
    head = head or config.head or "conditional_generation"
    if head not in MODEL_CLASSES:
        raise ValueError(f"unknown head {head!r}; use one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[head](config, **kwargs)


def init_params(module: nn.Module, rng=None):
    """Fresh parameters drawn as the reference draws them (normal(init_std), zero biases, unit
    LayerNorms, a zero padding row), for models trained from scratch."""
    cfg = module.config
    rng = jax.random.PRNGKey(0) if rng is None else rng
    ids = jnp.full((1, 2), cfg.eos_token_ids[0] if cfg.eos_token_ids else cfg.pad_token_id, jnp.int32)
    return jax.jit(lambda r: module.init(r, ids, decoder_input_ids=ids)["params"])(rng)
