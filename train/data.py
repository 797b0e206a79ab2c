"""Training data: (document, summary) pairs, tokenized, length-bucketed into static shapes.

Sources: the ACLSum papers of the `aclsum` package (document = the paper's body text, summary = its
abstract, the package's train/val/test split), jsonl files, or files read through `datasets` (an
optional extra). Each process reads only its own data shards (shard k of S: every S-th example,
from the k-th).

The order of a shard is a pure function of (seed, shard, epoch): shuffle, sort windows of `sort_window` batches by
length (so a batch holds similar lengths), cut into batches, shuffle the batches. `BatchSource`
serves batch i of that endless order; grain's `MapDataset` over it gives an iterator whose position
(`get_state`) is saved in every checkpoint, so a resumed job reads exactly the batches it would have.

Every process feeds its own rows of each global batch, and all of them must pad to the same length:
`TrainBatches` and `validation_batches` agree on it (and on the number of validation batches) through
an `AgreeMax` function, the largest of a value over all processes, that the caller passes in.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import numpy as np

from led_flax.summarization.buckets import bucket_for, default_buckets
from led_flax.model.config import LEDConfig
from led_flax.utils.files import atomic_directory, jsonl_objects
from led_flax.io.tokenizer import LEDTokenizer

from .config import DataConfig, TrainConfigError

SPLITS = {"train": "train", "validation": "val", "test": "test"}

# the largest of an int over all processes; every process calls it at the same points, in the same order
AgreeMax = Callable[[int], int]


@dataclass(frozen=True)
class Example:
    id: str
    document: str
    summary: str


# ------------------------------------------------------------------------------------------- sources
def aclsum_dir() -> str:
    try:
        import aclsum
    except ImportError:
        raise TrainConfigError("data.source aclsum needs the aclsum package: pip install aclsum") from None
    return os.path.join(os.path.dirname(aclsum.__file__), "dataset")


def aclsum_paper(path: str, id: str) -> Example:
    """A paper's body text and abstract; body paragraphs that repeat the abstract are left out."""
    with open(path, encoding="utf-8") as f:
        paper = json.load(f)
    parse = paper["pdf_parse"]
    abstract = " ".join(p["text"] for p in parse.get("abstract") or []).strip() or (paper.get("abstract") or "")
    abstract = abstract.strip()
    paragraphs = [p["text"].strip() for p in parse["body_text"]
                  if (p.get("section") or "").strip().lower() != "abstract"]
    paragraphs = [p for p in paragraphs if p and p not in abstract and abstract not in p]
    return Example(id, "\n\n".join(paragraphs), abstract)


def aclsum_ids(split: str) -> list[str]:
    with open(os.path.join(aclsum_dir(), f"{SPLITS[split]}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f if line.strip()]


def _shard(items: list, shard: int, num_shards: int, limit: int | None) -> list:
    items = items[:limit] if limit else items
    return items[shard::num_shards]


def load_examples(cfg: DataConfig, split: str, shard: int = 0, num_shards: int = 1,
                  limit: int | None = None) -> list[Example]:
    """Shard `shard` of `num_shards` of `split` (train, validation, test): every `num_shards`-th example
    of the first `limit`; only that shard is read."""
    if cfg.source == "aclsum":
        ids = _shard(aclsum_ids(split), shard, num_shards, limit)
        folder = os.path.join(aclsum_dir(), "paper_jsons")
        return [aclsum_paper(os.path.join(folder, f"{i}.json"), i) for i in ids]
    path = {"train": cfg.train_file, "validation": cfg.validation_file, "test": cfg.test_file}[split]
    if not path:
        return []
    if not os.path.isfile(path):
        raise TrainConfigError(f"data.{split}_file {path} does not exist")
    if cfg.source == "jsonl":
        example = f'{{"{cfg.document_field}": "...", "{cfg.summary_field}": "..."}}'
        records = jsonl_objects(path, TrainConfigError, example, limit)
        records = _shard(records, shard, num_shards, None)
    else:
        try:
            import datasets
        except ImportError:
            raise TrainConfigError("data.source datasets needs the optional extra: pip install "
                                   "'led-flax[datasets]'") from None
        kind = "json" if path.endswith((".json", ".jsonl")) else os.path.splitext(path)[1].lstrip(".")
        ds = datasets.load_dataset(kind, data_files=path, split="train")
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        ds = ds.shard(num_shards, shard, contiguous=False)
        records = [(shard + k * num_shards + 1, r) for k, r in enumerate(ds)]
    out = []
    for n, r in records:
        for name in (cfg.document_field, cfg.summary_field):
            if name not in r:
                raise TrainConfigError(f"{path} record {n} has no text field {name!r}; set data.document_field "
                                       f"and data.summary_field to the fields that hold the texts")
            if not isinstance(r[name], str):
                raise TrainConfigError(f"{path} record {n}: field {name!r} is {type(r[name]).__name__}, not a "
                                       f"string; set data.document_field and data.summary_field to the fields that "
                                       f"hold the texts, or fix the record")
        out.append(Example(str(r.get("id", n)), r[cfg.document_field], r[cfg.summary_field]))
    return out


# ----------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts, out_dir: str, vocab_size: int, min_frequency: int = 2,
                    model_max_length: int = 16384) -> LEDTokenizer:
    """A byte-level BPE with LED's special tokens (<s>=0, <pad>=1, </s>=2, <unk>=3, <mask>), written
    as vocab.json + merges.txt + tokenizer_config.json (transformers' LEDTokenizer reads it too)."""
    from tokenizers import ByteLevelBPETokenizer

    with atomic_directory(out_dir) as tmp:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(tmp)
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"tokenizer_class": "LEDTokenizer", "model_max_length": model_max_length,
                       "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
                       "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
                       "add_prefix_space": False}, f, indent=2)
    return LEDTokenizer.from_pretrained(out_dir, model_max_length=model_max_length)


# ------------------------------------------------------------------------------------------ batching
@dataclass(frozen=True)
class Tokenized:
    input_ids: tuple  # of int lists, each ending in </s>
    labels: tuple


def tokenize(examples, tokenizer: LEDTokenizer, cfg: DataConfig) -> Tokenized:
    def cut(rows, limit):
        return tuple(tuple(r if len(r) <= limit else r[:limit - 1] + [r[-1]]) for r in rows)
    return Tokenized(cut(tokenizer.encode_batch([e.document for e in examples]), cfg.max_source_length),
                     cut(tokenizer.encode_batch([e.summary for e in examples]), cfg.max_target_length))


def source_buckets(cfg: DataConfig, led_config: LEDConfig, devices: int = 1) -> tuple[int, ...]:
    """The source lengths batches are padded to, ascending: `data.buckets`, or powers of two times
    the padding unit for `devices` sequence devices (`led_flax.parallel.sequence.length_unit`) up to
    `max_source_length` rounded up to a unit (`config.check` has vetted them)."""
    if cfg.buckets:
        return tuple(sorted(cfg.buckets))
    return tuple(default_buckets(led_config, top=cfg.max_source_length, devices=devices))


def collate(source_rows, label_rows, length: int, target_length: int, pad_id: int, accum: int) -> dict:
    """Rows -> arrays [accum, rows // accum, ...]; global attention on the first token, labels
    padded with -100. Rows that are None are empty filler: no attention but <s>, no labels."""
    n = len(source_rows)
    ids = np.full((n, length), pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    labels = np.full((n, target_length), -100, np.int32)
    for i, (src, tgt) in enumerate(zip(source_rows, label_rows)):
        if src is None:
            ids[i, 0], mask[i, 0] = 0, 1
            continue
        ids[i, :len(src)] = src
        mask[i, :len(src)] = 1
        labels[i, :len(tgt)] = tgt
    glob = np.zeros_like(mask)
    glob[:, 0] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "global_attention_mask": glob, "labels": labels}
    return {k: v.reshape(accum, n // accum, *v.shape[1:]) for k, v in batch.items()}


def pad_source(batch: dict, length: int, pad_id: int) -> dict:
    """Widens the source arrays of a collated batch to `length` (the bucket all processes agreed on)."""
    extra = length - batch["input_ids"].shape[-1]
    if extra <= 0:
        return batch
    out = dict(batch)
    width = [(0, 0)] * (batch["input_ids"].ndim - 1) + [(0, extra)]
    out["input_ids"] = np.pad(batch["input_ids"], width, constant_values=pad_id)
    out["attention_mask"] = np.pad(batch["attention_mask"], width)
    out["global_attention_mask"] = np.pad(batch["global_attention_mask"], width)
    return out


class BatchSource:
    """Batch i of the endless, deterministic training order of this process's data shards (a grain
    random-access source: `len` and `getitem`).

    Each shard has its own order, a function of (seed, shard, epoch); a batch is the concatenation
    of every owned shard's next `rows_per_shard` rows. So the global batch of a step depends on the
    number of shards, not on how many processes hold them: one process holding both shards of a
    two-shard job reads exactly the batches that two processes do.
    """

    EPOCHS = 1_000_000

    def __init__(self, shards: dict, rows_per_shard: int, accum: int, buckets, target_length: int, pad_id: int,
                 seed: int, sort_window: int):
        self.shards = dict(sorted(shards.items()))  # shard index -> Tokenized
        self.rows, self.accum = rows_per_shard, accum
        self.buckets, self.target_length, self.pad_id = tuple(buckets), target_length, pad_id
        self.seed, self.sort_window = seed, sort_window
        self.lengths = {k: np.array([len(r) for r in d.input_ids]) for k, d in self.shards.items()}
        self.per_epoch = min(len(v) for v in self.lengths.values()) // rows_per_shard
        if self.per_epoch == 0:
            raise TrainConfigError(f"a data shard has {min(len(v) for v in self.lengths.values())} training examples, "
                                   f"fewer than its {rows_per_shard} rows of a batch; lower data.batch_size or "
                                   f"add data")

    def __len__(self) -> int:
        return self.per_epoch * self.EPOCHS

    @functools.lru_cache(maxsize=8)
    def epoch_order(self, shard: int, epoch: int) -> np.ndarray:
        """[batches, rows] example indices of one shard's epoch."""
        lengths = self.lengths[shard]
        rng = np.random.default_rng([self.seed, shard, epoch])
        order = rng.permutation(len(lengths))
        window = self.rows * self.sort_window
        chunks = [order[k:k + window] for k in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
        batches = order[:self.per_epoch * self.rows].reshape(self.per_epoch, self.rows)
        return batches[rng.permutation(self.per_epoch)]

    def __getitem__(self, i: int) -> dict:
        epoch, j = divmod(int(i), self.per_epoch)
        rows = {shard: self.epoch_order(shard, epoch)[j] for shard in self.shards}
        length = bucket_for(max(int(self.lengths[k][r].max()) for k, r in rows.items()), self.buckets)
        parts = [collate([d.input_ids[r] for r in rows[k]], [d.labels[r] for r in rows[k]], length,
                         self.target_length, self.pad_id, self.accum) for k, d in self.shards.items()]
        # [accum, rows, ...] per shard -> [accum, shards x rows, ...]: each microbatch holds a slice of every
        # shard, laid out as the processes' rows of the global batch would be
        return {key: np.concatenate([p[key] for p in parts], axis=1) for key in parts[0]}


def train_iterator(source: BatchSource):
    """A checkpointable iterator over `source` (grain): `get_state()` / `set_state()` hold its position."""
    import grain
    ds = grain.MapDataset.source(source)
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


class TrainBatch(NamedTuple):
    """This process's rows of one step's batch: `arrays` holds input_ids, attention_mask and
    global_attention_mask [accum, rows, bucket] and labels [accum, rows, max_target_length], int32."""
    arrays: dict
    bucket: int  # the source length every process padded to
    local_length: int  # this process's own bucket, before agreeing


class TrainBatches:
    """This process's rows of each step's global batch, padded to the bucket all processes agreed on.

    `iterator` is the grain iterator underneath: checkpoints save and restore its position.
    """

    def __init__(self, source: BatchSource, agree_max: AgreeMax):
        self.source, self.agree_max = source, agree_max
        self.iterator = train_iterator(source)

    def __iter__(self):
        return self

    def __next__(self) -> TrainBatch:
        local = next(self.iterator)
        local_length = int(local["input_ids"].shape[-1])
        bucket = self.agree_max(local_length)
        return TrainBatch(pad_source(local, bucket, self.source.pad_id), bucket, local_length)


def eval_rows(batch_size: int, process_count: int, data_ways: int) -> int:
    """This process's rows of a validation batch: `batch_size` rounded up so that the global batch
    splits over the processes and over the data-parallel devices (mesh data x fsdp)."""
    unit = math.lcm(process_count, data_ways)
    return -(-batch_size // unit) * unit // process_count


def validation_batches(data: Tokenized, rows: int, buckets, target_length: int, pad_id: int,
                       agree_max: AgreeMax) -> Iterator[dict]:
    """This process's rows of every global validation batch: arrays [rows, bucket] (labels [rows,
    target_length]), longest documents first, empty rows filling the last batch. Every process yields
    as many batches as the process with the most, each padded to the bucket they agree on; a process
    out of examples yields batches of empty rows, which add no tokens to the loss."""
    order = np.argsort([-len(r) for r in data.input_ids], kind="stable")
    starts = range(0, len(order), rows)
    for k in range(agree_max(len(starts))):
        picked = list(order[starts[k]:starts[k] + rows]) if k < len(starts) else []
        src = [data.input_ids[r] for r in picked] + [None] * (rows - len(picked))
        tgt = [data.labels[r] for r in picked] + [None] * (rows - len(picked))
        length = bucket_for(max((len(s) for s in src if s is not None), default=1), buckets)
        batch = collate(src, tgt, agree_max(length), target_length, pad_id, 1)
        yield {key: v[0] for key, v in batch.items()}  # [1, rows, n] -> [rows, n]
