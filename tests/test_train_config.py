"""Training configs and data: strict keys, clear errors, ACLSum documents without their abstracts,
a deterministic, resumable, shard-composable loader."""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import aclsum_texts, xla_flags
from led_flax import configs
from train_helpers import TINY_LED, tiny_config, train_cli, write_config

from led_flax import LEDConfig
from led_flax.summarization.buckets import bucket_for
from led_flax.cli import main as cli_main
from led_flax.parallel.sharding import ShardingError, make_mesh
from led_flax.train import config as config_lib
from led_flax.train import data as data_lib
from led_flax.train.config import TrainConfigError


@pytest.mark.parametrize("name", ["tiny-aclsum", "led-base-16384", "led-large-16384"])
def test_the_shipped_configs_load_and_list_every_field(name):
    path = str(configs.path(name))  # the installed package data
    cfg = config_lib.load(path)
    import yaml
    with open(path) as f:
        raw = yaml.safe_load(f)
    for section, value in cfg.to_dict().items():  # every field is written out (and so documented)
        assert section in raw, section
        if isinstance(value, dict) and section != "model":
            assert set(raw[section]) == set(value), section


def test_overrides_parse_as_yaml_and_type_check():
    cfg = config_lib.from_dict({}, ["optimizer.learning_rate=1e-4", "data.buckets=[512, 1024]",
                                    "model.remat=save_dots", "model.scan_layers=false", "steps=7"])
    assert cfg.optimizer.learning_rate == 1e-4 and cfg.data.buckets == (512, 1024)
    assert cfg.model.remat == "save_dots" and cfg.model.scan_layers is False and cfg.steps == 7


@pytest.mark.parametrize("old, remat", [(True, "full"), (False, "none")])
def test_the_old_gradient_checkpointing_key_reads_as_remat_and_says_so(old, remat, caplog):
    with caplog.at_level("WARNING", logger="led_flax.train"):
        cfg = config_lib.from_dict({"model": {"gradient_checkpointing": old}})
    assert cfg.model.remat == remat
    assert "model.gradient_checkpointing is now model.remat" in caplog.text
    assert config_lib.from_dict({}, [f"model.gradient_checkpointing={str(old).lower()}"]).model.remat == remat
    with pytest.raises(config_lib.TrainConfigError, match="contradicts model.remat"):
        config_lib.from_dict({"model": {"gradient_checkpointing": True, "remat": "none"}})
    with pytest.raises(config_lib.TrainConfigError, match="model.remat is 'some'; use one of none, full, save_dots"):
        config_lib.from_dict({"model": {"remat": "some"}})


@pytest.mark.parametrize("data, overrides, message", [
    ({"optimizer": {"learnig_rate": 1e-3}}, (), "unknown key optimizer.learnig_rate; did you mean "
                                                "optimizer.learning_rate"),
    ({"stepz": 3}, (), "unknown key stepz; did you mean steps"),
    ({"steps": "ten"}, (), "steps must be an integer"),
    ({}, ["model.dtype=float16"], "model.dtype is 'float16'; use one of float32, bfloat16"),
    ({}, ["optimizer.grad_accum_steps=3"], "not a multiple of optimizer.grad_accum_steps"),
    ({}, ["data.source=jsonl"], "data.source jsonl needs data.train_file"),
    ({}, ["learning_rate"], "write key=value"),
    ({"data": 5}, (), "data. must be a mapping"),
])
def test_bad_configs_name_the_key_and_the_fix(data, overrides, message):
    with pytest.raises(TrainConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_lib.from_dict(data, overrides)


def test_the_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 10\noptimiser:\n  learning_rate: 0.1\n")
    assert cli_main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key optimiser; did you mean optimizer?" in err and "Traceback" not in err
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "no config file" in capsys.readouterr().err


def test_a_mesh_that_does_not_fit_the_devices_is_explained():
    with pytest.raises(ShardingError, match="needs 4 devices but there are 1"):
        make_mesh(2, 2, 1)
    with pytest.raises(ShardingError, match="needs 2 devices but there are 1"):
        make_mesh(1, 1, 1, sequence=2)
    assert dict(make_mesh(-1, 1, 1).shape) == {"data": 1, "fsdp": 1, "sequence": 1, "tensor": 1}


def test_aclsum_uses_the_package_split_and_never_shows_the_abstract():
    cfg = config_lib.DataConfig()
    splits = {s: data_lib.load_examples(cfg, s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 100, "validation": 50, "test": 100}
    ids = [{e.id for e in v} for v in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for e in (e for v in splits.values() for e in v):
        assert len(e.summary) > 100 and len(e.document) > 5 * len(e.summary), e.id
        assert " ".join(e.summary.split()) not in " ".join(e.document.split()), e.id
        # no paragraph of the document is (part of) the abstract; 6 of the 250 introductions do repeat
        # one abstract sentence in their own words' order: that is the paper's text and stays
        assert not any(p.strip() in e.summary for p in e.document.split("\n\n")), e.id
    # a shard is every num_shards-th example and is all that is read
    shard = data_lib.load_examples(cfg, "train", 1, 4, limit=20)
    assert [e.id for e in shard] == [e.id for e in splits["train"][:20][1::4]]


def test_jsonl_records_need_the_text_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "summary": "b"}) + "\n")
    cfg = config_lib.DataConfig(source="jsonl", train_file=str(path))
    with pytest.raises(TrainConfigError, match="record 1 has no text field 'document'"):
        data_lib.load_examples(cfg, "train")
    assert data_lib.load_examples(config_lib.DataConfig(source="jsonl", train_file=str(path), document_field="text"),
                                  "train")[0].document == "a"


def _tokenized(n, seed):
    rng = np.random.default_rng(seed)
    src = tuple(tuple(rng.integers(3, 50, rng.integers(5, 60)).tolist()) + (2,) for _ in range(n))
    tgt = tuple(tuple(rng.integers(3, 50, rng.integers(2, 9)).tolist()) + (2,) for _ in range(n))
    return data_lib.Tokenized(src, tgt)


def _source(shards, rows=2, accum=1):
    return data_lib.BatchSource(shards, rows, accum, (16, 32, 64), 12, 1, seed=3, sort_window=2)


def test_batches_are_bucketed_padded_and_labelled():
    a = _tokenized(10, 0)
    b = _source({0: a}, rows=4, accum=2)[0]
    assert b["input_ids"].shape[:2] == (2, 2) and b["input_ids"].shape[2] in (16, 32, 64)
    assert b["labels"].shape == (2, 2, 12) and (b["labels"] == -100).any()
    assert (b["global_attention_mask"][..., 0] == 1).all() and (b["global_attention_mask"][..., 1:] == 0).all()
    assert ((b["input_ids"] == 1) == (b["attention_mask"] == 0)).all()
    lengths = b["attention_mask"].sum(-1)
    assert lengths.max() <= b["input_ids"].shape[2] and (b["input_ids"].shape[2] == 16 or lengths.max() > 16)


def _as_processes(*jobs):
    """Runs each job(agree_max) in a thread standing in for a process; `agree_max` is the largest value
    over all of them, as `train.loop` gets it from jax.distributed. Returns the jobs' results."""
    barrier, values, results = threading.Barrier(len(jobs)), [0] * len(jobs), [None] * len(jobs)

    def agree_for(i):
        def agree_max(value):
            values[i] = value
            barrier.wait()
            out = max(values)
            barrier.wait()  # nobody overwrites values before all have read them
            return out
        return agree_max

    def work(i):
        results[i] = jobs[i](agree_for(i))
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None for r in results)
    return results


def test_the_loader_is_deterministic_resumable_and_shard_composable():
    a, b = _tokenized(12, 0), _tokenized(12, 1)
    it = data_lib.train_iterator(_source({0: a, 1: b}))
    first = [next(it) for _ in range(3)]
    state = it.get_state()
    after = [next(it) for _ in range(8)]  # crosses an epoch boundary (6 batches per epoch)
    again = data_lib.train_iterator(_source({0: a, 1: b}))
    again.set_state(state)
    for x, y in zip(after, [next(again) for _ in range(8)]):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    # one process holding shards 0 and 1 reads what two processes, one shard each, read together, each
    # padded to the bucket they agree on
    def three_steps(shards):
        return lambda agree: list(itertools.islice(data_lib.TrainBatches(_source(shards), agree), 3))
    two = _as_processes(three_steps({0: a}), three_steps({1: b}))
    for batch, x, y in zip(first, *two):
        assert x.bucket == y.bucket == batch["input_ids"].shape[-1] >= max(x.local_length, y.local_length)
        for k in batch:
            np.testing.assert_array_equal(batch[k], np.concatenate([x.arrays[k], y.arrays[k]], axis=1))
    assert not np.array_equal(after[0]["input_ids"], after[6]["input_ids"])  # the next epoch is reshuffled


def test_validation_batches_agree_on_count_and_bucket_across_processes():
    a = _tokenized(5, 0)
    b = data_lib.Tokenized(((5,) * 9 + (2,),), ((6, 2),))  # one short document: bucket 16 on its own
    batches = _as_processes(*[lambda agree, d=d: list(data_lib.validation_batches(d, 2, (16, 32, 64), 12, 1, agree))
                              for d in (a, b)])
    assert [len(p) for p in batches] == [3, 3]  # the process with one example adds two empty batches
    for x, y in zip(*batches):
        assert x["input_ids"].shape == y["input_ids"].shape and x["labels"].shape == (2, 12)
    # each process's first batch holds its longest documents: the longest of all sets the bucket
    assert batches[1][0]["input_ids"].shape[-1] == bucket_for(max(len(r) for r in a.input_ids), (16, 32, 64))
    assert batches[1][0]["attention_mask"].sum(-1).tolist() == [10, 1]
    for filler in batches[1][1:]:  # empty rows: nothing to score, attention on <s> alone
        assert (filler["labels"] == -100).all() and (filler["attention_mask"].sum(-1) == 1).all()
    tokens = sum(int((batch["labels"] != -100).sum()) for p in batches for batch in p)
    assert tokens == sum(len(r) for d in (a, b) for r in d.labels)  # every label once


def _mesh(data=1, fsdp=1):
    return SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": 1})


@pytest.mark.parametrize("overrides, mesh, processes, message", [
    (["data.batch_size=6"], _mesh(2, 2), 1, "a microbatch of 6 examples (data.batch_size / grad_accum_steps) does "
                                            "not split over the 4 data-parallel devices"),
    (["data.batch_size=6"], _mesh(), 4, "data.batch_size 6 does not split over 4 processes"),
    (["data.max_source_length=300"], _mesh(), 1, "data.max_source_length 300 exceeds the model's 256 encoder"),
    (["data.max_target_length=33"], _mesh(), 1, "data.max_target_length 33 exceeds the model's 32 decoder"),
    (["data.buckets=[100, 256]"], _mesh(), 1, "data.buckets [100] are not multiples of the attention window 16"),
    (["data.buckets=[128]"], _mesh(), 1, "the largest bucket 128 is below data.max_source_length 256"),
    (["data.shards=3"], _mesh(), 2, "data.shards 3 does not split over 2 processes; use a multiple of 2"),
    (["data.shards=8"], _mesh(), 2, "data.batch_size 4 must split into 8 data shards x 1 microbatches"),
])
def test_the_config_check_against_model_mesh_and_processes(overrides, mesh, processes, message):
    cfg = tiny_config("unused", "unused", overrides)
    config_lib.check(tiny_config("unused", "unused"), LEDConfig(**TINY_LED), mesh, processes)  # the base passes
    with pytest.raises(TrainConfigError, match=re.escape(message)):
        config_lib.check(cfg, LEDConfig(**TINY_LED), mesh, processes)


def test_the_dry_run_fails_where_the_run_would(tmp_path):
    tok = tmp_path / "tok"
    data_lib.train_tokenizer(aclsum_texts(4), str(tok), vocab_size=300)
    # a microbatch of 6 examples over 4 data-parallel devices
    cfg = write_config(tiny_config(tmp_path / "run", tok, data={"batch_size": 6}), tmp_path / "bad.yaml")
    four = {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4")}
    runs = [train_cli(["--config", cfg, *extra], env=four) for extra in (["--dry-run"], [])]
    for out in runs:
        assert out.returncode == 2, out.stderr[-3000:]
    dry, real = (out.stderr.strip().splitlines()[-1] for out in runs)
    assert dry == real == ("led-flax train: error: a microbatch of 6 examples (data.batch_size / grad_accum_steps) "
                           "does not split over the 4 data-parallel devices (mesh data x fsdp); make it a multiple "
                           "of 4")
    assert not os.path.exists(tmp_path / "run" / "processes")  # the run stopped before reading data


def test_the_dry_run_prints_the_mesh_shardings_and_bytes(capsys):
    assert cli_main(["train", "--config", "tiny-aclsum", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mesh: {'data': 1, 'fsdp': 1, 'sequence': 1, 'tensor': 1} over 1 devices" in out
    assert "train state (params + AdamW moments):" in out and "GiB per device" in out
    # the scanned layout: one stacked run per stack, its leading layer axis kept whole
    assert "led/encoder/scan_0_1/fc1/kernel" in out and "(2, 128, 512)    P(None, None, None)" in out
    assert cli_main(["train", "--config", "tiny-aclsum", "--dry-run",
                     "--set", "model.scan_layers=false", "--compile"]) == 0
    out = capsys.readouterr().out
    assert "led/encoder/layers_0/fc1/kernel" in out and "led/encoder/layers_1/" not in out
    # --compile: XLA's own figures for the compiled step, labelled as this backend's
    assert "compiled step, XLA's memory analysis per device on this backend (cpu" in out
    assert re.search(r"temporaries 0\.\d{3} GiB", out)
