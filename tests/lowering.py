"""Lowering a jitted program for TPU and CUDA on this CPU, and the constructs that cannot run there.

`jax.export.export(jitted, platforms=("tpu", "cuda"))` lowers without compiling, so it is cheap. It
refuses a custom call outside jax's stable list (naming the target) and host callbacks (with
messages that do not name the op, so the program's jaxpr is searched for them first); it does not
refuse float64, which TPUs do not run, so the module text is searched for `f64`. Every failure names
the program and the op.
"""

from __future__ import annotations

import jax

PLATFORMS = ("tpu", "cuda")
CALLBACKS = ("pure_callback", "io_callback", "debug_callback", "debug_print", "callback")


class LoweringError(AssertionError):
    """A program that cannot run on an accelerator; the message names the program and the op."""


def _eqns(jaxpr):
    """Every equation of a jaxpr and of the jaxprs in its equations' parameters (loops, conds, remat,
    shard_map, pjit, custom derivatives), depth first."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _eqns(inner)


def _where(eqn) -> str:
    from jax._src import source_info_util
    return source_info_util.summarize(eqn.source_info)


def lower(name: str, jitted, *args, **kwargs) -> jax.export.Exported:
    """`jitted` (a `jax.jit` function) exported for TPU and CUDA with `args` (arrays or
    ShapeDtypeStructs, with shardings) and `kwargs` (its static arguments). Raises LoweringError
    naming `name` and the op for a host callback, a custom call outside jax's stable list, or float64
    anywhere in the module."""
    traced = jitted.trace(*args, **kwargs)
    for eqn in _eqns(traced.jaxpr.jaxpr):
        if eqn.primitive.name in CALLBACKS or "callback" in eqn.primitive.name:
            raise LoweringError(f"{name}: a host callback ({eqn.primitive.name}, at {_where(eqn)}) cannot be "
                                f"exported for {', '.join(PLATFORMS)}: it runs Python on the host")
    try:
        exported = jax.export.export(jitted, platforms=PLATFORMS)(*args, **kwargs)
    except Exception as e:
        raise LoweringError(f"{name}: cannot be lowered for {', '.join(PLATFORMS)}: {type(e).__name__}: {e}") from e
    text = exported.mlir_module()
    for line in text.splitlines():
        if "f64" in line:
            raise LoweringError(f"{name}: float64 in the lowered module (TPUs have no float64): {line.strip()[:300]}")
    return exported
