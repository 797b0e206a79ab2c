"""LED's decoder: BART-style layers (causal self-attention, cross-attention over the encoder output,
feed-forward), and its static cache for generation (`cache.DecoderCache`).

Shapes: b batch, t decoder length, s cache positions, n encoder length, D d_model, h heads, d head dim.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import sharded_softmax, softmax_dtype
from .cache import CrossKeyValue, DecoderCache, KeyValue, LayerCache
from .config import LEDConfig
from .inputs import check_binary_mask, check_decoder_length
from .layers import (Stack, constrain, dense, dropout, embed_positions, feed_forward, fused_dense, input_embeddings,
                     layer_norm, layerdrop, scan_layers, split_layers, with_remat)
from .outputs import LEDDecoderOutput
from .stacking import decoder_runs, run_name

Dtype = Any


class LEDDecoderAttention(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    # cross-attention over an encoder output sharded along this mesh axis (inside `jax.shard_map`): the
    # softmax over the encoder positions is combined across devices (`attention.sharded_softmax`)
    sequence_axis: str | None = None

    def setup(self):
        cfg = self.config
        proj = partial(dense, cfg, cfg.d_model, self.dtype, self.param_dtype)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (proj() for _ in range(4))

    def _heads(self, x):  # [b, t, D] -> [b, h, t, d]
        h = self.config.decoder_attention_heads
        return x.reshape(x.shape[0], x.shape[1], h, x.shape[2] // h).transpose(0, 2, 1, 3)

    def key_value(self, states) -> KeyValue:
        """states: [b, s, D] -> keys and values [b, h, s, d], heads first: the self-attention cache's
        layout (the cross-attention cache transposes its keys once, `cache.CrossKeyValue.build`)."""
        return KeyValue(keys=self._heads(self.k_proj(states)), values=self._heads(self.v_proj(states)))

    def fused_projections(self, hidden):
        """hidden: [b, t, D] -> (queries [b, t, D] before scaling, keys and values [b, h, t, d]) from one
        product over the three kernels (`layers.fused_dense`): a decoding step's self-attention."""
        q, k, v = fused_dense((self.q_proj, self.k_proj, self.v_proj), hidden)
        return q, KeyValue(keys=self._heads(k), values=self._heads(v))

    def __call__(self, hidden, mask, key_value: KeyValue | CrossKeyValue, *, deterministic: bool,
                 output_attentions: bool, queries=None):
        """hidden: [b, t, D]; mask: [b or 1, 1, t, s] bool or None; key_value: the keys and values of kb
        rows over s positions (a KeyValue, or the cached CrossKeyValue), where kb divides b (the beams of
        an input share one row); queries: q_proj(hidden) [b, t, D] when already computed
        (`fused_projections`). Returns out [b, t, D] and the probabilities [b, h, t, s] (None without
        output_attentions)."""
        cfg = self.config
        b, t, D = hidden.shape
        hd = D // cfg.decoder_attention_heads
        q = self._heads((self.q_proj(hidden) if queries is None else queries) * hd ** -0.5)  # [b, h, t, d]
        h, kb = q.shape[1], key_value.batch
        g = b // kb  # > 1 when beams share one cached encoder output
        # the g query rows of one input become one query axis: [kb, h, g*t, d], heads first
        qg = q.reshape(kb, g, h, t, hd).transpose(0, 2, 1, 3, 4).reshape(kb, h, g * t, hd)
        sdt = softmax_dtype(q.dtype)
        scores = key_value.scores(qg).astype(sdt)  # [kb, h, g*t, s]
        if mask is not None:  # [b or kb or 1, 1, t or 1, s] -> [kb or 1, 1, g*t, s]
            mask = jnp.broadcast_to(mask, (mask.shape[0], 1, t, mask.shape[-1]))
            if mask.shape[0] == b and g > 1:
                mask = mask.reshape(kb, g, 1, t, -1).transpose(0, 2, 1, 3, 4).reshape(kb, 1, g * t, -1)
            elif g > 1:
                mask = jnp.tile(mask, (1, 1, g, 1))
            scores = jnp.where(mask, scores, float(jnp.finfo(sdt).min))
        if self.sequence_axis is None:
            probs = jax.nn.softmax(scores, axis=-1)
        else:  # the keys are this device's encoder positions: normalise after summing over devices
            if output_attentions:
                raise ValueError("output_attentions is not available with the sequence sharded over devices")
            probs, denom = sharded_softmax(scores, self.sequence_axis)
        dropped = dropout(self, probs, cfg.attention_dropout, deterministic, self.sequence_axis)
        out = key_value.mix(dropped.astype(self.dtype))  # [kb, h, g*t, d]
        if self.sequence_axis is not None:
            out = jax.lax.psum(out, self.sequence_axis) / denom[..., None].astype(out.dtype)
        out = out.reshape(kb, h, g, t, hd).transpose(0, 2, 3, 1, 4).reshape(b, t, D)  # [b, t, D]
        probs = probs.reshape(kb, h, g, t, -1).transpose(0, 2, 1, 3, 4).reshape(b, h, t, -1)  # [b, h, t, s]
        return self.out_proj(out), (probs if output_attentions else None)


class LEDDecoderLayer(nn.Module):
    config: LEDConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    sequence_axis: str | None = None  # the encoder output's sequence sharding (cross-attention only)

    def setup(self):
        args = (self.config, self.dtype, self.param_dtype)
        self.self_attn = LEDDecoderAttention(*args)
        self.self_attn_layer_norm = layer_norm(self.dtype, self.param_dtype)
        self.encoder_attn = LEDDecoderAttention(*args, sequence_axis=self.sequence_axis)
        self.encoder_attn_layer_norm = layer_norm(self.dtype, self.param_dtype)
        ffn = partial(dense, self.config, dtype=self.dtype, param_dtype=self.param_dtype)
        self.fc1 = ffn(self.config.decoder_ffn_dim)
        self.fc2 = ffn(self.config.d_model)
        self.final_layer_norm = layer_norm(self.dtype, self.param_dtype)

    def cross_key_value(self, encoder_hidden_states) -> KeyValue:
        """[b, n, D] -> cross-attention keys and values [b, h, n, d]."""
        return self.encoder_attn.key_value(encoder_hidden_states)

    def __call__(self, hidden, self_mask, encoder_hidden_states, cross_mask, layer_cache: LayerCache | None,
                 cache_index, *, deterministic: bool, output_attentions: bool):
        """hidden: [b, t, D]; masks as `LEDDecoderAttention`; with a layer_cache, this step's keys and
        values are written at cache_index and the cached cross keys and values are read. Returns
        (hidden [b, t, D], self probs, cross probs, the updated LayerCache or None)."""
        cfg = self.config
        residual = hidden
        if layer_cache is not None:  # write this step's keys/values into the static cache
            queries, key_value = self.self_attn.fused_projections(hidden)
            layer_cache = layer_cache.write_self(key_value, cache_index)
            key_value = layer_cache.self_key_value
        else:
            queries, key_value = None, self.self_attn.key_value(hidden)
        h, self_probs = self.self_attn(hidden, self_mask, key_value, deterministic=deterministic,
                                       output_attentions=output_attentions, queries=queries)
        h = dropout(self, h, cfg.dropout, deterministic)
        hidden = self.self_attn_layer_norm(residual + h)

        residual = hidden
        cross_kv = layer_cache.cross if layer_cache is not None else self.cross_key_value(encoder_hidden_states)
        h, cross_probs = self.encoder_attn(hidden, cross_mask, cross_kv, deterministic=deterministic,
                                           output_attentions=output_attentions)
        h = dropout(self, h, cfg.dropout, deterministic)
        hidden = self.encoder_attn_layer_norm(residual + h)
        hidden = feed_forward(self, cfg, hidden, self.fc1, self.fc2, self.final_layer_norm, deterministic)
        return hidden, self_probs, cross_probs, layer_cache


class LayerOutputs(NamedTuple):
    """What one decoder layer hands back besides its output."""

    cache: Any  # the updated LayerCache, or None without a cache
    hidden_in: Any  # [b, t, D] the layer's input (with output_hidden_states), else None
    attentions: Any  # [b, h, t, t or s] or None
    cross_attentions: Any  # [b, h, t, n] or None


class LEDDecoder(Stack):
    """The decoder stack (settings: `layers.Stack`). scan_layers: the layers run as one `nn.scan` over
    stacked parameters (and a stacked cache); else unrolled. With `sequence_axis` (the encoder output is
    sharded over it, inside `jax.shard_map`) the decoder runs whole on every device, its
    cross-attention combined across devices. cross_cache: how `init_cache` stores the cross-attention
    keys and values ('float', or 'int8' with a scale per row, head and position; `cache.CrossKeyValue`)."""

    cross_cache: str = "float"

    def setup(self):
        cfg = self.config
        self.setup_embeddings(cfg.max_decoder_position_embeddings)
        layer = partial(LEDDecoderLayer, cfg, self.dtype, self.param_dtype, self.sequence_axis)
        if self.scan_layers:
            for start, stop in decoder_runs(cfg):
                setattr(self, run_name(start, stop), layer())
        else:
            self.layers = [layer() for _ in range(cfg.decoder_layers)]

    def _runs(self):
        """(module, number of layers) per scanned run, or per layer when unrolled."""
        if self.scan_layers:
            return [(getattr(self, run_name(a, b)), b - a) for a, b in decoder_runs(self.config)]
        return [(layer, 1) for layer in self.layers]

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
        states = encoder_hidden_states.astype(self.dtype)
        layers = []
        for module, length in self._runs():
            if self.scan_layers:  # keys and values [L, b, h, n, d] of every layer of the run
                cross = scan_layers(lambda layer, c, x: (c, layer.cross_key_value(x)), length,
                                    in_axes=(nn.broadcast,))(module, None, states)[1]
                shape = (length, b * beams, h, max_length, cfg.d_model // h)  # [L, B, h, s, d]
            else:
                cross = module.cross_key_value(states)
                shape = (b * beams, h, max_length, cfg.d_model // h)  # [B, h, s, d]
            zeros = jnp.zeros(shape, self.dtype)
            layers.append(LayerCache(self_k=zeros, self_v=zeros, cross=CrossKeyValue.build(cross, self.cross_cache)))
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
        check_binary_mask(attention_mask, "decoder_attention_mask")

        if cache is None:
            check_decoder_length(t, cfg, "decoder_input_ids (or decoder_inputs_embeds)")
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
            cross_mask = (encoder_attention_mask != 0)[:, None, None, :]  # [b, 1, 1, n]: any non-zero attends, as there

        hidden = embed_positions(self, inputs_embeds, positions, deterministic)

        def one(layer, x, layer_cache, sm, enc, cm, index):
            new, self_probs, cross_probs, layer_cache = layer(x, sm, enc, cm, layer_cache, index,
                                                              deterministic=deterministic,
                                                              output_attentions=output_attentions)
            new = constrain(layerdrop(layer, cfg.decoder_layerdrop, deterministic, x, new))
            return new, LayerOutputs(layer_cache, x if output_hidden_states else None, self_probs, cross_probs)

        index = None if cache is None else cache.index
        broadcast = (self_mask, encoder_hidden_states, cross_mask, index)
        outputs, new_layers = [], []
        for k, (module, length) in enumerate(self._runs()):
            layer_cache = None if cache is None else cache.layer(k)
            if self.scan_layers:  # the cache is scanned along its layer axis; the masks are shared
                step = with_remat(lambda layer, x, lc, *rest: one(layer, x, lc, *rest), self.remat, in_scan=True)
                run = scan_layers(step, length, in_axes=(0,) + (nn.broadcast,) * len(broadcast))
                hidden, stacked = run(module, hidden, layer_cache, *broadcast)
                outputs += split_layers(stacked._replace(cache=None), length)
            else:
                hidden, stacked = with_remat(one, self.remat)(module, hidden, layer_cache, *broadcast)
                outputs.append(stacked._replace(cache=None))
            new_layers.append(stacked.cache)
        return LEDDecoderOutput(
            last_hidden_state=hidden, cache=None if cache is None else cache.advance(tuple(new_layers), t),
            hidden_states=tuple(o.hidden_in for o in outputs) + (hidden,) if output_hidden_states else None,
            attentions=tuple(o.attentions for o in outputs) if output_attentions else None,
            cross_attentions=tuple(o.cross_attentions for o in outputs) if output_attentions else None)
