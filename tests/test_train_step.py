"""The train step against the PyTorch reference: one batch's loss and gradients (accumulated over two
microbatches here, one batch there), then one clipped AdamW update."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from conftest import rel_err, torch

from led_flax import convert
from led_flax.model.heads import model_for
from led_flax.train import step as step_lib
from led_flax.train.config import OptimizerConfig


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    b, n, t = 4, 36, 10
    ids = rng.integers(3, 97, (b, n)).astype(np.int32)
    mask = np.ones((b, n), np.int32)
    mask[1, 25:] = 0
    mask[3, 30:] = 0
    ids[mask == 0] = 1
    ids[np.arange(b), mask.sum(1) - 1] = 2  # </s>
    glob = np.zeros_like(mask)
    glob[:, 0] = 1
    labels = rng.integers(3, 97, (b, t)).astype(np.int32)
    labels[0, 6:] = -100
    labels[2, 4:] = -100
    return {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob, "labels": labels}


def _null(grad) -> bool:
    return float(grad.abs().max()) < 1e-7


def _torch_step(model, batch, lr, wd, clip):
    model.train()
    out = model(input_ids=torch.tensor(batch["input_ids"], dtype=torch.long),
                attention_mask=torch.tensor(batch["attention_mask"]),
                global_attention_mask=torch.tensor(batch["global_attention_mask"]),
                labels=torch.tensor(batch["labels"], dtype=torch.long))
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    no_decay = [p for k, p in model.named_parameters() if k.endswith("bias") or k.endswith("norm.weight")
                or k.endswith("layernorm_embedding.weight")]
    ids = {id(p) for p in no_decay}
    decay = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.999), eps=1e-8)
    opt.step()
    return float(out.loss.detach()), grads, float(norm), {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def reference_step(checkpoints):
    import copy
    directory, torch_model = checkpoints["conditional_generation"]
    config, params = convert.from_hf(directory)
    torch_model = copy.deepcopy(torch_model)
    before = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    batch = _batch()
    lr, wd, clip = 1e-3, 0.01, 0.5
    loss, grads, norm, after = _torch_step(torch_model, batch, lr, wd, clip)
    return config, params, batch, (lr, wd, clip), (loss, grads, norm, before, after)


def test_loss_and_gradients_equal_the_reference(reference_step):
    config, params, batch, _, (loss, grads, norm, _, _) = reference_step
    model = model_for(config, "conditional_generation")
    # two microbatches of two: the loss is the token sum over the token count of the step, as the
    # reference's mean over the whole batch
    micro = {k: v.reshape(2, 2, *v.shape[1:]) for k, v in batch.items()}
    ours_loss, count, ours_grads = jax.jit(
        lambda p, b: step_lib.loss_and_grads(model, p, b, jax.random.PRNGKey(0)))(params, micro)
    assert int(count) == int((batch["labels"] != -100).sum())
    assert abs(float(ours_loss) - loss) / loss < 1e-5
    flat = convert.to_state_dict(config, jax.device_get(ours_grads))
    for name, g in grads.items():
        key = name if name in flat else name.replace("lm_head.weight", "led.shared.weight")
        if _null(g):  # the key biases: softmax ignores them, both gradients are rounding noise
            assert np.abs(flat[key]).max() < 1e-6, name
            continue
        assert rel_err(flat[key], g) < 1e-4, name
    assert np.all(np.asarray(ours_grads["final_logits_bias"]) == 0)  # a buffer in the reference
    assert abs(float(step_lib.optax.global_norm(ours_grads)) - norm) / norm < 1e-5
    assert norm > 0.5  # so the clipping below is exercised


def test_one_adamw_update_equals_the_reference(reference_step):
    config, params, batch, (lr, wd, clip), (_, grads, _, before, after) = reference_step
    model = model_for(config, "conditional_generation")
    opt = OptimizerConfig(learning_rate=lr, schedule="constant", warmup_steps=0, weight_decay=wd, max_grad_norm=clip)
    tx = step_lib.optimizer(opt, 10)
    from led_flax.parallel import sharding as shd
    mesh = shd.make_mesh(1, 1, 1, jax.devices()[:1])
    state = step_lib.init_state(params, tx, 0)
    shapes = jax.eval_shape(lambda: state)
    shardings = step_lib.state_shardings(shapes, tx, mesh)
    state = jax.device_put(state, shardings)
    run = step_lib.make_train_step(model, tx, step_lib.schedule(opt, 10), mesh, shardings, dropout=False)
    state, metrics = run(state, step_lib.global_batch({k: v[None] for k, v in batch.items()}, mesh))
    new = convert.to_state_dict(config, jax.device_get(state["params"]))
    for name, value in after.items():
        if name not in new:
            continue  # lm_head.weight: tied to led.shared.weight
        delta_ref = value.double().numpy() - before[name].double().numpy()
        delta = np.asarray(new[name], np.float64) - before[name].double().numpy()
        if name == "final_logits_bias":
            assert np.all(delta == 0) and np.all(delta_ref == 0)
            continue
        if _null(grads[name]):  # Adam turns a zero gradient's rounding noise into +-lr: no direction to compare
            continue
        assert rel_err(delta, torch.tensor(delta_ref)) < 2e-3, name
    assert int(state["step"]) == 1 and np.isfinite(float(metrics["loss"]))


def test_label_smoothing_changes_the_loss_and_zero_is_plain_cross_entropy(reference_step):
    config, params, batch, _, (loss, *_) = reference_step
    model = model_for(config, "conditional_generation")
    losses = jax.jit(lambda p, b: [step_lib.batch_loss(model, p, b, None, label_smoothing=s) for s in (0.0, 0.1)])
    (plain, count), (smooth, _) = losses(params, batch)
    plain, smooth = plain / count, smooth / count
    assert abs(float(plain) - loss) / loss < 1e-5
    assert float(smooth) != pytest.approx(float(plain), rel=1e-3)


def test_bfloat16_compute_with_remat_tracks_the_reference(reference_step):
    config, params, batch, _, (loss, grads, *_) = reference_step
    model = model_for(config, "conditional_generation", dtype=jax.numpy.bfloat16, remat="full")
    ours_loss, _, ours_grads = jax.jit(lambda p, b: step_lib.loss_and_grads(model, p, b, jax.random.PRNGKey(0)))(
        params, {k: v[None] for k, v in batch.items()})
    flat = convert.to_state_dict(config, jax.device_get(ours_grads))
    assert all(g.dtype == np.float32 for g in flat.values())  # float32 master gradients
    assert abs(float(ours_loss) - loss) / loss < 2e-2
    names = [k for k in grads if k in flat]
    a = np.concatenate([np.ravel(flat[k]) for k in names])
    b = np.concatenate([grads[k].numpy().ravel() for k in names])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99


def test_dropout_masks_come_from_xla_threefry_and_follow_the_key():
    """Training's dropout generator (`train.dropout_prng`): the compiled mask is XLA's ThreeFry
    RngBitGenerator; the same key gives the same mask, a folded-in step another; the drop rate is the
    asked one (binomial: 0.1 of 10^6 draws, standard deviation 3e-4)."""
    from led_flax.train.dropout_prng import DROPOUT_PRNG
    key = jax.random.key(7, impl=DROPOUT_PRNG)

    def keep(key):
        return jax.random.bernoulli(key, 0.9, (1000, 1000))

    hlo = jax.jit(keep).lower(key).as_text()
    assert "rng_bit_generator" in hlo and "THREE_FRY" in hlo.upper()
    a, b = jax.jit(keep)(key), jax.jit(keep)(key)
    c = jax.jit(keep)(jax.random.fold_in(key, 1))
    np.testing.assert_array_equal(a, b)
    assert 0.5 > float((a != c).mean()) > 0.1
    assert abs(float(a.mean()) - 0.9) < 2e-3
    # a train state keeps only the key's words: they restore the same key
    again = jax.random.wrap_key_data(jax.random.key_data(key), impl=DROPOUT_PRNG)
    np.testing.assert_array_equal(jax.jit(keep)(again), a)
