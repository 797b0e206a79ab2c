"""Longer inputs than a checkpoint was trained for: the encoder's learned position table extended by
tiling, as allenai made LED from BART (its 1,024 learned positions copied 16 times into a 16,384-row
table, then fine-tuned; `convert_bart_to_longformerencoderdecoder.py` in allenai/longformer).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .config import ConfigError, LEDConfig


def check_extension(config: LEDConfig, n: int) -> None:
    """Raises ConfigError unless `n` is a longer table than the config's and a multiple of its largest
    attention window (the encoder pads every input to such a multiple)."""
    n0, window = config.max_encoder_position_embeddings, max(config.attention_window)
    if not isinstance(n, int) or isinstance(n, bool) or n <= n0:
        raise ConfigError(f"max_encoder_positions {n!r} must be larger than the checkpoint's {n0} encoder "
                          f"positions; leave it out to keep the table as it is")
    if n % window:
        raise ConfigError(f"max_encoder_positions {n} is not a multiple of the largest attention window "
                          f"{window}; use {-(-n // window) * window}")
    if n >= 2**31:
        raise ConfigError(f"max_encoder_positions {n} does not fit int32 positions")


def extend_encoder_positions(config: LEDConfig, params, n: int) -> tuple[LEDConfig, dict]:
    """(config, params) with an n-row encoder position table: row i is source row i mod N0 (the whole
    source table tiled). Works on either layer layout and any head; params are returned as host numpy
    arrays where they changed. Raises ConfigError (see `check_extension`)."""
    check_extension(config, n)
    body = params.get("led", params)
    table = np.asarray(jax.device_get(body["encoder"]["embed_positions"]["embedding"]))  # [N0, D]
    tiled = table[np.arange(n) % table.shape[0]]  # [n, D]
    encoder = {**body["encoder"], "embed_positions": {"embedding": tiled}}
    new_body = {**body, "encoder": encoder}
    params = {**params, "led": new_body} if "led" in params else new_body
    return dataclasses.replace(config, max_encoder_position_embeddings=n), params
