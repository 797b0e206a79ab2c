"""LED's models: `LEDModel` (the encoder-decoder body) and the four heads of transformers' LED.

The layers live in `encoder.py` and `decoder.py`, their shared blocks in `layers.py`. Parameter names
follow the PyTorch module names (`led/encoder/layers_0/self_attn/longformer_self_attn/query/kernel` is
`led.encoder.layers.0.self_attn.longformer_self_attn.query.weight`, transposed), so the conversion
table in `convert/` stays short. Losses live in `losses.py`; generation and the train step live
outside the modules and call `apply`. Calls between the heads, the model and its stacks pass every
argument by keyword.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from led_flax.utils.trees import flatten

from . import losses
from .attention import softmax_dtype
from .config import LEDConfig
from .decoder import LEDDecoder
from .encoder import LEDEncoder
from .inputs import check_decoder_length, check_labels, is_traced, shift_tokens_right
from .layers import Embed, dense, dropout
from .outputs import (LEDEncoderBaseModelOutput, LEDSeq2SeqLMOutput, LEDSeq2SeqModelOutput,
                      LEDSeq2SeqQuestionAnsweringModelOutput, LEDSeq2SeqSequenceClassifierOutput)

Dtype = Any

__all__ = ["LEDModel", "LEDForConditionalGeneration", "LEDForSequenceClassification", "LEDForQuestionAnswering",
           "LEDClassificationHead", "MODEL_CLASSES", "model_for", "init_params", "expected_shapes", "head_of", "shift_tokens_right"]


# ---------------------------------------------------------------------------------------------- models
class _Model(nn.Module):
    """The settings every model and head takes (besides `config`, the architecture)."""

    config: LEDConfig
    dtype: Dtype = jnp.float32  # the compute dtype
    param_dtype: Dtype = jnp.float32
    remat: str = "none"  # what each layer keeps for the backward pass: none | full | save_dots
    scan_layers: bool = True  # layers as nn.scan over stacked parameters (stacking.py); False: unrolled
    # the encoder's sequence is sharded over this mesh axis: the module runs inside `jax.shard_map`, each
    # device on its slice of the tokens (`led_flax.parallel.sequence` wraps the calls); None: unsharded
    sequence_axis: str | None = None
    cross_cache: str = "float"  # generation's cross-attention keys and values: float | int8 (cache.CrossKeyValue)

    def settings(self) -> dict:
        """The settings above, by keyword, to build a part with the same ones."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat, scan_layers=self.scan_layers,
                    sequence_axis=self.sequence_axis, cross_cache=self.cross_cache)


class LEDModel(_Model):
    """The bare encoder-decoder (`transformers.LEDModel`); its params sit at the root of the tree."""

    def setup(self):
        cfg = self.config
        self.shared = Embed(cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.pad_token_id, self.dtype,
                            self.param_dtype)
        kw = self.settings()
        cross_cache = kw.pop("cross_cache")  # the decoder's alone
        # tied (the default): both stacks look tokens up in `shared`; untied (tie_word_embeddings false, as
        # transformers 5 saves it): each stack has its own `embed_tokens`, and `shared` is kept unused
        tied = self.shared if cfg.tie_word_embeddings else None
        self.encoder = LEDEncoder(cfg, tied, **kw)
        self.decoder = LEDDecoder(cfg, tied, cross_cache=cross_cache, **kw)

    def encode(self, input_ids=None, attention_mask=None, global_attention_mask=None, inputs_embeds=None, *,
               num_global_slots=None, deterministic=True, output_attentions=False, output_hidden_states=False):
        """The encoder alone; see `LEDEncoder.__call__`."""
        return self.encoder(input_ids, attention_mask=attention_mask, global_attention_mask=global_attention_mask,
                            inputs_embeds=inputs_embeds, num_global_slots=num_global_slots,
                            deterministic=deterministic, output_attentions=output_attentions,
                            output_hidden_states=output_hidden_states)

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, encoder_attention_mask=None, *,
               decoder_attention_mask=None, decoder_inputs_embeds=None, cache=None, deterministic=True,
               output_attentions=False, output_hidden_states=False):
        """The decoder alone (a full pass, or a cached step); see `LEDDecoder.__call__`."""
        return self.decoder(decoder_input_ids, attention_mask=decoder_attention_mask,
                            encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask,
                            inputs_embeds=decoder_inputs_embeds, cache=cache, deterministic=deterministic,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1):
        """A `DecoderCache` for generation; see `LEDDecoder.init_cache`."""
        return self.decoder.init_cache(encoder_hidden_states, max_length, beams)

    def attend(self, hidden):
        return self.shared.attend(hidden)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None,
                 decoder_inputs_embeds=None, *, num_global_slots=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        cfg = self.config
        if not cfg.tie_word_embeddings and self.is_initializing():
            self.shared.embedding  # creates the untied checkpoint's unused `shared` table, which nothing calls
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("without input_ids, pass decoder_input_ids or decoder_inputs_embeds")
            if self.sequence_axis is not None:
                raise ValueError("with the sequence sharded over devices each holds a slice of input_ids, which "
                                 "cannot be shifted into the decoder input: pass decoder_input_ids (or labels)")
            check_decoder_length(input_ids.shape[1], cfg, "input_ids, which the decoder input is shifted from when "
                                 "decoder_input_ids are not given (or pass decoder_input_ids)")
            decoder_input_ids = shift_tokens_right(input_ids, cfg.pad_token_id, cfg.decoder_start_token_id)
        flags = dict(deterministic=deterministic, output_attentions=output_attentions,
                     output_hidden_states=output_hidden_states)
        if encoder_outputs is None:
            encoder_outputs = self.encode(input_ids, attention_mask, global_attention_mask, inputs_embeds,
                                          num_global_slots=num_global_slots, **flags)
        elif isinstance(encoder_outputs, (tuple, list)):
            encoder_outputs = LEDEncoderBaseModelOutput(*encoder_outputs)
        dec = self.decode(decoder_input_ids, encoder_outputs.last_hidden_state, attention_mask,
                          decoder_attention_mask=decoder_attention_mask, decoder_inputs_embeds=decoder_inputs_embeds,
                          **flags)
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


class _LEDHead(_Model):
    """A model with the body under `led/`, as in every transformers LED head."""

    def setup(self):
        self.led = LEDModel(self.config, **self.settings())
        self.setup_head()

    def setup_head(self):
        raise NotImplementedError

    def encode(self, input_ids=None, attention_mask=None, global_attention_mask=None, inputs_embeds=None, **kwargs):
        return self.led.encode(input_ids, attention_mask, global_attention_mask, inputs_embeds, **kwargs)

    def init_cache(self, encoder_hidden_states, max_length: int, beams: int = 1):
        return self.led.init_cache(encoder_hidden_states, max_length, beams)

    def body(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
             global_attention_mask, inputs_embeds, decoder_inputs_embeds, **flags) -> LEDSeq2SeqModelOutput:
        """The shared body's forward pass, every argument by keyword."""
        return self.led(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                        decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs,
                        global_attention_mask=global_attention_mask, inputs_embeds=inputs_embeds,
                        decoder_inputs_embeds=decoder_inputs_embeds, **flags)


class LEDForConditionalGeneration(_LEDHead):
    """Summarization: the tied LM head plus `final_logits_bias`, a buffer that never gets a gradient."""

    def setup_head(self):
        cfg = self.config
        self.final_logits_bias = self.param("final_logits_bias", nn.initializers.zeros, (1, cfg.vocab_size),
                                            self.param_dtype)
        if not cfg.tie_word_embeddings:
            self.lm_head = dense(cfg, cfg.vocab_size, self.dtype, self.param_dtype, use_bias=False)

    def logits(self, hidden):
        """hidden: [b, t, D] -> logits [b, t, V] in float32 (or float64)."""
        if self.config.tie_word_embeddings:
            logits = self.led.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        dt = softmax_dtype(logits.dtype)
        return logits.astype(dt) + jax.lax.stop_gradient(self.final_logits_bias).astype(dt)

    def decode(self, decoder_input_ids=None, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        """One decoder pass (or a cached step); returns logits and the updated cache."""
        dec = self.led.decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, **kwargs)
        return LEDSeq2SeqLMOutput(logits=self.logits(dec.last_hidden_state), last_hidden_state=dec.last_hidden_state,
                                  cache=dec.cache, decoder_hidden_states=dec.hidden_states,
                                  decoder_attentions=dec.attentions, cross_attentions=dec.cross_attentions)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 labels=None, *, num_global_slots=None, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        check_labels(labels, cfg.vocab_size)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            check_decoder_length(labels.shape[1], cfg, "labels, which the decoder input is shifted from")
            decoder_input_ids = shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
        out = self.body(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                        global_attention_mask, inputs_embeds, decoder_inputs_embeds,
                        num_global_slots=num_global_slots, deterministic=deterministic,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
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
        hidden = dropout(self, hidden, cfg.classifier_dropout, deterministic)
        hidden = jnp.tanh(dense(cfg, cfg.d_model, self.dtype, self.param_dtype, "dense")(hidden))
        hidden = dropout(self, hidden, cfg.classifier_dropout, deterministic)
        return dense(cfg, cfg.num_labels, self.dtype, self.param_dtype, "out_proj")(hidden)


class LEDForSequenceClassification(_LEDHead):
    """transformers 4.x's head: the decoder state at the last eos of the input, through a tanh MLP."""

    def setup_head(self):
        self.classification_head = LEDClassificationHead(self.config, self.dtype, self.param_dtype)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, inputs_embeds=None, decoder_inputs_embeds=None,
                 labels=None, *, num_global_slots=None, deterministic=True, output_attentions=False,
                 output_hidden_states=False):
        cfg = self.config
        if self.sequence_axis is not None:
            raise ValueError("LEDForSequenceClassification pools at the input's last eos token, which one device of "
                             "a sharded sequence cannot find; run it unsharded")
        if input_ids is None:
            raise ValueError("LEDForSequenceClassification pools at the input's last eos token, so it needs "
                             "input_ids (inputs_embeds alone cannot say where eos is), as in transformers")
        eos = input_ids == cfg.eos_token_ids[0]  # [b, n]
        if not is_traced(input_ids):
            counts = (np.asarray(input_ids) == cfg.eos_token_ids[0]).sum(axis=1)
            if len(set(counts.tolist())) > 1 or counts.min() == 0:
                raise ValueError(f"every example needs the same, non-zero number of eos tokens "
                                 f"(id {cfg.eos_token_ids[0]}); found {counts.tolist()}")
        if labels is not None and losses.problem_type_of(cfg.problem_type, cfg.num_labels, jnp.asarray(labels).dtype) \
                == "single_label_classification":
            check_labels(labels, cfg.num_labels)  # the reference raises "Target ... out of bounds"
        if decoder_input_ids is not None and decoder_input_ids.shape != input_ids.shape:
            raise ValueError(f"the head pools the decoder state at the input's last eos, so decoder_input_ids "
                             f"must have the input's shape {input_ids.shape}, not {decoder_input_ids.shape}; "
                             f"leave them out to use the shifted input")
        out = self.body(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                        global_attention_mask, inputs_embeds, decoder_inputs_embeds,
                        num_global_slots=num_global_slots, deterministic=deterministic,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
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
        self.qa_outputs = dense(self.config, 2, self.dtype, self.param_dtype)

    def __call__(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                 encoder_outputs=None, global_attention_mask=None, start_positions=None, end_positions=None,
                 inputs_embeds=None, decoder_inputs_embeds=None, *, num_global_slots=None, deterministic=True,
                 output_attentions=False, output_hidden_states=False):
        out = self.body(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs,
                        global_attention_mask, inputs_embeds, decoder_inputs_embeds,
                        num_global_slots=num_global_slots, deterministic=deterministic,
                        output_attentions=output_attentions, output_hidden_states=output_hidden_states)
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


def expected_shapes(config: LEDConfig, head: str) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter `config` implies for `head`, by '/'-joined path in the per-layer
    layout that checkpoints store (`layers_0/...`, not the scanned one); traced with `jax.eval_shape`,
    so nothing is allocated."""
    module = model_for(config, head, scan_layers=False)
    return {p: tuple(s.shape) for p, s in flatten(jax.eval_shape(lambda: init_params(module))).items()}


def head_of(params) -> str:
    """Which of the four heads a param tree belongs to: 'base', 'conditional_generation',
    'sequence_classification' or 'question_answering' (the keys of `MODEL_CLASSES`)."""
    if "led" not in params:
        return "base"
    if "qa_outputs" in params:
        return "question_answering"
    if "classification_head" in params:
        return "sequence_classification"
    return "conditional_generation"
