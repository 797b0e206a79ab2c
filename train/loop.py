"""The training job: data, model, mesh, the step loop, evaluation, checkpoints, export.

`run(config)` trains for `config.steps` optimizer steps, resuming from the latest checkpoint in
`output_dir/checkpoints` if there is one, and ends with `output_dir/final` (a led-flax checkpoint
that `led-flax summarize` reads) and `output_dir/hf` (an HF directory that transformers loads).

Run records are written only once the resume has been checked: a config that does not fit the
run's checkpoints fails with `train_config.yaml` as it was. A latest checkpoint that cannot be read
is set aside (in `output_dir/unreadable-checkpoints`) with a warning, and the run resumes from the
one before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from led_flax.io import checkpoint as ckpt_format
from led_flax.parallel import sharding as shd
from led_flax.model.config import LEDConfig
from led_flax.utils.files import WriteError, as_write_error, write_atomic, writing
from led_flax.io.tokenizer import LEDTokenizer
from led_flax.utils.trees import flatten

from . import data as data_lib
from . import step as step_lib
from .checkpoints import Checkpoints, ResumeError, UnreadableCheckpoint
from .config import TrainConfig, TrainConfigError, dump
from .metrics import MetricsLog
from .model import load_pretrained, scratch_config

log = logging.getLogger("led_flax.train")

# test hook: "kill_after_step=K" or "kill_during_save=K" sends this process SIGKILL at that point
FAULT_ENV = "LED_FLAX_FAULT"


class TrainingError(RuntimeError):
    """The job stopped (a NaN loss, say); the message says why and which checkpoint is intact.
    `led-flax train` exits with `exit_code` (3)."""

    exit_code = 3


def _fault(kind: str, step: int) -> None:
    spec = os.environ.get(FAULT_ENV, "")
    if spec == f"{kind}={step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _agree_max(value: int) -> int:
    """The largest `value` over all processes (data.AgreeMax: every process calls it at the same points)."""
    if jax.process_count() == 1:
        return int(value)
    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def _host(tree):
    """Host numpy copies of (possibly multi-process) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def _write_json(path: str, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2).splitlines())


class Job:
    """One training run's pieces, built from a config (see `run`): the tokenizer, the `Setup` (model,
    mesh, optimizer, sharded state shapes), this process's training batches and validation data."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.out = os.path.abspath(cfg.output_dir)
        self.is_main = jax.process_index() == 0
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise TrainConfigError(f"output_dir {self.out} is a file; set output_dir to a folder")
        with writing(self.out):  # a read-only or full filesystem fails here, before any work
            os.makedirs(self.out, exist_ok=True)
            probe = os.path.join(self.out, f".probe-{os.getpid()}-{jax.process_index()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        self.setup = step_lib.build_setup(cfg, self._tokenizer_and_model())
        self._data()

    def restore(self, ckpts: Checkpoints, step: int) -> dict:
        """The train state of checkpoint `step`, in this run's parameter layout and shardings, with the
        data iterator moved to its saved position."""
        def abstract_for(scan_layers: bool) -> dict:  # the state as a checkpoint of either layout holds it
            model = dataclasses.replace(self.cfg.model, scan_layers=scan_layers)
            return step_lib.build_setup(dataclasses.replace(self.cfg, model=model), self.setup.config).state
        return ckpts.restore(step, self.setup.state, self.batches.iterator, config=self.setup.config,
                             scan_layers=self.cfg.model.scan_layers, abstract_for=abstract_for)

    # ------------------------------------------------------------------ setup
    def _tokenizer_and_model(self) -> LEDConfig:
        """Sets the tokenizer (and the pretrained weights); returns the model's LEDConfig."""
        cfg = self.cfg
        init = cfg.model.init
        self.pretrained = None
        if init != "scratch":
            loaded = load_pretrained(cfg)
            config, self.pretrained, model_dir = loaded.config, loaded.params, loaded.source
        if cfg.tokenizer.path:
            tok_dir = cfg.tokenizer.path
        elif init != "scratch":
            tok_dir = model_dir
        else:
            tok_dir = os.path.join(self.out, "tokenizer")
            if not os.path.isdir(tok_dir):
                if self.is_main:  # every process must use the same vocabulary: process 0 trains it once
                    log.info("training a %d-token byte-level BPE on the training text", cfg.tokenizer.vocab_size)
                    texts = [t for e in data_lib.load_examples(cfg.data, "train", limit=cfg.data.max_train_examples)
                             for t in (e.document, e.summary)]
                    data_lib.train_tokenizer(texts, tok_dir, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
                if jax.process_count() > 1:
                    multihost_utils.sync_global_devices("led_flax_tokenizer")
        if not os.path.isdir(tok_dir):
            raise TrainConfigError(f"tokenizer directory {tok_dir} does not exist; set tokenizer.path")
        self.tokenizer = LEDTokenizer.from_pretrained(tok_dir)
        self.tokenizer_dir = tok_dir
        if init == "scratch":
            return scratch_config(cfg, self.tokenizer)
        if self.tokenizer.vocab_size > config.vocab_size:
            raise TrainConfigError(f"the tokenizer in {tok_dir} has {self.tokenizer.vocab_size} tokens but the "
                                   f"model only {config.vocab_size}; use the model's own tokenizer")
        return config

    def _data(self):
        cfg = self.cfg
        self.buckets = data_lib.source_buckets(cfg.data, self.setup.config, self.setup.mesh.shape["sequence"])
        # processes holding the same batch rows (a sequence group across processes) read the same shards
        pi, (gi, gc) = jax.process_index(), shd.data_group(self.setup.mesh)
        shards = cfg.data.shards or gc  # config.check: a multiple of the groups that splits the batch
        self.owned = list(range(gi, shards, gc))  # this process reads these shards only
        train = {k: data_lib.load_examples(cfg.data, "train", k, shards, cfg.data.max_train_examples)
                 for k in self.owned}
        self.train_ids = {k: [e.id for e in v] for k, v in train.items()}
        log.info("process %d reads data shards %s of %d: %d training examples", pi, self.owned, shards,
                 sum(map(len, train.values())))
        source = data_lib.BatchSource(
            {k: data_lib.tokenize(v, self.tokenizer, cfg.data) for k, v in train.items()},
            cfg.data.batch_size // shards, cfg.optimizer.grad_accum_steps, self.buckets, cfg.data.max_target_length,
            self.tokenizer.pad_token_id, cfg.data.seed, cfg.data.sort_window)
        self.batches = data_lib.TrainBatches(source, _agree_max)
        self.val_examples = []
        self.val = None
        if cfg.eval.every_steps >= 0:
            self.val_examples = [e for k in self.owned for e in data_lib.load_examples(
                cfg.data, "validation", k, shards, cfg.data.max_eval_examples)]
            if self.val_examples:
                self.val = data_lib.tokenize(self.val_examples[:cfg.eval.loss_examples], self.tokenizer, cfg.data)
        mesh = self.setup.mesh
        self.eval_rows = data_lib.eval_rows(cfg.eval.batch_size, gc, mesh.shape["data"] * mesh.shape["fsdp"])

    # ------------------------------------------------------------------ evaluation
    def validation_loss(self, params, eval_step) -> float | None:
        """The mean token loss over this job's validation examples (None: it has none)."""
        if self.val is None:
            return None
        total = count = 0.0
        for batch in data_lib.validation_batches(self.val, self.eval_rows, self.buckets,
                                                 self.cfg.data.max_target_length, self.tokenizer.pad_token_id,
                                                 _agree_max):
            s, c = eval_step(params, step_lib.global_batch(batch, self.setup.mesh, accumulate=False))
            total += float(s)
            count += float(c)
        return total / max(count, 1.0)

    def rouge(self, params) -> dict:
        """ROUGE of generated summaries on the first validation examples (process 0's shard)."""
        n = self.cfg.eval.rouge_examples
        if not n or not self.val_examples:
            return {}
        host = _host(params)
        if not self.is_main:
            return {}
        from .evaluate import generate_summaries, rouge
        examples = self.val_examples[:n]
        texts = [e.document for e in examples]
        preds = generate_summaries(self.setup.eval_model, host, self.setup.config, self.tokenizer, texts,
                                   num_beams=self.cfg.eval.num_beams, max_length=self.cfg.eval.max_length,
                                   batch_size=self.cfg.eval.batch_size,
                                   buckets=list(self.buckets))
        return rouge(preds, [e.summary for e in examples])

    # ------------------------------------------------------------------ export
    def export(self, params) -> None:
        host = _host(params)
        if not self.is_main:
            return
        from led_flax import convert
        config = self.setup.config
        gen = {"decoder_start_token_id": config.decoder_start_token_id, "bos_token_id": config.bos_token_id,
               "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
               "forced_bos_token_id": config.bos_token_id, "num_beams": self.cfg.eval.num_beams,
               "max_length": self.cfg.eval.max_length, "no_repeat_ngram_size": 3, "early_stopping": True}
        gen_path = os.path.join(self.out, "generation_config.json")
        _write_json(gen_path, gen)
        tok_files = [os.path.join(self.tokenizer_dir, f) for f in ckpt_format.TOKENIZER_FILES
                     if os.path.isfile(os.path.join(self.tokenizer_dir, f))]
        ckpt_format.save(os.path.join(self.out, "final"), config, host, extra_files=tok_files + [gen_path],
                         overwrite=True)
        convert.to_hf_directory(config, host, os.path.join(self.out, "hf"), extra_files=tok_files + [gen_path],
                                overwrite=True)


def record_config(out: str, cfg: TrainConfig, resumed_from: int | None) -> str | None:
    """Writes the run's config to OUT/train_config.yaml, once the resume has been checked. When a
    resumed run's config differs from the recorded one, the old record is kept as
    train_config.until-step-N.yaml (N: the step the run resumed from) and a warning names the keys
    that changed. Returns the path the old record was kept at, or None."""
    import yaml
    path = os.path.join(out, "train_config.yaml")
    text = dump(cfg)
    kept = None
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = f.read()
        if old == text:
            return None
        if resumed_from is not None:
            kept = os.path.join(out, f"train_config.until-step-{resumed_from}.yaml")
            write_atomic(kept, old)
            try:
                before, now = flatten(yaml.safe_load(old) or {}, "."), flatten(yaml.safe_load(text), ".")
                changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                           if before.get(k) != now.get(k)]
            except yaml.YAMLError:
                changed = ["(the old record is not YAML)"]
            log.warning("resuming from step %d with a config that differs from the one the run was trained with "
                        "(%s); the old record is kept as %s", resumed_from, "; ".join(changed) or "formatting", kept)
    write_atomic(path, text.splitlines())
    return kept


def resume(job: "Job", ckpts: Checkpoints) -> tuple[dict, int]:
    """The state of the run's latest readable checkpoint and its step. A checkpoint that cannot be
    read is set aside in OUT/unreadable-checkpoints with a warning naming it, and the one before it
    is tried. Raises ResumeError when the config does not fit the checkpoints, or none can be read."""
    skipped: list[UnreadableCheckpoint] = []
    for step in reversed(ckpts.all_steps()):
        try:
            state = job.restore(ckpts, step)
        except UnreadableCheckpoint as e:
            skipped.append(e)
            continue
        if skipped:
            if job.is_main:
                moved = ckpts.set_aside([e.step for e in skipped], os.path.join(job.out, "unreadable-checkpoints"))
            else:
                moved = []
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("led_flax_set_aside")
                ckpts.manager.reload()
            log.warning("checkpoint %s in %s cannot be read (%s); resumed from step %d instead, the step before it; "
                        "the unreadable ones were moved to %s", ", ".join(f"step {e.step}" for e in skipped),
                        ckpts.directory, "; ".join(e.reason for e in skipped), step, ", ".join(moved) or "(process 0)")
        return state, step
    raise ResumeError(f"no checkpoint in {ckpts.directory} can be read ({'; '.join(str(e) for e in skipped)}); they "
                      f"are damaged (a full disk, or files removed): move {ckpts.directory} away to start the run "
                      f"afresh, or set a new output_dir")


def _resumable(e: BaseException, path: str) -> BaseException:
    """A full or read-only disk met while training, as a WriteError that says the run resumes."""
    if not isinstance(e, OSError):
        return e
    error = as_write_error(e, getattr(e, "filename", None) or path)
    if isinstance(error, WriteError):
        error.then = "then rerun the same command: the run resumes from its last checkpoint"
    return error


def run(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Trains; returns the last metrics (empty when the run had already reached `cfg.steps`).

    Raises TrainingError on a NaN or infinite loss; ResumeError when the config does not fit the
    run's checkpoints or none can be read (the run's records are left as they were); WriteError when
    the output's filesystem is full or read-only (rerunning resumes from the last checkpoint)."""
    try:
        return _run(cfg, progress)
    except OSError as e:
        error = _resumable(e, cfg.output_dir)
        if error is e:
            raise
        raise error from e


def _run(cfg: TrainConfig, progress: bool) -> dict:
    from tqdm import tqdm

    job = Job(cfg)
    is_main = job.is_main
    setup = job.setup
    with contextlib.ExitStack() as closing:  # closed in reverse order, whatever stops the run
        ckpts = Checkpoints(os.path.join(job.out, "checkpoints"), cfg.checkpoint.keep_last, cfg.checkpoint.keep_best,
                            cfg.checkpoint.asynchronous)
        closing.callback(ckpts.close)
        resumed_from = None
        if ckpts.latest_step() is not None:
            state, resumed_from = resume(job, ckpts)
        else:
            state = step_lib.initial_state(setup, cfg.seed, job.pretrained)
        # the resume is checked: only now are the run's records touched
        metrics_log = MetricsLog(job.out, enabled=is_main)
        closing.callback(metrics_log.close)
        if is_main:
            record_config(job.out, cfg, resumed_from)
        if resumed_from is not None:
            metrics_log.truncate(resumed_from)
            log.info("resumed from step %d (%s)", resumed_from, ckpts.directory)
        start = int(jax.device_get(state["step"]))
        if start >= cfg.steps:
            log.warning("the run in %s is already at step %d, %s steps=%d: nothing to train; final/ and hf/ are "
                        "exported again from step %d's parameters (raise steps to train further)", job.out, start,
                        "past" if start > cfg.steps else "at", cfg.steps, start)
        train_step = step_lib.make_train_step(setup.model, setup.tx, setup.lr, setup.mesh, setup.shardings,
                                              cfg.optimizer.label_smoothing, cfg.model.dropout)
        eval_step = step_lib.make_eval_step(setup.eval_model, setup.mesh, setup.shardings["params"])
        if is_main:
            n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state["params"]))
            per_device, total = shd.bytes_per_device(state, setup.shardings)
            log.info("%s parameters; train state %.1f MiB, %.1f MiB per device; mesh %s; %d processes",
                     f"{n_params:,}", total / 2**20, per_device / 2**20, dict(setup.mesh.shape), jax.process_count())
        # each process's own record: the shards it read and the bucket of every step (multi-host debugging)
        pi = jax.process_index()
        os.makedirs(os.path.join(job.out, "processes"), exist_ok=True)
        _write_json(os.path.join(job.out, "processes", f"{pi}.json"), {"shards": job.owned, "train_ids": job.train_ids})
        data_path = os.path.join(job.out, "processes", f"{pi}.steps.jsonl")
        data_log = closing.enter_context(open(data_path, "a", encoding="utf-8"))
        bar = closing.enter_context(tqdm(total=cfg.steps, initial=min(start, cfg.steps),
                                         disable=not (progress and is_main), desc="train", unit="step"))
        last: dict = {}
        tokens_seen = 0
        t0 = time.perf_counter()
        for step in range(start, cfg.steps):
            batch = next(job.batches)
            state, m = train_step(state, step_lib.global_batch(batch.arrays, setup.mesh))
            m = jax.device_get(m)
            done = step + 1
            bad = [k for k in ("loss", "grad_norm", "update_norm") if not np.isfinite(m[k])]
            if bad:
                ckpts.wait()
                good = ckpts.latest_step()
                what = ", ".join(f"{k} {float(m[k])}" for k in bad)
                raise TrainingError(
                    f"{what} at step {done}: training stopped without saving. The last good "
                    f"checkpoint is step {good} in {ckpts.directory}" + (" (none yet)" if good is None else "") +
                    "; lower optimizer.learning_rate, raise optimizer.warmup_steps or set optimizer.max_grad_norm, "
                    "then rerun the same command to resume from it")
            tokens_seen += int(m["tokens"])
            last = {"loss": float(m["loss"]), "tokens": int(m["tokens"]), "grad_norm": float(m["grad_norm"]),
                    "learning_rate": float(m["learning_rate"]), "bucket": batch.bucket}
            with writing(data_path):
                data_log.write(json.dumps({"step": done, "bucket": batch.bucket, "local_length": batch.local_length,
                                           "loss": last["loss"]}) + "\n")
                data_log.flush()
            if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
                metrics_log.write(done, "train", {**last, "tokens_per_s": tokens_seen / (time.perf_counter() - t0)})
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{last['learning_rate']:.2e}")
            _fault("kill_after_step", done)

            metrics = None
            final = done == cfg.steps
            every = cfg.eval.every_steps
            if every >= 0 and ((every and done % every == 0) or final):
                val_loss = job.validation_loss(state["params"], eval_step)
                if val_loss is not None:
                    scores = job.rouge(state["params"])
                    metrics = {"val_loss": val_loss}
                    metrics_log.write(done, "eval", {**metrics, **scores})
                    last.update(val_loss=val_loss, **scores)
                    if is_main:
                        bar.write(f"step {done}: val_loss {val_loss:.4f}" + "".join(
                            f", {k} {v:.2f}" for k, v in scores.items()))
            every = cfg.checkpoint.every_steps
            if final or (every and done % every == 0):
                ckpts.save(done, state, job.batches.iterator, cfg.model.scan_layers, metrics)
                _fault("kill_during_save", done)
        with writing(ckpts.directory):
            ckpts.wait()
        job.export(state["params"])
    return last


__all__ = ["run", "Job", "TrainingError", "FAULT_ENV"]
