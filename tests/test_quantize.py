"""Weight-only quantization. Oracles: the NF4 code book's published values (and its construction from
the normal distribution), a numpy quantizer, the float product with the dequantized weight, and the
float model run on the dequantized parameters (the same arithmetic, so any gap is a bug, not
quantization error)."""

from __future__ import annotations

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from led_flax import convert
from led_flax.utils.trees import flatten
from led_flax import LEDConfig, init_params, model_for
from led_flax.io import checkpoint
from led_flax.model import quantize as Q
from led_flax.model.cache import CrossKeyValue, KeyValue
from led_flax.decoding import generation
from led_flax.decoding.generation import generate
from led_flax.decoding.generation_config import GenerationConfig
from led_flax.decoding.settings import split
from led_flax.model.layers import Dense, fused_dense
from led_flax.parallel.sharding import logical_axes, make_mesh, param_shardings

CFG = LEDConfig(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=40, attention_window=[4, 8],
                max_encoder_position_embeddings=80, max_decoder_position_embeddings=24, pad_token_id=1,
                bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, init_std=0.2, dropout=0.0)
SPECS = [Q.QuantizeSpec("int8"), Q.QuantizeSpec("int4", group_size=12), Q.QuantizeSpec("nf4", group_size=16)]

# bitsandbytes functional.get_4bit_type("nf4"), as published (QLoRA, arXiv:2305.14314, appendix E)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs(n_global: int = 1):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, CFG.vocab_size, (2, 21))
    am = np.ones_like(ids)
    am[1, 15:] = 0
    glob = np.zeros_like(ids)
    glob[:, :n_global] = 1
    return ids, am, glob, rng.integers(3, CFG.vocab_size, (2, 6))


def test_nf4_code_book_is_the_published_one_and_the_normal_quantiles():
    np.testing.assert_array_equal(Q.NF4_CODE_BOOK, np.array(PUBLISHED_NF4, np.float32))
    norm = pytest.importorskip("scipy.stats").norm
    # bitsandbytes' create_normal_map(offset=0.9677083): 8 positive quantiles, zero, 7 negative, scaled to 1
    offset = 0.9677083
    values = np.concatenate([norm.ppf(np.linspace(offset, 0.5, 9)[:-1]), [0.0],
                             -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])])
    values = np.sort(values) / np.max(values)
    np.testing.assert_allclose(Q.NF4_CODE_BOOK, values, rtol=0, atol=2e-7)


@pytest.mark.parametrize("scheme, group", [("int8", 0), ("int4", 16), ("nf4", 16)])
def test_quantize_matrix_against_a_numpy_quantizer(scheme, group):
    w = np.random.default_rng(1).normal(size=(2, 5, 70)).astype(np.float32)  # 70 inputs: a last group of 6
    w[0, 1] = 0.0  # an all-zero row
    q = Q.quantize_matrix(w, scheme, group or Q.DEFAULT_GROUP_SIZE)
    if scheme == "int8":
        scale = np.abs(w).max(-1, keepdims=True) / 127
        scale[scale == 0] = 1
        expected, scales = np.clip(np.round(w / scale), -127, 127), scale
    else:
        groups = [w[..., i:i + group] for i in range(0, 70, group)]
        absmax = [np.abs(g).max(-1, keepdims=True) for g in groups]
        if scheme == "int4":
            scales = [np.where(a > 0, a / 7, 1) for a in absmax]
            expected = np.concatenate([np.clip(np.round(g / s), -7, 7) for g, s in zip(groups, scales)], -1)
        else:  # the nearest code, by brute force
            scales = [np.where(a > 0, a, 1) for a in absmax]
            codes = [np.abs((g / s)[..., None] - Q.NF4_CODE_BOOK).argmin(-1) for g, s in zip(groups, scales)]
            expected = np.concatenate(codes, -1) - 8
        scales = np.repeat(np.concatenate(scales, -1), group, -1)[..., :70]
    assert q.values.dtype == (jnp.int8 if scheme == "int8" else jnp.int4) and q.shape == w.shape
    np.testing.assert_array_equal(np.asarray(q.values, np.int32), expected)
    book = Q.NF4_CODE_BOOK[expected.astype(int) + 8] if scheme == "nf4" else expected
    np.testing.assert_allclose(q.dequantize(), book * scales, rtol=1e-2 if scheme != "int8" else 1e-6, atol=1e-7)
    assert q.nbytes == w.size * (1 if scheme == "int8" else 0.5) + np.asarray(q.scales).nbytes


@pytest.mark.parametrize("rows", [1, 4, 40])
@pytest.mark.parametrize("scheme", ["int8", "int4", "nf4"])
def test_products_equal_the_float_product_with_the_dequantized_weight(scheme, rows):
    rng = np.random.default_rng(2)
    q = Q.quantize_matrix(rng.normal(size=(48, 32)), scheme, 16)
    x = jnp.asarray(rng.normal(size=(rows, 1, 32)), jnp.float32)
    expected = np.asarray(x, np.float64) @ np.asarray(q.dequantize(), np.float64).T
    assert _rel(jax.jit(Q.dense, static_argnums=2)(x, q, jnp.float32), expected) < 1e-6
    rows_of = q.take_rows(jnp.array([[3, 0], [47, 3]]))
    np.testing.assert_array_equal(rows_of, np.asarray(q.dequantize())[[[3, 0], [47, 3]]])


def test_a_quantized_weight_stays_quantized_inside_a_loop():
    """XLA moves the conversion of a loop-invariant weight out of a while_loop, keeping a float copy
    alive for the whole loop; the product's barrier keeps the int8 weight in the loop instead."""
    q = Q.quantize_matrix(np.random.default_rng(3).normal(size=(512, 256)), "int8")

    def run(q, x):
        return jax.lax.fori_loop(0, 3, lambda i, x: jnp.tanh(Q.dense(x, q, jnp.float32)[:, :256]), x)

    hlo = jax.jit(run).lower(q, jnp.ones((4, 256))).compile().as_text()
    loops = [line for line in hlo.splitlines() if " while(" in line]
    assert loops and all("s8[512,256]" in line and "f32[512,256]" not in line for line in loops)


# (spec, global tokens): 1 global token folds the global projections into the query, 9 (> head dim 8)
# projects every token
CASES = {"scanned, tied": [(SPECS[0], 1), (SPECS[2], 1), (SPECS[1], 9)],
         "unrolled, untied": [(SPECS[0], 9), (SPECS[2], 1)]}


@pytest.mark.parametrize("layout", CASES)
def test_quantized_model_equals_the_float_model_on_dequantized_weights(layout):
    scan, tied = layout.startswith("scanned"), layout.endswith(" tied")
    model = model_for(CFG.replace(tie_word_embeddings=tied), scan_layers=scan)
    params = init_params(model, jax.random.PRNGKey(0))
    runs = {}  # one jitted function per global count: the float trees of every spec share its compilation
    for spec, n_global in CASES[layout]:
        qparams = Q.quantize_params(params, spec)
        assert Q.is_quantized(qparams) and not Q.is_quantized(params)
        if n_global not in runs:
            ids, am, glob, dec = _inputs(n_global)
            runs[n_global] = jax.jit(lambda p, ids=ids, am=am, glob=glob, dec=dec, n=n_global: model.apply(
                {"params": p}, ids, am, decoder_input_ids=dec, global_attention_mask=glob, num_global_slots=n).logits)
        run = runs[n_global]
        assert _rel(run(qparams), run(Q.dequantize_params(qparams))) < 1e-5, spec
        float_error = _rel(run(qparams), run(params))
        assert 0 < float_error < (0.05 if spec.scheme == "int8" else 0.5), spec


def test_what_is_quantized_and_what_stays_float():
    cfg = CFG.replace(tie_word_embeddings=False)
    params = init_params(model_for(cfg), jax.random.PRNGKey(0))
    flat = flatten(Q.to_saved(jax.eval_shape(lambda p: Q.quantize_params(p, Q.QuantizeSpec("nf4", encoder=False)),
                                             params)))
    kinds = {path: str(leaf.dtype) for path, leaf in flat.items()}
    assert kinds["led/decoder/scan_0_1/fc1/kernel/values"] == "int4"
    assert kinds["led/encoder/scan_0_0/fc1/kernel"] == "float32"  # encoder=False
    assert kinds["lm_head/kernel/values"] == kinds["led/shared/embedding/values"] == "int8"  # the head: int8
    assert kinds["led/decoder/embed_tokens/embedding/values"] == "int8"
    assert kinds["led/encoder/embed_positions/embedding"] == "bfloat16"
    assert kinds["led/decoder/scan_0_1/fc1/bias"] == kinds["led/decoder/scan_0_1/final_layer_norm/scale"] == "float32"
    assert flat["lm_head/kernel/values"].shape == (cfg.vocab_size, cfg.d_model)  # [out, in]
    assert flat["led/decoder/scan_0_1/fc1/kernel/values"].shape == (2, cfg.decoder_ffn_dim, cfg.d_model)


def test_int8_cross_cache_equals_attention_over_its_dequantized_keys_and_values():
    rng = np.random.default_rng(4)
    kv = KeyValue(keys=jnp.asarray(rng.normal(size=(2, 3, 11, 8)), jnp.float32),
                  values=jnp.asarray(rng.normal(size=(2, 3, 11, 8)), jnp.float32))
    c8, cf = CrossKeyValue.build(kv, "int8"), CrossKeyValue.build(kv, "float")
    deq = CrossKeyValue(keys=c8.keys.astype(jnp.float32) * c8.key_scales[:, :, None, :],
                        values=c8.values.astype(jnp.float32) * c8.value_scales[..., None])
    q = jnp.asarray(rng.normal(size=(2, 3, 4, 8)), jnp.float32)
    p = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 3, 4, 11)), jnp.float32))
    assert c8.keys.dtype == jnp.int8 and c8.key_scales.shape == (2, 3, 11)
    assert _rel(c8.scores(q), deq.scores(q)) < 1e-6 and _rel(c8.mix(p), deq.mix(p)) < 1e-6
    assert _rel(cf.scores(q), kv.scores(q)) < 1e-6 and _rel(cf.mix(p), kv.mix(p)) < 1e-6
    assert _rel(c8.scores(q), kv.scores(q)) < 1e-2
    with pytest.raises(ValueError, match="cross_cache 'int4' is not one of float, int8"):
        CrossKeyValue.build(kv, "int4")


def test_generation_with_quantized_weights_and_int8_cross_cache():
    model = model_for(CFG.replace(init_std=0.5, encoder_layers=1, decoder_layers=1, attention_window=[4]))
    params = init_params(model, jax.random.PRNGKey(1))
    ids, am, glob, _ = _inputs()
    qparams = Q.quantize_params(params, Q.QuantizeSpec("int8"))
    fake = Q.dequantize_params(qparams)
    ours = generate(model, qparams, ids, am, glob, num_beams=3, max_length=12).sequences
    np.testing.assert_array_equal(ours, generate(model, fake, ids, am, glob, num_beams=3, max_length=12).sequences)
    m8 = model.clone(cross_cache="int8")
    kv8 = generate(m8, qparams, ids, am, glob, max_length=12).sequences
    assert kv8.shape[0] == 2 and (kv8[:, 0] == CFG.decoder_start_token_id).all()
    # on a CPU that ran the program compiled with CPU_INT8_CACHE_OPTIONS: the default program agrees
    assert generation.program_for(model) is generation._run
    assert generation.program_for(m8) is (generation._run_int8_cache if jax.default_backend() == "cpu"
                                            else generation._run)
    args = (qparams, *(jnp.asarray(x, jnp.int32) for x in (ids, am, glob)), jax.random.PRNGKey(0))
    static, values = split(GenerationConfig(max_length=12).resolved(m8.config), 2)
    default = generation._run(*args, values, model=m8, cfg=static, slots=1, mesh=None)
    np.testing.assert_array_equal(kv8, np.asarray(default.sequences)[:, :int(default.length)])
    # a decoding step over the int8 cross cache equals one over a float cache holding its dequantized values
    enc = model.apply({"params": params}, ids, am, glob, method="encode").last_hidden_state
    cache8 = m8.apply({"params": params}, enc, 8, method="init_cache")
    cachef = model.apply({"params": params}, enc, 8, method="init_cache")
    deq = [layer.replace(cross=CrossKeyValue(keys=c.keys.astype(jnp.float32) * c.key_scales[..., None, :],
                                             values=c.values.astype(jnp.float32) * c.value_scales[..., None]))
           for layer, c in ((layer, layer.cross) for layer in cache8.layers)]
    step = lambda m, cache: m.apply({"params": params}, ids[:, :1], enc, am, cache=cache, method="decode").logits
    assert _rel(step(m8, cache8), step(model, cache8.replace(layers=tuple(deq)))) < 1e-5
    assert _rel(step(m8, cache8), step(model, cachef)) < 5e-2


def test_checkpoint_holds_quantized_params_and_export_needs_dequantize(checkpoints, tmp_path):
    hf_dir, _ = checkpoints["conditional_generation"]
    config, params = convert.from_hf(hf_dir)
    for spec in SPECS[1:]:  # int4 storage (nf4 as int4 codes): orbax writes 4-bit types
        done = convert.convert_checkpoint(hf_dir, tmp_path / spec.scheme, quantize=spec)
        with open(os.path.join(done.path, "led_flax.json")) as f:
            assert json.load(f)["quantization"] == spec.to_json()
        ckpt = checkpoint.load(done.path)
        assert ckpt.quantization == spec
        expected = flatten(jax.device_get(Q.to_saved(Q.quantize_params(params, spec))))
        got = flatten(jax.device_get(Q.to_saved(ckpt.params)))
        assert sorted(got) == sorted(expected)
        for k in expected:
            assert got[k].dtype == expected[k].dtype and np.array_equal(np.asarray(got[k], np.float32),
                                                                       np.asarray(expected[k], np.float32)), k
        assert Q.param_bytes(ckpt.params) == done.param_bytes < 0.4 * Q.param_bytes(params)
    with pytest.raises(Q.QuantizationError, match="pass dequantize=True"):
        convert.export_checkpoint(done.path, tmp_path / "hf")
    convert.export_checkpoint(done.path, tmp_path / "hf", dequantize=True)
    back = flatten(convert.from_hf(tmp_path / "hf", scan_layers=False)[1])
    fake = flatten(jax.device_get(Q.dequantize_params(checkpoint.load(done.path, scan_layers=False).params)))
    assert all(np.array_equal(back[k], fake[k]) for k in fake)

    # a damaged quantization record in led_flax.json is named, not a traceback; without the record the
    # stored values/scales pairs do not pass for the float params they replaced
    marker_path = os.path.join(done.path, "led_flax.json")
    with open(marker_path) as f:
        marker = json.load(f)
    for record in ("nf4", {**marker["quantization"], "scheme": "int3"}):
        with open(marker_path, "w") as f:
            json.dump({**marker, "quantization": record, "param_crc32": None}, f)
        with pytest.raises(checkpoint.CheckpointError, match="led_flax.json has a quantization record that is not one"):
            checkpoint.load(done.path)
    with open(marker_path, "w") as f:
        json.dump({k: v for k, v in marker.items() if k != "quantization"}, f)
    with pytest.raises(checkpoint.CheckpointError, match="in params but unused: .*kernel/scales"):
        checkpoint.load(done.path)


def test_group_size_goes_with_the_4_bit_schemes_only(capsys):
    from cli_helpers import assert_one_line_error, run_main
    assert Q.QuantizeSpec("int8", group_size=32) == Q.QuantizeSpec("int8")  # per channel: no groups to differ by
    assert Q.QuantizeSpec("int4", group_size=32) != Q.QuantizeSpec("int4")
    for argv in (["--quantize", "int8", "--group-size", "32"], ["--group-size", "32"]):
        r = run_main(capsys, "convert", "src", "dst", *argv)
        assert_one_line_error(r, 2, "convert", "--group-size applies to --quantize int4 or nf4")


def test_refusals(checkpoints, tmp_path):
    hf_dir, _ = checkpoints["conditional_generation"]
    bnb = tmp_path / "bnb"
    bnb.mkdir()
    for name in os.listdir(hf_dir):
        os.symlink(os.path.join(hf_dir, name), bnb / name) if name != "config.json" else None
    with open(os.path.join(hf_dir, "config.json")) as f:
        hf = json.load(f)
    hf["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (bnb / "config.json").write_text(json.dumps(hf))
    with pytest.raises(Q.QuantizationError, match="quantized with bitsandbytes.*convert the float original"):
        convert.load(str(bnb))

    done = convert.convert_checkpoint(hf_dir, tmp_path / "int8", quantize=Q.QuantizeSpec("int8"))
    loaded = convert.load(done.path)
    with pytest.raises(Q.QuantizationError, match="fine-tuning needs float weights"):
        loaded.require_float("fine-tuning")
    from led_flax.train import config as config_lib
    from led_flax.train.config import TrainConfigError
    from led_flax.train.model import load_pretrained
    with pytest.raises(TrainConfigError, match="is quantized"):
        load_pretrained(config_lib.from_dict({"model": {"init": done.path}}))
    assert loaded.quantized(Q.QuantizeSpec("int8")) is loaded
    with pytest.raises(Q.QuantizationError, match="already quantized"):
        loaded.quantized(Q.QuantizeSpec("nf4"))
    with pytest.raises(Q.QuantizationError, match="already quantized"):
        Q.quantize_params(loaded.params, Q.QuantizeSpec("int8"))
    with pytest.raises(ValueError, match="unknown quantization scheme 'int3'"):
        Q.QuantizeSpec("int3")


@pytest.mark.parametrize("scan", [True, False])
def test_sharding_rules_tell_quantization_scales_from_layer_norm_scales(scan):
    params = init_params(model_for(CFG, scan_layers=scan), jax.random.PRNGKey(0))
    qparams = Q.quantize_params(params, Q.QuantizeSpec("nf4", group_size=16))
    flat = flatten(Q.to_saved(logical_axes(qparams)))
    layer = ("layers",) if scan else ()
    stack = "scan_0_1" if scan else "layers_0"
    assert flat[f"led/decoder/{stack}/self_attn/q_proj/kernel/values"] == layer + ("heads", "embed")
    assert flat[f"led/decoder/{stack}/self_attn/q_proj/kernel/scales"] == layer + ("heads", None)
    assert flat[f"led/decoder/{stack}/fc2/kernel/values"] == layer + ("embed", "mlp")
    assert flat["led/shared/embedding/values"] == ("vocab", "embed")
    assert flat["led/shared/embedding/scales"] == ("vocab",)
    assert flat[f"led/decoder/{stack}/final_layer_norm/scale"] == layer + ("embed",)
    shardings = param_shardings(qparams, make_mesh())
    assert isinstance(shardings["led"]["shared"]["embedding"], Q.QuantizedArray)


class _ThreeProjections(nn.Module):
    """Three Dense layers over one input, called one by one or fused (`layers.fused_dense`)."""

    fused: bool = False

    @nn.compact
    def __call__(self, x):
        modules = [Dense(o, name=f"proj_{o}") for o in (24, 32, 40)]
        if self.fused and not self.is_initializing():
            return fused_dense(modules, x)
        return [m(x) for m in modules]


@pytest.mark.parametrize("spec", [None] + SPECS, ids=lambda s: s.scheme if s else "float")
def test_fused_projections_equal_each_layer_and_join_once_outside_the_loop(spec):
    """A decoding step's q, k and v in one product: every output equals its layer's own product, and
    inside a loop the kernels are joined once, before it (the loop carries the joined kernel)."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 1, 32)), jnp.float32)
    params = _ThreeProjections().init(jax.random.key(0), x)["params"]
    if spec is not None:  # W [O, I] from each flax kernel [I, O]
        params = {name: {"kernel": Q.quantize_matrix(p["kernel"].T, spec.scheme, spec.group_size), "bias": p["bias"]}
                  for name, p in params.items()}
    separate = jax.jit(_ThreeProjections().apply)({"params": params}, x)
    fused = jax.jit(_ThreeProjections(fused=True).apply)({"params": params}, x)
    for a, b in zip(fused, separate, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    def run(params, x):
        def step(i, x):
            q, k, v = _ThreeProjections(fused=True).apply({"params": params}, x)
            return jnp.tanh(q[..., :24].sum(-1, keepdims=True) + k + v[..., :32])
        return jax.lax.fori_loop(0, 3, step, x)

    hlo = jax.jit(run).lower(params, x).compile().as_text()
    joined = "f32[32,96]" if spec is None else "[96,32]"
    loops = [line for line in hlo.splitlines() if " while(" in line]
    assert loops and all(joined in line for line in loops)


def _float_copies_of_int8(hlo: str) -> list[str]:
    """Fused computations of a compiled program that take one int8 array and return a float32 array of
    as many elements: a float copy of it, written out."""
    found = []
    for name, shape_in, shape_out in re.findall(r"^%(\S+) \(\S+: s8\[([\d,]+)\]\) -> f32\[([\d,]+)\]", hlo, re.M):
        if math.prod(map(int, shape_in.split(","))) == math.prod(map(int, shape_out.split(","))):
            found.append(name)
    return found


def test_int8_cross_cache_is_read_as_int8_by_the_cpu_program():
    """With generation's CPU options (`CPU_INT8_CACHE_OPTIONS`) the products over an int8 cross cache
    convert its keys and values as they read them; XLA's default writes a float32 copy of the values
    first, at every step of the loop. Shapes of one led-base head group: 12 heads, 1,024 positions."""
    rng = np.random.default_rng(0)
    kv = KeyValue(keys=jnp.asarray(rng.normal(size=(1, 12, 1024, 64)), jnp.float32),
                  values=jnp.asarray(rng.normal(size=(1, 12, 1024, 64)), jnp.float32))
    cache = CrossKeyValue.build(kv, "int8")
    q = jnp.asarray(rng.normal(size=(1, 12, 4, 64)), jnp.float32)

    def loop(c, q):  # three decoding steps' cross-attention over the same cache
        return jax.lax.fori_loop(0, 3, lambda i, q: c.mix(jax.nn.softmax(c.scores(q), -1)), q)

    default = jax.jit(loop).lower(cache, q).compile()
    tuned = jax.jit(loop, compiler_options=generation.CPU_INT8_CACHE_OPTIONS).lower(cache, q).compile()
    assert _float_copies_of_int8(default.as_text()), "the oracle: XLA's default copies the cache to float32"
    assert not _float_copies_of_int8(tuned.as_text())
    np.testing.assert_allclose(tuned(cache, q), default(cache, q), rtol=1e-4, atol=1e-5)  # summation order

