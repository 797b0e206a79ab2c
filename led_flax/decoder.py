"""LED's decoder: BART-style layers (causal self-attention, cross-attention over the encoder output,
feed-forward), and its static cache for generation (`cache.DecoderCache`).

Shapes: b batch, t decoder length, s cache positions, n encoder length, D d_model, h heads, d head dim.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import softmax_dtype
from .cache import DecoderCache, LayerCache
from .config import LEDConfig
from .layers import (Embed, constrain, dense, dropout, embed_positions, feed_forward, input_embeddings, layer_norm,
                     layerdrop, maybe_remat)
from .outputs import LEDDecoderOutput

Dtype = Any


class LEDDecoderAttention(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        cfg = self.config
        proj = partial(dense, cfg, cfg.d_model, self.dtype, self.param_dtype)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (proj() for _ in range(4))

    def _heads(self, x):  # [b, t, D] -> [b, h, t, d]
        h = self.config.decoder_attention_heads
        return x.reshape(x.shape[0], x.shape[1], h, x.shape[2] // h).transpose(0, 2, 1, 3)

    def key_value(self, states):
        """states: [b, s, D] -> keys and values [b, h, s, d], heads first: the layout of the decoder
        cache, so that a decoding step reads it without a transpose."""
        return self._heads(self.k_proj(states)), self._heads(self.v_proj(states))

    def __call__(self, hidden, mask, key_value, *, deterministic: bool, output_attentions: bool):
        """hidden: [b, t, D]; mask: [b or 1, 1, t, s] bool or None; key_value: ([kb, h, s, d], [kb, h, s, d])
        where kb divides b (the beams of an input share one row). Returns out [b, t, D] and the
        probabilities [b, h, t, s] (None without output_attentions)."""
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
        dropped = dropout(self, probs, cfg.attention_dropout, deterministic)
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
        self.self_attn_layer_norm = layer_norm(self.dtype, self.param_dtype)
        self.encoder_attn = LEDDecoderAttention(*args)
        self.encoder_attn_layer_norm = layer_norm(self.dtype, self.param_dtype)
        ffn = partial(dense, self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        self.fc1 = ffn(self.config.decoder_ffn_dim)
        self.fc2 = ffn(self.config.d_model)
        self.final_layer_norm = layer_norm(self.dtype, self.param_dtype)

    def cross_key_value(self, encoder_hidden_states):
        """[b, n, D] -> cross-attention keys and values [b, h, n, d]."""
        return self.encoder_attn.key_value(encoder_hidden_states)

    def __call__(self, hidden, self_mask, encoder_hidden_states, cross_mask, layer_cache: LayerCache | None,
                 cache_index, *, deterministic: bool, output_attentions: bool):
        """hidden: [b, t, D]; masks as `LEDDecoderAttention`; with a layer_cache, this step's keys and
        values are written at cache_index and the cached cross keys and values are read. Returns
        (hidden [b, t, D], self probs, cross probs, the updated LayerCache or None)."""
        cfg = self.config
        residual = hidden
        key_value = self.self_attn.key_value(hidden)
        if layer_cache is not None:  # write this step's keys/values into the static cache
            layer_cache = layer_cache.write_self(*key_value, cache_index)
            key_value = (layer_cache.self_k, layer_cache.self_v)
        h, self_probs = self.self_attn(hidden, self_mask, key_value, deterministic=deterministic,
                                       output_attentions=output_attentions)
        h = dropout(self, h, cfg.dropout, deterministic)
        hidden = self.self_attn_layer_norm(residual + h)

        residual = hidden
        cross_kv = ((layer_cache.cross_k, layer_cache.cross_v) if layer_cache is not None
                    else self.cross_key_value(encoder_hidden_states))
        h, cross_probs = self.encoder_attn(hidden, cross_mask, cross_kv, deterministic=deterministic,
                                           output_attentions=output_attentions)
        h = dropout(self, h, cfg.dropout, deterministic)
        hidden = self.encoder_attn_layer_norm(residual + h)
        hidden = feed_forward(self, cfg, hidden, self.fc1, self.fc2, self.final_layer_norm, deterministic)
        return hidden, self_probs, cross_probs, layer_cache


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
        self.layers = [LEDDecoderLayer(cfg, self.dtype, self.param_dtype) for _ in range(cfg.decoder_layers)]
        self.layernorm_embedding = layer_norm(self.dtype, self.param_dtype)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1) -> DecoderCache:
        """A static-shape cache for `max_length` decoder positions; cross-attention keys and values
        are computed here, once. With `beams` > 1 the self-attention cache holds `beams` rows per
        input (consecutive), which share the input's cross-attention keys and values.
        encoder_hidden_states: [b, n, D]. Raises ValueError past the decoder's positions."""
        cfg = self.config
        if max_length > cfg.max_decoder_position_embeddings:
            raise ValueError(f"max_length {max_length} exceeds max_decoder_position_embeddings "
                             f"({cfg.max_decoder_position_embeddings}); lower it")
        b = encoder_hidden_states.shape[0]
        h = cfg.decoder_attention_heads
        zeros = jnp.zeros((b * beams, h, max_length, cfg.d_model // h), self.dtype)  # [B, h, s, d]
        layers = []
        for layer in self.layers:
            k, v = layer.cross_key_value(encoder_hidden_states.astype(self.dtype))
            layers.append(LayerCache(self_k=zeros, self_v=zeros, cross_k=k, cross_v=v))
        return DecoderCache(index=jnp.zeros((), jnp.int32), layers=tuple(layers))

    def __call__(self, input_ids=None, *, attention_mask=None, encoder_hidden_states=None,
                 encoder_attention_mask=None, inputs_embeds=None, cache: DecoderCache | None = None,
                 deterministic: bool = True, output_attentions: bool = False,
                 output_hidden_states: bool = False) -> LEDDecoderOutput:
        """input_ids or inputs_embeds: [b, t] / [b, t, D]; attention_mask: [b, t] (or [b, s] over the
        cache positions when decoding with a cache); encoder_hidden_states [b or b/beams, n, D] with
        encoder_attention_mask [b or b/beams, n]. Raises ValueError past the decoder's positions."""
        cfg = self.config
        inputs_embeds = input_embeddings(self, input_ids, inputs_embeds,
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
            s = cache.max_length
            positions = cache.index + jnp.arange(t)
            self_mask = (jnp.arange(s)[None, :] <= positions[:, None])[None, None]  # [1, 1, t, s]
            if attention_mask is not None:  # [b, s] over the cache positions
                self_mask = self_mask & (attention_mask > 0)[:, None, None, :]
        cross_mask = None
        if encoder_attention_mask is not None:
            cross_mask = (encoder_attention_mask > 0)[:, None, None, :]  # [b, 1, 1, n]

        hidden = embed_positions(self, inputs_embeds, positions, deterministic)
        run_layer = maybe_remat(
            lambda layer, x, sm, enc, cm, lc, ci: layer(x, sm, enc, cm, lc, ci, deterministic=deterministic,
                                                         output_attentions=output_attentions),
            self.gradient_checkpointing)
        all_hidden, all_self, all_cross, new_layers = [], [], [], []
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            new_hidden, self_probs, cross_probs, layer_cache = run_layer(
                layer, hidden, self_mask, encoder_hidden_states, cross_mask,
                None if cache is None else cache.layer(i), None if cache is None else cache.index)
            hidden = constrain(layerdrop(self, cfg.decoder_layerdrop, deterministic, hidden, new_hidden))
            new_layers.append(layer_cache)
            all_self.append(self_probs)
            all_cross.append(cross_probs)
        if output_hidden_states:
            all_hidden.append(hidden)
        return LEDDecoderOutput(
            last_hidden_state=hidden, cache=None if cache is None else cache.advance(tuple(new_layers), t),
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_self) if output_attentions else None,
            cross_attentions=tuple(all_cross) if output_attentions else None)
