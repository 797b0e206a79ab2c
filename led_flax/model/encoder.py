"""LED's encoder: Longformer self-attention (sliding window + global tokens) in each layer.

Parameter names follow the PyTorch modules (`encoder/layers_0/self_attn/longformer_self_attn/query/kernel`
is `encoder.layers.0.self_attn.longformer_self_attn.query.weight`, transposed). The attention itself is
the pure functions of `attention.py`; this file holds the projections and the stack.

Shapes: b batch, n length, D d_model, h heads, d head dim, g global slots.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from led_flax.parallel.sequence import length_unit

from .attention import (EncoderMasks, FactoredProjection, choose_implementation, count_global_slots, gather_rows,
                        global_overflow, global_token_indices, longformer_self_attention, shard_start)
from .config import LEDConfig
from .inputs import merged_encoder_mask, token_roles
from .layers import (Stack, constrain, dense, dropout, embed_positions, feed_forward, input_embeddings, layer_norm,
                     layerdrop, scan_layers, split_layers, with_remat)
from .outputs import LEDEncoderBaseModelOutput
from .quantize import kernel_of, quantized_param
from .stacking import encoder_runs, run_name

Dtype = Any


class GlobalProjection(nn.Module):
    """The parameters of one global projection (`query_global`, `key_global`, `value_global`): an
    nn.Dense's kernel [D, D] and bias [D], same names and init. They are always created, whatever the
    batch holds, and applied by the caller: projected for every token, or folded into few global
    queries (`attention.FactoredProjection`)."""

    features: int
    init_std: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self):
        """Returns kernel [D, D] and bias [D] in the compute dtype (a quantized kernel dequantized: the
        encoder runs once per input, outside generation's loop)."""
        kernel = quantized_param(self, "kernel")
        if kernel is None:
            kernel = self.param("kernel", nn.initializers.normal(self.init_std), (self.features, self.features),
                                self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        return kernel_of(kernel, self.dtype), jnp.asarray(bias, self.dtype)


class _EncoderPart(nn.Module):
    """The settings of an encoder layer and its parts: the layer's index picks its attention window."""

    config: LEDConfig
    layer_id: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32


class LongformerSelfAttention(_EncoderPart):
    @nn.compact
    def __call__(self, hidden, masks: EncoderMasks, *, deterministic: bool, output_attentions: bool):
        """hidden: [b, n, D] -> out [b, n, D], and with output_attentions HF's `attentions`
        [b, h, n, g + 2w + 1] and `global_attentions` [b, h, n, g] (else None, None)."""
        cfg = self.config
        b, n, D = hidden.shape
        h, hd = cfg.encoder_attention_heads, D // cfg.encoder_attention_heads
        proj = partial(dense, cfg, D, self.dtype, self.param_dtype)
        split = lambda x: x.reshape(x.shape[:-1] + (h, hd))  # [..., D] -> [..., h, d]
        scale = math.sqrt(hd)

        q = split(proj("query")(hidden) / scale)  # [b, n, h, d]
        k = split(proj("key")(hidden))
        v = split(proj("value")(hidden))
        qg_w, kg_w, vg_w = (GlobalProjection(D, cfg.init_std, self.dtype, self.param_dtype, name=name)()
                            for name in ("query_global", "key_global", "value_global"))
        g = masks.global_idx.shape[1]
        qg = kg = vg = None
        if g:
            gathered = gather_rows(hidden, masks.global_idx, masks.sequence_axis)  # [b, g, D]
            qg = split((gathered @ qg_w[0] + qg_w[1]) / scale)  # [b, g, h, d]
            if g < hd:  # fold the key/value projections into the few global queries
                kg, vg = (FactoredProjection(hidden, w.reshape(D, h, hd), bias.reshape(h, hd))
                          for w, bias in (kg_w, vg_w))
            else:
                kg, vg = (split(hidden @ w + bias) for w, bias in (kg_w, vg_w))  # [b, n, h, d]
        rate = cfg.attention_dropout
        rng = None if deterministic or rate == 0.0 else self.make_rng("dropout")
        implementation = choose_implementation(cfg.attention_implementation, attention_dropout=0.0 if rng is None else rate,
                                               output_attentions=output_attentions)
        out, probs, global_probs = longformer_self_attention(
            q, k, v, qg, kg, vg, masks, one_sided=cfg.attention_window[self.layer_id] // 2, dropout_rate=rate,
            dropout_rng=rng, return_probs=output_attentions, implementation=implementation)
        return out.reshape(b, n, D), probs, global_probs


class LEDEncoderAttention(_EncoderPart):
    @nn.compact
    def __call__(self, hidden, masks: EncoderMasks, *, deterministic: bool, output_attentions: bool):
        out, probs, global_probs = LongformerSelfAttention(
            self.config, self.layer_id, self.dtype, self.param_dtype, name="longformer_self_attn")(
            hidden, masks, deterministic=deterministic, output_attentions=output_attentions)
        out = dense(self.config, self.config.d_model, self.dtype, self.param_dtype, "output")(out)
        return out, probs, global_probs


class LEDEncoderLayer(_EncoderPart):
    @nn.compact
    def __call__(self, hidden, masks: EncoderMasks, *, deterministic: bool, output_attentions: bool):
        """hidden: [b, n, D] -> (hidden [b, n, D], attentions, global attentions)."""
        cfg = self.config
        residual = hidden
        h, probs, global_probs = LEDEncoderAttention(cfg, self.layer_id, self.dtype, self.param_dtype,
                                                     name="self_attn")(
            hidden, masks, deterministic=deterministic, output_attentions=output_attentions)
        h = dropout(self, h, cfg.dropout, deterministic, masks.sequence_axis)
        hidden = layer_norm(self.dtype, self.param_dtype, "self_attn_layer_norm")(residual + h)
        ffn = partial(dense, cfg, dtype=self.dtype, param_dtype=self.param_dtype)
        hidden = feed_forward(self, cfg, hidden, ffn(cfg.encoder_ffn_dim, name="fc1"), ffn(cfg.d_model, name="fc2"),
                              layer_norm(self.dtype, self.param_dtype, "final_layer_norm"), deterministic,
                              masks.sequence_axis)
        return hidden, probs, global_probs


class LayerOutputs(NamedTuple):
    """What one encoder layer hands back besides its output."""

    hidden_in: Any  # [b, n, D] the layer's input (with output_hidden_states), else None
    attentions: Any  # [b, h, n, g + 2w + 1] or None
    global_attentions: Any  # [b, h, n, g] or None


class LEDEncoder(Stack):
    """The encoder stack (settings: `layers.Stack`). scan_layers: layers run as `nn.scan` over stacked
    parameters, one scan per run of equal windows (`stacking.py`); else unrolled, one module per layer.
    With `sequence_axis` it runs inside `jax.shard_map` on one device's contiguous slice of the tokens."""

    def setup(self):
        cfg = self.config
        self.setup_embeddings(cfg.max_encoder_position_embeddings)
        if self.scan_layers:  # one module per run, its parameters stacked along a leading layer axis
            for start, stop in encoder_runs(cfg):
                setattr(self, run_name(start, stop), LEDEncoderLayer(cfg, start, self.dtype, self.param_dtype))
        else:
            self.layers = [LEDEncoderLayer(cfg, i, self.dtype, self.param_dtype) for i in range(cfg.encoder_layers)]

    def _run_layers(self, hidden, masks: EncoderMasks, *, deterministic: bool, output_attentions: bool,
                    output_hidden_states: bool):
        """Every layer in order: the last hidden state and each layer's LayerOutputs."""
        cfg = self.config
        sharded = self.sequence_axis is not None

        def one(layer, x, mk):
            new, probs, global_probs = layer(x, mk, deterministic=deterministic, output_attentions=output_attentions)
            new = constrain(layerdrop(layer, cfg.encoder_layerdrop, deterministic, x, new), not sharded)
            return new, LayerOutputs(x if output_hidden_states else None, probs, global_probs)

        outputs = []
        if not self.scan_layers:
            step = with_remat(one, self.remat)
            for layer in self.layers:
                hidden, out = step(layer, hidden, masks)
                outputs.append(out)
            return hidden, outputs
        step = with_remat(one, self.remat, in_scan=True)
        for start, stop in encoder_runs(cfg):
            run = scan_layers(step, stop - start, in_axes=(nn.broadcast,))
            hidden, stacked = run(getattr(self, run_name(start, stop)), hidden, masks)
            outputs += split_layers(stacked, stop - start)
        return hidden, outputs

    def __call__(self, input_ids=None, *, attention_mask=None, global_attention_mask=None, inputs_embeds=None,
                 num_global_slots: int | None = None, deterministic: bool = True,
                 output_attentions: bool = False, output_hidden_states: bool = False) -> LEDEncoderBaseModelOutput:
        """input_ids or inputs_embeds: [b, n] / [b, n, D]; masks [b, n] ints, read as the reference reads
        them (`inputs.merged_encoder_mask`): attention_mask 0 for padding, 1 to attend, 2 for a global
        token (Longformer's own convention); global_attention_mask 1 for global tokens. Returns the last
        hidden state [b, n, D] and, on request, every layer's hidden states and attention maps.

        Raises ValueError for inputs longer than the position table or, for masks on the host, more
        global tokens than `num_global_slots`. Traced masks (inside jax.jit) cannot be counted: an example
        with more global tokens than `num_global_slots` comes out as NaN.

        With `sequence_axis`, n is this device's slice of the sequence (inside `jax.shard_map`): the whole
        length must already be a multiple of the devices times every layer's attention block and of
        the largest window (`led_flax.parallel.sequence.length_unit`)."""
        cfg = self.config
        axis = self.sequence_axis
        inputs_embeds = input_embeddings(self, input_ids, inputs_embeds, ("input_ids", "inputs_embeds"))
        b, n = inputs_embeds.shape[:2]
        total = n if axis is None else n * jax.lax.axis_size(axis)
        # sharded, the caller pads: up to the positions rounded up to whole blocks on every device
        limit = cfg.max_encoder_position_embeddings if axis is None else \
            -(-cfg.max_encoder_position_embeddings // n) * n
        if total > limit:
            raise ValueError(f"the input has {total} tokens but the encoder has "
                             f"{cfg.max_encoder_position_embeddings} positions; truncate the input, or extend "
                             f"the position table (led-flax convert --max-encoder-positions)")
        slots = count_global_slots(global_attention_mask, attention_mask, num_global_slots)
        merged = merged_encoder_mask(attention_mask, global_attention_mask)
        real, is_global = token_roles(jnp.ones((b, n), jnp.int32) if merged is None else jnp.asarray(merged))
        # an example with more global tokens than slots (possible only with traced masks: eager calls
        # raise above) comes out as NaN rather than with a global token silently dropped
        overflow = global_overflow(is_global, slots, axis)[:, None, None]  # [b, 1, 1]

        # pad on the right to a multiple of the largest window, as the reference does; split over
        # devices, the caller has padded to whole blocks on every device
        devices = 1 if axis is None else jax.lax.axis_size(axis)
        unit = length_unit(cfg, devices)
        pad = -total % unit
        if axis is not None and pad:
            raise ValueError(f"{total} tokens split over {devices} sequence devices into shards of {n} are not a "
                             f"multiple of {unit}, the largest window and every layer's attention block per shard; "
                             f"pad the input to a multiple of led_flax.parallel.sequence.length_unit(config, devices)")
        if pad:
            pad_embed = self.embed_tokens(jnp.full((b, pad), cfg.pad_token_id, jnp.int32))
            inputs_embeds = jnp.concatenate([inputs_embeds, pad_embed], axis=1)
            real = jnp.pad(real, [(0, 0), (0, pad)])
            is_global = jnp.pad(is_global, [(0, 0), (0, pad)])
        m = n + pad
        # padding positions past the table reuse its last row: they never reach a real token
        positions = jnp.minimum(shard_start(m, axis) + jnp.arange(m), cfg.max_encoder_position_embeddings - 1)
        hidden = embed_positions(self, inputs_embeds, positions, deterministic, axis)

        idx, valid = global_token_indices(is_global, slots, axis)
        masks = EncoderMasks(real=real, is_global=is_global, global_idx=idx, global_valid=valid, sequence_axis=axis)
        hidden, outputs = self._run_layers(hidden, masks, deterministic=deterministic,
                                           output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        flag = lambda x: jnp.where(overflow, jnp.nan, x[:, :n])
        return LEDEncoderBaseModelOutput(
            last_hidden_state=flag(hidden),
            hidden_states=tuple(flag(o.hidden_in) for o in outputs) + (flag(hidden),) if output_hidden_states
            else None,
            attentions=tuple(o.attentions[:, :, :n] for o in outputs) if output_attentions else None,
            # global attentions are kept at the padded length, as in HF
            global_attentions=tuple(o.global_attentions for o in outputs) if output_attentions and slots else None,
        )
