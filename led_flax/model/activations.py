"""The feed-forward activations of `LEDConfig.activation_function`, by name (the one list)."""

from __future__ import annotations

from functools import partial

import jax

ACTIVATIONS = {
    "gelu": partial(jax.nn.gelu, approximate=False),  # torch's exact GELU, not jax's default tanh form
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
