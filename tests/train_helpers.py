"""A tiny training job for the tests: a small LED from scratch on a few ACLSum papers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from led_flax.train import config as config_lib

from conftest import NEUTRAL_CWD
# the training subprocesses of a session share JAX's persistent compilation cache: the same step
# compiles once, not once per process
SUBPROCESS_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_COMPILATION_CACHE_DIR": tempfile.mkdtemp(prefix="led-flax-jit-"),
                  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

TINY_LED = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=64, decoder_ffn_dim=64, attention_window=16, max_encoder_position_embeddings=256,
                max_decoder_position_embeddings=32, dropout=0.1)


def tiny_config(output_dir, tokenizer_dir, overrides=(), **sections):
    data = {
        "output_dir": str(output_dir), "steps": 8, "log_every": 1,
        "model": {"init": "scratch", "led": dict(TINY_LED)},
        "tokenizer": {"path": str(tokenizer_dir)},
        "data": {"max_source_length": 256, "max_target_length": 32, "buckets": [128, 256], "batch_size": 4,
                 "max_train_examples": 16, "max_eval_examples": 4},
        "optimizer": {"learning_rate": 3e-3, "warmup_steps": 2},
        "checkpoint": {"every_steps": 2, "keep_last": 2, "keep_best": 1},
        "eval": {"every_steps": 4, "rouge_examples": 0, "batch_size": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return config_lib.from_dict(data, overrides)


def write_config(cfg, path) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_lib.dump(cfg))
    return str(path)


def train_cli(args, env=None, timeout=300):
    """`python -m led_flax.cli train ARGS` in a subprocess; returns the CompletedProcess."""
    full = {**os.environ, **SUBPROCESS_ENV, **(env or {})}
    return subprocess.run([sys.executable, "-m", "led_flax.cli", "train", "--quiet", *args], cwd=NEUTRAL_CWD, env=full,
                          capture_output=True, text=True, timeout=timeout)


def read_jsonl(path) -> list[dict]:
    """The records of a jsonl file (metrics.jsonl, processes/N.steps.jsonl)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
