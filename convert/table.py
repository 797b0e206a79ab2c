"""The one table between our parameter paths and transformers' LED state-dict keys.

Our paths keep the PyTorch module names, so each rule only says which leaf becomes which tensor
and how: a Dense `kernel` is the transposed Linear `weight`, a LayerNorm `scale` is its `weight`, an
Embed `embedding` is the Embedding `weight`, and `layers_3` is `layers.3`. A path that matches no
rule, or more than one, is an error: nothing is guessed.
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np


_LINEAR = ("query|key|value|query_global|key_global|value_global|output|q_proj|k_proj|v_proj|out_proj"
           "|fc1|fc2|dense|qa_outputs|lm_head")
_NORM = "layernorm_embedding|self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm"
_EMBED = "shared|embed_positions|embed_tokens"


def _transpose(x):
    return np.ascontiguousarray(np.swapaxes(x, 0, 1))


def _same(x):
    return x


# (pattern on our '/'-joined path, HF key template, ours -> HF, HF -> ours)
TABLE: tuple[tuple[str, str, Callable, Callable], ...] = (
    (rf"(?P<p>(?:.*/)?)(?P<m>{_LINEAR})/kernel", "{p}{m}.weight", _transpose, _transpose),
    (rf"(?P<p>(?:.*/)?)(?P<m>{_LINEAR})/bias", "{p}{m}.bias", _same, _same),
    (rf"(?P<p>(?:.*/)?)(?P<m>{_NORM})/scale", "{p}{m}.weight", _same, _same),
    (rf"(?P<p>(?:.*/)?)(?P<m>{_NORM})/bias", "{p}{m}.bias", _same, _same),
    (rf"(?P<p>(?:.*/)?)(?P<m>{_EMBED})/embedding", "{p}{m}.weight", _same, _same),
    (r"(?P<p>)(?P<m>final_logits_bias)", "{p}{m}", _same, _same),
)
_COMPILED = tuple((re.compile(p), t, f, b) for p, t, f, b in TABLE)


class MappingError(ValueError):
    """Keys that the table cannot map, keys left unused, or shapes that do not fit; all listed."""


def dotted(prefix: str) -> str:
    """Our path prefix ('led/encoder/layers_0/') -> the HF key prefix ('led.encoder.layers.0.')."""
    return re.sub(r"layers_(\d+)", r"layers.\1", prefix).replace("/", ".")


def rule_for(path: str) -> tuple[str, Callable, Callable]:
    """Our path ('led/encoder/layers_0/fc1/kernel') -> (HF key, ours->HF, HF->ours)."""
    hits = [(rx.fullmatch(path), t, f, b) for rx, t, f, b in _COMPILED]
    hits = [(m, t, f, b) for m, t, f, b in hits if m]
    if len(hits) != 1:
        raise MappingError(f"parameter {path!r} matches {len(hits)} rules of convert.table.TABLE; "
                           f"it needs exactly one")
    m, template, to_hf, from_hf = hits[0]
    return template.format(p=dotted(m["p"]), m=m["m"]), to_hf, from_hf
