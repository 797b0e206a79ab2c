"""The training job end to end: resume after SIGKILL (also mid-save), NaN stop, overfitting, export."""

from __future__ import annotations

import json
import os
import signal

import jax
import numpy as np
import pytest

from conftest import aclsum_texts, torch, transformers
from train_helpers import read_jsonl, tiny_config, train_cli, write_config

from led_flax.io import checkpoint
from led_flax.train import data as data_lib
from led_flax.train.checkpoints import Checkpoints
from led_flax.train.loop import FAULT_ENV, Job, TrainingError, run


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-tokenizer") / "tok"
    data_lib.train_tokenizer(aclsum_texts(20), str(d), vocab_size=400)
    return str(d)


def _losses(path):
    records = read_jsonl(os.path.join(path, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _params(path):
    return jax.tree_util.tree_leaves(checkpoint.load(os.path.join(path, "final")).params)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tokenizer_dir):
    out = tmp_path_factory.mktemp("uninterrupted")
    run(tiny_config(out, tokenizer_dir), progress=False)
    return str(out)


def test_killed_runs_resume_on_the_same_curve(tmp_path, tokenizer_dir, uninterrupted):
    out = tmp_path / "run"
    cfg = write_config(tiny_config(out, tokenizer_dir), tmp_path / "tiny.yaml")
    # SIGKILL after step 5 (checkpoint 4 may still be in flight: 2 is complete, orbax waits for it before 4)
    first = train_cli(["--config", cfg], env={FAULT_ENV: "kill_after_step=5"})
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    # resumed, then SIGKILL right after starting the asynchronous save of step 6
    second = train_cli(["--config", cfg], env={FAULT_ENV: "kill_during_save=6"})
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert "resumed from step" in second.stderr
    resumed_from = int(second.stderr.split("resumed from step ")[1].split()[0])
    assert resumed_from in (2, 4)
    third = train_cli(["--config", cfg])
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from step" in third.stderr

    ref, got = _losses(uninterrupted), _losses(out)
    assert sorted(got) == list(range(1, 9)) and got == ref  # step for step, bit for bit
    for a, b in zip(_params(uninterrupted), _params(out)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the last two and the best by validation loss; no temporary directory left behind
    steps = Checkpoints(os.path.join(out, "checkpoints"), 2, 1).manager.all_steps()
    assert {6, 8} <= set(steps) and len(steps) <= 3
    assert not [d for d in os.listdir(os.path.join(out, "checkpoints")) if "tmp" in d]


def test_the_export_loads_in_transformers_with_the_same_logits(uninterrupted):
    from led_flax.model.heads import model_for
    ckpt = checkpoint.load(os.path.join(uninterrupted, "final"))
    config, params = ckpt.config, ckpt.params
    hf = transformers.LEDForConditionalGeneration.from_pretrained(os.path.join(uninterrupted, "hf")).eval()
    tok = transformers.LEDTokenizer.from_pretrained(os.path.join(uninterrupted, "hf"))
    ids = np.asarray([tok("A short document about parsing.")["input_ids"]])
    dec = np.asarray([[2, 0, 100, 101]])
    ours = model_for(config).apply({"params": params}, ids, decoder_input_ids=dec).logits
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(dec)).logits.numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)


def test_a_nan_stops_the_job_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer_dir):
    # the learning rate warms up from 0 (step 1 changes nothing), then explodes the parameters at step 2
    cfg = tiny_config(tmp_path, tokenizer_dir, optimizer={"learning_rate": 1e30, "warmup_steps": 2,
                                                          "schedule": "constant"},
                      checkpoint={"every_steps": 1}, eval={"every_steps": -1})
    with pytest.raises(TrainingError, match=r"at step 2: training stopped without saving. The last good "
                                            r"checkpoint is step 1"):
        run(cfg, progress=False)
    ckpts = Checkpoints(os.path.join(tmp_path, "checkpoints"), 2, 1)
    assert list(ckpts.manager.all_steps()) == [1]
    job = Job(cfg)
    state = job.restore(ckpts, 1)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(state["params"]))


def test_a_tiny_model_overfits_a_handful_of_examples(tmp_path, tokenizer_dir):
    texts = aclsum_texts(3)
    path = tmp_path / "few.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for t in texts[:2]:
            f.write(json.dumps({"document": t[:600], "summary": t[:40]}) + "\n")
    cfg = tiny_config(tmp_path / "out", tokenizer_dir, steps=60,
                      model={"dropout": False},
                      data={"source": "jsonl", "train_file": str(path), "validation_file": str(path),
                            "batch_size": 2, "max_train_examples": None},
                      optimizer={"learning_rate": 1e-2, "warmup_steps": 5, "schedule": "constant",
                                 "weight_decay": 0.0},
                      checkpoint={"every_steps": 0}, eval={"every_steps": 0, "rouge_examples": 2, "num_beams": 1,
                                                           "max_length": 32})
    last = run(cfg, progress=False)
    losses = _losses(tmp_path / "out")
    assert losses[1] > 4 and last["loss"] < 0.2, (losses[1], last)
    assert last["val_loss"] < 0.2
    assert last["rouge1"] > 90, last  # it learned to write the summaries it saw
    events = os.listdir(tmp_path / "out" / "tensorboard")
    assert events and all(e.startswith("events.out.tfevents") for e in events)
    evals = [r for r in read_jsonl(str(tmp_path / "out" / "metrics.jsonl")) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [60] and {"val_loss", "rouge1", "rouge2", "rougeL"} <= set(evals[0])


def test_a_checkpoint_from_before_scanned_layers_restores_restacked(tmp_path, tokenizer_dir):
    """A run that saved per-layer parameters and no layout record (what checkpoints were before layers
    scanned) resumes under scan_layers: params and AdamW moments are restacked, exactly."""
    old_cfg = tiny_config(tmp_path, tokenizer_dir, steps=2, model={"scan_layers": False, "remat": "none"},
                          eval={"every_steps": -1})
    run(old_cfg, progress=False)
    ckpt_dir = os.path.join(tmp_path, "checkpoints")
    import shutil
    shutil.rmtree(os.path.join(ckpt_dir, "2", "layout"))  # the pre-scan format had no layout record
    ckpts = Checkpoints(ckpt_dir, 2, 1)
    assert ckpts.saved_layout(2) is False
    old = jax.device_get(Job(old_cfg).restore(ckpts, 2))

    new_cfg = tiny_config(tmp_path, tokenizer_dir, steps=3, model={"remat": "full"}, eval={"every_steps": -1})
    job = Job(new_cfg)
    new = jax.device_get(job.restore(ckpts, 2))
    from led_flax.train.checkpoints import relayout
    expected = relayout(old, job.setup.config, True)
    assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(expected)
    assert "scan_0_0" in new["params"]["led"]["encoder"]
    for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(new["params"]["led"]["encoder"]["scan_0_0"]["fc1"]["kernel"][0],
                                  old["params"]["led"]["encoder"]["layers_0"]["fc1"]["kernel"])
    # and the run continues from it, in the scanned layout, recording it
    last = run(new_cfg, progress=False)
    assert np.isfinite(last["loss"]) and ckpts.saved_layout(3) is True
