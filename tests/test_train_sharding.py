"""Sharded training: a (2, 2, 2) data x FSDP x tensor mesh on 8 fake CPU devices against one device,
dry runs of the led-base and led-large configs, and a two-process job through jax.distributed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import aclsum_texts, run_on_eight_devices
from conftest import NEUTRAL_CWD
from train_helpers import SUBPROCESS_ENV, read_jsonl, tiny_config, write_config

from led_flax.train import data as data_lib
from led_flax.train.loop import run


@pytest.fixture(scope="module")
def eight_devices():
    return run_on_eight_devices("train_sharded_worker.py")


def test_the_2x2x2_step_equals_the_one_device_step(eight_devices):
    r = eight_devices
    assert r["devices"] == 8
    for a, b in zip(r["losses_1"], r["losses_8"]):
        assert abs(a - b) <= 1e-6 * abs(a)
    assert r["max_param_diff"] < 1e-4  # after two AdamW steps at lr 1e-2


def test_parameters_and_moments_are_split_over_fsdp_and_tensor(eight_devices):
    shards = eight_devices["shards"]
    # kernels [layers, in, out] of the scanned runs: the layer axis whole, d_model over fsdp (2), heads /
    # feed-forward / vocabulary over tensor (2)
    run = "led/encoder/scan_0_1"
    assert shards[f"{run}/self_attn/longformer_self_attn/query/kernel"] == [[2, 32, 32], [2, 16, 16]]
    assert shards[f"{run}/self_attn/output/kernel"] == [[2, 32, 32], [2, 16, 16]]
    assert shards[f"{run}/fc1/kernel"] == [[2, 32, 64], [2, 16, 32]]
    assert shards["led/decoder/scan_0_1/fc2/kernel"] == [[2, 64, 32], [2, 32, 16]]
    assert shards["led/shared/embedding"] == [[96, 32], [48, 16]]
    assert shards["led/encoder/embed_positions/embedding"] == [[64, 32], [64, 16]]
    assert shards[f"{run}/final_layer_norm/scale"] == [[2, 32], [2, 16]]
    assert shards[f"{run}/fc1/bias"] == [[2, 64], [2, 32]]
    # AdamW's moments are sharded as their parameters
    assert list(eight_devices["moment_shards"].values()) == [[2, 16, 32], [2, 16, 32]]
    # the batch [accum, 8 examples, tokens]: examples over data x fsdp = 4 devices
    assert eight_devices["batch_shard"] == [2, 2, 24]


def test_led_base_and_large_dry_runs_fit_their_meshes(eight_devices):
    base, large = eight_devices["led-base-16384"], eight_devices["led-large-16384"]
    assert base["mesh"] == {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}
    assert large["mesh"] == {"data": 1, "fsdp": 4, "sequence": 1, "tensor": 2}
    gib = 2 ** 30
    # 162M and 460M float32 parameters; params + two AdamW moments per device
    assert 0.60 * gib < base["params_bytes"][1] < 0.61 * gib
    assert 1.71 * gib < large["params_bytes"][1] < 1.72 * gib
    assert base["state_bytes"][0] < base["state_bytes"][1] / 7.9  # everything split 8 ways
    assert large["state_bytes"][0] < large["state_bytes"][1] / 6.5  # the vocabulary (50265) stays whole on tensor
    assert base["fc1_shard"] == [6, 96, 3072] and large["fc1_shard"] == [12, 256, 2048]  # [layers, in, out]
    assert large["kept_whole"] == ["final_logits_bias vocab=50265", "led/shared/embedding vocab=50265"]
    assert base["batch_shard"] == [2, 1, 16384] and large["batch_shard"] == [4, 2, 16384]
    assert base["loss_shape"] == [] == large["loss_shape"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one(tmp_path):
    tok = tmp_path / "tok"
    data_lib.train_tokenizer(aclsum_texts(20), str(tok), vocab_size=400)
    sections = dict(steps=3, data={"shards": 2}, checkpoint={"every_steps": 0}, eval={"every_steps": -1})
    multi = tmp_path / "multi"
    cfg = write_config(tiny_config(multi, tok, **sections), tmp_path / "multi.yaml")
    port = _free_port()
    env = {**os.environ, **SUBPROCESS_ENV}
    procs = [subprocess.Popen([sys.executable, "-m", "led_flax.cli", "train", "--quiet", "--config", cfg,
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=NEUTRAL_CWD, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]

    single = tmp_path / "single"
    run(tiny_config(single, tok, **sections), progress=False)

    # each process read only its own shard
    shards = [json.load(open(multi / "processes" / f"{i}.json")) for i in range(2)]
    assert [s["shards"] for s in shards] == [[0], [1]]
    ids = [set(s["train_ids"]["0" if i == 0 else "1"]) for i, s in enumerate(shards)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    one = json.load(open(single / "processes" / "0.json"))
    assert ids[0] | ids[1] == set(one["train_ids"]["0"]) | set(one["train_ids"]["1"])
    # every step, both processes padded to the same bucket
    steps = [read_jsonl(str(multi / "processes" / f"{i}.steps.jsonl")) for i in range(2)]
    assert [r["bucket"] for r in steps[0]] == [r["bucket"] for r in steps[1]]
    assert all(r["bucket"] >= r["local_length"] for s in steps for r in s)
    # the same losses as one process holding both shards, to float32 noise
    multi_losses = [r["loss"] for r in read_jsonl(str(multi / "metrics.jsonl")) if r["kind"] == "train"]
    single_losses = [r["loss"] for r in read_jsonl(str(single / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(multi_losses) == 3
    for a, b in zip(multi_losses, single_losses):
        assert abs(a - b) <= 2e-6 * abs(b), (multi_losses, single_losses)
