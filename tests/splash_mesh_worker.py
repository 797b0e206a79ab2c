"""Run in a subprocess with 8 fake CPU devices by test_splash.py: the splash kernel under a
data x fsdp x tensor mesh (`jax.shard_map` around it) against the xla path on one device. Prints JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from led_flax.model.attention import gather_rows, global_token_indices, sliding_window_attention
from led_flax.model.splash import splash_attention
from led_flax.parallel import sharding as shd

mesh = shd.make_mesh(2, 2, 2)  # data x fsdp x tensor: the batch over 4 devices, the heads over 2
b, n, h, d, w = 4, 200, 4, 8, 4
rng = np.random.default_rng(0)
q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32) for _ in range(3))
real = np.ones((b, n), bool)
real[1, 150:] = False
is_global = np.zeros((b, n), bool)
is_global[0, [3, 90]] = True
is_global[2, n - 1] = True
real, is_global = jnp.asarray(real), jnp.asarray(is_global)
idx, valid = global_token_indices(is_global, 2)


def loss(attention):
    def f(q, k, v):  # a weighted sum of the output: every element counts
        out = attention(q, k, v, one_sided=w, key_mask=real & ~is_global, query_mask=real,
                        global_k=gather_rows(k, idx), global_v=gather_rows(v, idx), global_mask=valid)
        return (out * jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)).sum()
    return f


xla = jax.jit(jax.value_and_grad(loss(lambda *a, **kw: sliding_window_attention(*a, **kw)[0]), argnums=(0, 1, 2)))
ref_loss, ref_grads = xla(q, k, v)
layout = NamedSharding(mesh, P(("data", "fsdp"), None, "tensor", None))
with jax.set_mesh(mesh):
    program = jax.jit(jax.value_and_grad(loss(splash_attention), argnums=(0, 1, 2)))
    manual = program.lower(*(jax.device_put(x, layout) for x in (q, k, v))).as_text().count("manual_computation")
    value, grads = program(*(jax.device_put(x, layout) for x in (q, k, v)))
rel = lambda a, r: float(jnp.abs(a - r).max() / jnp.abs(r).max())
print("RESULT " + json.dumps({"devices": len(jax.devices()), "manual": manual, "loss_err": rel(value, ref_loss),
                              "grad_err": max(rel(a, r) for a, r in zip(grads, ref_grads)),
                              "grad_layout": str(grads[0].sharding.spec)}))
