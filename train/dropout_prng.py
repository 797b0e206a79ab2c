"""The random-number generator of training's dropout and LayerDrop masks.

JAX's `unsafe_rbg` keys (four uint32 words; split and fold_in by XLA's RngBitGenerator used as a
hash), whose bits come from XLA's RngBitGenerator with the ThreeFry algorithm instead of the default
one. On XLA:CPU the default (Philox) is expanded in 64-bit integer arithmetic that does not
vectorise: a dropout mask over [4,096, 768] took 32 ms of bits against 5.4 ms with ThreeFry
(BENCHMARKS.md, "Training"), and the masks' bits were about 0.4 s of a 4,096-token led-base step.
ThreeFry-2x32 (Salmon et al. 2011) is the counter-based generator JAX's default keys use; here XLA
runs it. Masks are a pure function of (seed, step), like every RngBitGenerator stream; they are not
promised to be the same across backends or XLA versions.

A train state stores only the key's four words, so a run started with `unsafe_rbg` keys resumes
under this generator (its later masks differ from what that run would have drawn).
"""

from __future__ import annotations

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp

_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}
_BASE = jex_random.unsafe_rbg_prng_impl


def _random_bits(key, bit_width: int, shape):
    """key: uint32 [4] -> uint of `bit_width` bits [shape], from XLA's ThreeFry RngBitGenerator."""
    if bit_width not in _UINT:
        raise TypeError(f"random bits of width {bit_width} are not available; use 8, 16, 32 or 64")
    _, bits = jax.lax.rng_bit_generator(key, tuple(shape), dtype=_UINT[bit_width],
                                        algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    return bits


DROPOUT_PRNG = jex_random.define_prng_impl(key_shape=_BASE.key_shape, seed=_BASE.seed, split=_BASE.split,
                                           random_bits=_random_bits, fold_in=_BASE.fold_in,
                                           name="unsafe_rbg_threefry_bits", tag="urbgt")
