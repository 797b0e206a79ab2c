"""The training job's configuration: frozen dataclasses read from YAML, strict about keys and types.

`load("configs/tiny-aclsum.yaml", ["optimizer.learning_rate=1e-3"])` reads the file, applies the
`--set` overrides (values parsed as YAML), and rejects unknown keys with the nearest known name.
`validate` checks a config on its own when it is read; `check` checks it against the model, the mesh
and the process count, for the run and the dry run alike.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import yaml

from led_flax import configs

if TYPE_CHECKING:
    from jax.sharding import Mesh

    from led_flax.model.config import LEDConfig


class TrainConfigError(ValueError):
    """A config file or override that names an unknown key, has the wrong type or an impossible value."""


@dataclass(frozen=True)
class ModelConfig:
    init: str = "scratch"  # "scratch", or a led-flax checkpoint / HF LED directory to fine-tune
    led: dict = field(default_factory=dict)  # LEDConfig fields for a model made from scratch
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (master weights stay float32)
    # what each layer keeps for the backward pass: none (everything), full (its input only: the layer
    # is recomputed), save_dots (its input and its weight matmuls' outputs). `gradient_checkpointing:
    # true/false`, the old key, still reads as full/none.
    remat: str = "none"
    scan_layers: bool = True  # layers as nn.scan over stacked parameters; false: unrolled (for comparison)
    # extend the encoder's position table of model.init to this many rows by tiling it (longer inputs
    # than the checkpoint's, e.g. 32768; a multiple of the largest window); null: keep the table
    max_encoder_positions: int | None = None
    dropout: bool = True  # apply the config's dropout and layerdrop while training
    # the encoder's local attention (LEDConfig.attention_implementation): xla, splash (the Pallas
    # kernel: TPU; interpret mode elsewhere, slow; no attention dropout) or auto (splash on a TPU)
    attention_implementation: str = "xla"


@dataclass(frozen=True)
class TokenizerConfig:
    path: str | None = None  # a tokenizer directory; None: the model's, or train one for "scratch"
    vocab_size: int = 4096  # vocabulary of a tokenizer trained from the training text
    min_frequency: int = 2


@dataclass(frozen=True)
class DataConfig:
    source: str = "aclsum"  # aclsum | jsonl | datasets
    train_file: str | None = None  # jsonl / datasets: the training file
    validation_file: str | None = None
    test_file: str | None = None
    document_field: str = "document"
    summary_field: str = "summary"
    max_source_length: int = 4096  # tokens, </s> included; longer documents are cut
    max_target_length: int = 256
    buckets: tuple = ()  # source lengths to pad to (multiples of the window); () = powers of two
    batch_size: int = 8  # examples per optimizer step, over all processes and microbatches
    sort_window: int = 8  # batches whose examples are sorted by length together (less padding)
    seed: int = 0
    shards: int | None = None  # data shards (None: one per process); fix it to compare runs across process counts
    max_train_examples: int | None = None  # use only the first N training examples (smoke tests)
    max_eval_examples: int | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 3e-5
    schedule: str = "linear"  # linear | cosine | constant (after warmup)
    warmup_steps: int = 0
    end_learning_rate: float = 0.0
    weight_decay: float = 0.0  # AdamW, on kernels and embeddings (not biases or LayerNorms)
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 = no clipping
    grad_accum_steps: int = 1  # microbatches per step
    label_smoothing: float = 0.0


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1: all devices not used by the other axes
    fsdp: int = 1
    tensor: int = 1
    sequence: int = 1  # one document's tokens split over this many devices (led_flax.parallel.sequence)


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 500  # 0: only at the end
    keep_last: int = 2
    keep_best: int = 1  # by validation loss
    asynchronous: bool = True


@dataclass(frozen=True)
class EvalConfig:
    every_steps: int = 500  # 0: only at the end; -1: never
    loss_examples: int | None = None  # validation examples for the loss (None: all)
    rouge_examples: int = 16  # summaries generated for ROUGE (0: none)
    num_beams: int = 4
    max_length: int = 256
    batch_size: int = 4


@dataclass(frozen=True)
class TrainConfig:
    output_dir: str = "runs/default"  # checkpoints/, metrics.jsonl, tensorboard/, final/, hf/
    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_type(where: str, value, annotation):
    text = str(annotation)  # annotations are strings here ("int | None")
    allows_none = "None" in text
    if value is None:
        if allows_none:
            return None
        raise TrainConfigError(f"{where} may not be null")
    if text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{where} must be an integer, not {value!r}")
    elif text.startswith("float"):
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{where} must be a number, not {value!r}")
        value = float(value)
    elif text.startswith("bool"):
        if not isinstance(value, bool):
            raise TrainConfigError(f"{where} must be true or false, not {value!r}")
    elif text.startswith("str"):
        if not isinstance(value, str):
            raise TrainConfigError(f"{where} must be a string, not {value!r}")
    elif text == "tuple":
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(f"{where} must be a list, not {value!r}")
        value = tuple(value)
    elif text == "dict":
        if not isinstance(value, dict):
            raise TrainConfigError(f"{where} must be a mapping, not {value!r}")
    return value


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise TrainConfigError(f"{where or 'the config'} must be a mapping, not {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {where}{near[0]}?" if near else f"; known keys: {', '.join(fields)}"
            raise TrainConfigError(f"unknown key {where}{key}{hint}")
        f = fields[key]
        if dataclasses.is_dataclass(f.default_factory):  # a section
            kwargs[key] = _build(f.default_factory, value or {}, f"{where}{key}.")
        else:
            kwargs[key] = _check_type(f"{where}{key}", value, f.type)
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise TrainConfigError(f"--set {dotted}: {k} is not a section")
    node[keys[-1]] = value


def from_dict(data: dict, overrides=()) -> TrainConfig:
    data = dict(data or {})
    for item in overrides:
        if "=" not in item:
            raise TrainConfigError(f"--set {item!r}: write key=value, for example optimizer.learning_rate=1e-4")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise TrainConfigError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())}); "
                                   f"quote a string, write lists as [1, 2]") from None
        _set(data, key.strip(), value)
    _read_aliases(data)
    config = _build(TrainConfig, data, "")
    validate(config)
    return config


def _read_aliases(data: dict) -> None:
    """Old keys that still read, with a message naming the new one: model.gradient_checkpointing (bool)
    is model.remat full/none."""
    model = data.get("model")
    if not isinstance(model, dict) or "gradient_checkpointing" not in model:
        return
    model = data["model"] = dict(model)
    old = model.pop("gradient_checkpointing")
    if not isinstance(old, bool):
        raise TrainConfigError(f"model.gradient_checkpointing must be true or false, not {old!r}; it is now "
                               f"model.remat (none, full or save_dots)")
    new = "full" if old else "none"
    if "remat" in model and model["remat"] != new:
        raise TrainConfigError(f"model.gradient_checkpointing {str(old).lower()} (the old key) contradicts "
                               f"model.remat {model['remat']}; keep model.remat only")
    model["remat"] = new
    logging.getLogger("led_flax.train").warning(
        "model.gradient_checkpointing is now model.remat: read as model.remat: %s", new)


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error naming the key by its
    dotted path (`model.led.d_model`) and both lines (PyYAML keeps the last value without a word)."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        self._check_keys(node, ())
        return self.construct_document(node)

    def _check_keys(self, node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_keys(item, path + (str(i),))
        if not isinstance(node, yaml.MappingNode):
            return
        seen = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TrainConfigError(f"{key_node.start_mark.name} line {line}: a key must be a name, not "
                                       f"{type(key).__name__}")
            name = ".".join(path + (str(key),))
            if key in seen:
                raise TrainConfigError(f"{key_node.start_mark.name} sets {name!r} twice, on lines {seen[key]} and "
                                       f"{line}; keep one of them")
            seen[key] = line
            self._check_keys(value_node, path + (str(key),))


def find(name: str | os.PathLike) -> str:
    """The config file `name` names: a path to a file, else the shipped config of that name
    (`tiny-aclsum`, `led-base-16384`, `led-large-16384`, with or without `.yaml`: package data in
    `led_flax.configs`). A path wins over a shipped config of the same name. Raises
    TrainConfigError naming the shipped configs when neither exists."""
    if os.path.isfile(name):
        return os.fspath(name)
    shipped = configs.path(os.fspath(name))
    if shipped is not None:
        return str(shipped)
    raise TrainConfigError(f"no config file {name}; give a path to a YAML file, or the name of a shipped config: "
                           f"{', '.join(configs.names())}")


def load(path: str | os.PathLike, overrides=()) -> TrainConfig:
    """The training config in the YAML file `path` (or the shipped config of that name: `find`), with
    `overrides` ("key.sub=value" strings) applied. Raises TrainConfigError naming the file, the field
    and the fix."""
    path = find(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_StrictLoader)
    except UnicodeDecodeError as e:
        line = open(path, "rb").read()[:e.start].count(b"\n") + 1
        raise TrainConfigError(f"{path} line {line} is not UTF-8 ({e.reason}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise TrainConfigError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is not None and not isinstance(data, dict):
        raise TrainConfigError(f"{path} holds {type(data).__name__ if not isinstance(data, list) else 'a list'}, "
                               f"not sections of settings (model:, data:, ...); start from a shipped config: "
                               f"--config tiny-aclsum")
    if data is None:  # an empty file, or comments alone: every field would take the 412M-parameter defaults
        raise TrainConfigError(f"{path} sets nothing (it is empty or holds only comments); start from a shipped "
                               f"config: --config tiny-aclsum, or copy one of {', '.join(configs.names())} from "
                               f"{configs.HERE}")
    try:
        return from_dict(data, overrides)
    except TrainConfigError as e:
        raise TrainConfigError(f"{path}: {e}") from None


def _choice(where: str, value, allowed) -> None:
    if value not in allowed:
        raise TrainConfigError(f"{where} is {value!r}; use one of {', '.join(map(str, allowed))}")


def validate(c: TrainConfig) -> None:
    """The checks a config passes on its own (run when it is read). Raises TrainConfigError."""
    _choice("model.dtype", c.model.dtype, ("float32", "bfloat16"))
    _choice("model.remat", c.model.remat, ("none", "full", "save_dots"))
    from led_flax.model.config import ATTENTION_IMPLEMENTATIONS
    _choice("model.attention_implementation", c.model.attention_implementation, ATTENTION_IMPLEMENTATIONS)
    if "attention_implementation" in c.model.led:
        raise TrainConfigError("model.led.attention_implementation is a run-time choice, not part of the model: set "
                               "model.attention_implementation instead")
    _choice("data.source", c.data.source, ("aclsum", "jsonl", "datasets"))
    _choice("optimizer.schedule", c.optimizer.schedule, ("linear", "cosine", "constant"))
    if c.data.source in ("jsonl", "datasets") and not c.data.train_file:
        raise TrainConfigError(f"data.source {c.data.source} needs data.train_file")
    positive = {"steps": c.steps, "data.batch_size": c.data.batch_size, "data.max_source_length":
                c.data.max_source_length, "data.max_target_length": c.data.max_target_length,
                "optimizer.grad_accum_steps": c.optimizer.grad_accum_steps, "log_every": c.log_every,
                "data.sort_window": c.data.sort_window, "eval.batch_size": c.eval.batch_size}
    for name, value in positive.items():
        if value < 1:
            raise TrainConfigError(f"{name} must be at least 1, not {value}")
    at_least = {"optimizer.warmup_steps": (c.optimizer.warmup_steps, 0), "checkpoint.every_steps":
                (c.checkpoint.every_steps, 0), "checkpoint.keep_best": (c.checkpoint.keep_best, 0),
                "eval.every_steps": (c.eval.every_steps, -1), "eval.rouge_examples": (c.eval.rouge_examples, 0),
                "eval.num_beams": (c.eval.num_beams, 1), "eval.max_length": (c.eval.max_length, 2),
                "tokenizer.min_frequency": (c.tokenizer.min_frequency, 0), "seed": (c.seed, 0),
                "data.seed": (c.data.seed, 0), "mesh.fsdp": (c.mesh.fsdp, 1), "mesh.tensor": (c.mesh.tensor, 1)}
    at_least.update({f"data.{k}": (getattr(c.data, k), 1) for k in ("max_train_examples", "max_eval_examples")
                     if getattr(c.data, k) is not None})
    if c.eval.loss_examples is not None:
        at_least["eval.loss_examples"] = (c.eval.loss_examples, 1)
    for name, (value, low) in at_least.items():
        if value < low:
            raise TrainConfigError(f"{name} must be at least {low}, not {value}")
    if c.mesh.data != -1 and c.mesh.data < 1:
        raise TrainConfigError(f"mesh.data must be -1 (all devices the other axes leave) or at least 1, not {c.mesh.data}")
    import math
    for name, value, low, high in (("optimizer.b1", c.optimizer.b1, 0, 1), ("optimizer.b2", c.optimizer.b2, 0, 1)):
        if not low <= value < high:
            raise TrainConfigError(f"{name} must be in [{low}, {high}), not {value}")
    for name, value in (("optimizer.eps", c.optimizer.eps), ("optimizer.learning_rate", c.optimizer.learning_rate)):
        if not math.isfinite(value) or value <= 0:
            raise TrainConfigError(f"{name} must be a positive number, not {value}")
    for name, value in (("optimizer.weight_decay", c.optimizer.weight_decay), ("optimizer.max_grad_norm",
                        c.optimizer.max_grad_norm), ("optimizer.end_learning_rate", c.optimizer.end_learning_rate)):
        if not math.isfinite(value) or value < 0:
            raise TrainConfigError(f"{name} must be 0 or more, not {value}")
    if c.data.batch_size % c.optimizer.grad_accum_steps:
        raise TrainConfigError(f"data.batch_size {c.data.batch_size} is not a multiple of optimizer.grad_accum_steps "
                               f"{c.optimizer.grad_accum_steps}")
    if c.optimizer.learning_rate <= 0:
        raise TrainConfigError(f"optimizer.learning_rate must be positive, not {c.optimizer.learning_rate}")
    if not 0 <= c.optimizer.label_smoothing < 1:
        raise TrainConfigError(f"optimizer.label_smoothing must be in [0, 1), not {c.optimizer.label_smoothing}")
    if c.data.shards is not None and c.data.shards < 1:
        raise TrainConfigError(f"data.shards must be at least 1, not {c.data.shards}")
    if c.checkpoint.keep_last < 1:
        raise TrainConfigError("checkpoint.keep_last must be at least 1: resuming needs the latest checkpoint")
    if c.model.init == "scratch" and c.tokenizer.path is None and c.tokenizer.vocab_size < 256 + 5:
        raise TrainConfigError("tokenizer.vocab_size must be at least 261 (256 bytes and 5 special tokens)")
    for b in c.data.buckets:
        if not isinstance(b, int) or b < 1:
            raise TrainConfigError(f"data.buckets must be positive integers, not {c.data.buckets}")


def with_attention(c: TrainConfig, led: LEDConfig) -> LEDConfig:
    """`led` running its encoder's local attention as model.attention_implementation says."""
    if led.attention_implementation == c.model.attention_implementation:
        return led
    return led.replace(attention_implementation=c.model.attention_implementation)


def check(c: TrainConfig, led: LEDConfig, mesh: Mesh, process_count: int) -> None:
    """The checks a config passes against the model it trains (`led`: its LEDConfig), the device mesh
    and the number of processes reading distinct data (`sharding.data_group`: the processes, unless a
    sequence group spans several). The run and the dry run both call it (through
    `train.step.build_setup`), before any data is read, so a dry run catches what the run would.
    Raises TrainConfigError naming the field and the fix."""
    data, accum = c.data, c.optimizer.grad_accum_steps
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = data.batch_size // accum
    if micro % data_ways:
        raise TrainConfigError(f"a microbatch of {micro} examples (data.batch_size / grad_accum_steps) does not "
                               f"split over the {data_ways} data-parallel devices (mesh data x fsdp); make it "
                               f"a multiple of {data_ways}")
    if data.batch_size % process_count:
        raise TrainConfigError(f"data.batch_size {data.batch_size} does not split over {process_count} processes")
    if data.max_source_length > led.max_encoder_position_embeddings:
        raise TrainConfigError(f"data.max_source_length {data.max_source_length} exceeds the model's "
                               f"{led.max_encoder_position_embeddings} encoder positions")
    if data.max_target_length > led.max_decoder_position_embeddings:
        raise TrainConfigError(f"data.max_target_length {data.max_target_length} exceeds the model's "
                               f"{led.max_decoder_position_embeddings} decoder positions")
    if led.attention_implementation == "splash" and led.attention_dropout > 0 and c.model.dropout:
        raise TrainConfigError(f"model.attention_implementation splash has no attention dropout, but the model's "
                               f"attention_dropout is {led.attention_dropout}; set model.dropout false, use "
                               f"model.attention_implementation xla (auto picks it), or, for a model from scratch, "
                               f"model.led.attention_dropout 0")
    from led_flax.parallel.sequence import length_unit
    unit = length_unit(led, mesh.shape.get("sequence", 1))
    if data.buckets:  # the default buckets are multiples of the unit up to max_source_length
        bad = [b for b in sorted(data.buckets) if b % unit]
        if bad:
            what = (f"the attention window {unit}" if unit == max(led.attention_window) else
                    f"{unit} (the {mesh.shape['sequence']} sequence devices times the attention blocks)")
            raise TrainConfigError(f"data.buckets {bad} are not multiples of {what}; round them to multiples of "
                                   f"{unit}")
        if max(data.buckets) < data.max_source_length:
            raise TrainConfigError(f"the largest bucket {max(data.buckets)} is below data.max_source_length "
                                   f"{data.max_source_length}; add a bucket of at least that length")
    shards = data.shards or process_count
    if shards % process_count:
        raise TrainConfigError(f"data.shards {shards} does not split over {process_count} processes; use a "
                               f"multiple of {process_count}")
    if data.batch_size % shards or (data.batch_size // shards) % accum:
        raise TrainConfigError(f"data.batch_size {data.batch_size} must split into {shards} data shards x "
                               f"{accum} microbatches")


def dump(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = ["TrainConfig", "TrainConfigError", "load", "from_dict", "dump", "validate", "check"]
