"""The progress file of a resumable `summarize` run: what the summaries depend on, then the summaries.

    {"record": "run", "version": 1, "model": {...}, "settings": {...}, "source": ...}   line 1
    {"index": 0, "fingerprint": "...", "summary": "..."}                                 a line a document

The first line, a `RunRecord`, holds the model's identity (digests of its config, parameters and
tokenizer) and every setting the summaries depend on (the generation settings, truncation, the
compute dtype). A rerun builds its own record and resumes only when the two are equal; otherwise it
refuses, naming each difference, unless told to restart. A new setting (quantization, the devices a
sequence is split over, ...) is one more entry in `settings`: records without it differ from records
with it, so an old progress file is never mixed with new work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import zlib
from typing import Any, Mapping, Sequence

import numpy as np

from led_flax.utils.files import writing
from led_flax.utils.trees import flatten

RECORD = "run"
VERSION = 1


class ResumeError(ValueError):
    """A progress file that this run cannot resume: written with another model or other settings,
    or not a progress file. The message names the differences and the fix."""


def _digest(data: bytes | str) -> str:
    return hashlib.sha1(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()[:16]


def params_digest(params) -> str:
    """A digest of a parameter tree: every leaf's path, shape, dtype and CRC-32 of its bytes (about
    2.5 GB/s: under a second for led-large)."""
    import jax

    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{jax.tree_util.keystr(path)}|{array.shape}|{array.dtype.name}|".encode())
        h.update(zlib.crc32(array.reshape(-1).view(np.uint8)).to_bytes(4, "little"))
    return h.hexdigest()[:16]


def corpus_digest(names: Sequence[str], texts: Sequence[str]) -> str:
    """A digest of a corpus: every document's name and text, in order. A rerun over other documents
    (one changed, added, removed or renamed) has another digest, and is refused rather than matched by
    index."""
    h = hashlib.sha1()
    for name, text in zip(names, texts):
        for part in (name, text):
            data = part.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
    return f"{len(texts)} documents, {h.hexdigest()[:16]}"


def seeds_digest(seeds) -> str:
    """A digest of the documents' random seeds ([documents] uint32), for the record of a run that samples."""
    return _digest(np.ascontiguousarray(np.asarray(seeds, np.uint32)).tobytes())


def fingerprint(text: str) -> str:
    """The digest of a document's text that keys its summary in the progress file."""
    return _digest(text.encode("utf-8", "surrogatepass"))


def _plain(value):
    """JSON's view of a value (tuples as lists, ...), so records compare as they are stored."""
    return json.loads(json.dumps(value))


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the summaries of a run depend on.

    model: the model's identity, {"config": digest, "params": digest, "tokenizer": digest}.
    settings: every setting, by name: {"generation": {field: value}, "truncate": bool, "dtype": str}.
    source: where the model was loaded from; informative only (a moved checkpoint is the same model).
    """

    model: Mapping[str, Any]
    settings: Mapping[str, Any]
    source: str = ""

    @classmethod
    def build(cls, loaded, generation, *, truncate: bool, sequence_devices: int = 1,
              corpus: str | None = None, seeds: str | None = None) -> "RunRecord":
        """The record of a run of `loaded` (a LoadedModel) with the resolved GenerationConfig `generation`
        over the documents whose `corpus_digest` is `corpus`; `seeds`, a digest of the documents' random
        seeds (`seeds_digest`), for a run that samples."""
        model = {"config": _digest(json.dumps(loaded.config.to_hf(), sort_keys=True)),
                 "params": params_digest(loaded.params),
                 "tokenizer": _digest(loaded.tokenizer.to_json()) if loaded.tokenizer is not None else None}
        dtype = getattr(loaded.module, "dtype", None)
        settings = {"generation": dataclasses.asdict(generation), "truncate": bool(truncate),
                    "dtype": np.dtype(dtype).name if dtype is not None else None,
                    "sequence_devices": int(sequence_devices)}
        # recorded only when not the default, so that progress files written before they existed resume
        if loaded.quantization is not None:
            settings["quantization"] = loaded.quantization.to_json()
        if getattr(loaded.module, "cross_cache", "float") != "float":
            settings["cross_cache"] = loaded.module.cross_cache
        if loaded.config.attention_implementation != "xla":
            settings["attention_implementation"] = loaded.config.attention_implementation
        if corpus is not None:
            settings["corpus"] = corpus
        if seeds is not None:
            settings["seeds"] = seeds
        return cls(model=_plain(model), settings=_plain(settings), source=os.fspath(loaded.source))

    def to_json(self) -> str:
        return json.dumps({"record": RECORD, "version": VERSION, "model": self.model, "settings": self.settings,
                           "source": self.source})

    @classmethod
    def from_json(cls, line: str) -> "RunRecord | None":
        """The record a progress file's first line holds, or None when it holds none."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            return None
        if not isinstance(data, dict) or data.get("record") != RECORD or not isinstance(data.get("model"), dict) \
                or not isinstance(data.get("settings"), dict):
            return None
        return cls(model=data["model"], settings=data["settings"], source=str(data.get("source", "")))

    def differences(self, now: "RunRecord") -> list[str]:
        """What differs from `now`, one entry per setting: "generation.max_length: 12 then, 20 now"."""
        missing = object()
        out = []
        for part in ("model", "settings"):
            then, current = flatten(getattr(self, part), "."), flatten(getattr(now, part), ".")
            for key in sorted(set(then) | set(current)):
                a, b = then.get(key, missing), current.get(key, missing)
                if a != b:
                    name = f"the model's {key}" if part == "model" else key
                    out.append(f"{name}: {'(none)' if a is missing else json.dumps(a)} then, "
                               f"{'(none)' if b is missing else json.dumps(b)} now")
        return out


@dataclasses.dataclass(frozen=True)
class Progress:
    """A progress file read back: the record it starts with (None for an empty or missing file)
    and the summaries of the documents it holds, keyed by (index, fingerprint)."""

    record: RunRecord | None
    done: Mapping[tuple[int, str], str]


RESUME_HINT = "the progress file keeps the finished batches: rerun the same command to resume"
RESTART_HINT = "rerun with the same model and settings to resume, or pass restart=True (--restart) to start afresh"


def read(path: str | None) -> Progress:
    """The progress file at `path` (a missing or empty one holds nothing). Lines cut short by an
    interruption are skipped. Raises ResumeError when the file is not a progress file."""
    if not path or not os.path.exists(path) or os.path.getsize(path) == 0:
        return Progress(None, {})
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    try:
        first = lines[0].decode("utf-8")
    except UnicodeDecodeError:
        first = ""
    record = RunRecord.from_json(first)
    if record is None:
        if len(lines) == 1:  # the first line itself was cut short: nothing was summarized yet
            return Progress(None, {})
        raise ResumeError(f"{path} does not start with a run record (a progress file of an older led-flax, or "
                          f"another file): remove it, or pass restart=True (--restart) to start afresh")
    done: dict[tuple[int, str], str] = {}
    for line in lines[1:]:
        try:
            rec = json.loads(line.decode("utf-8"))
            done[(int(rec["index"]), str(rec["fingerprint"]))] = str(rec["summary"])
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut short by an interruption
    return Progress(record, done)


def check(progress: Progress, record: RunRecord, path: str) -> None:
    """Raises ResumeError naming every difference when `progress` was written for another run."""
    if progress.record is None:
        return
    diffs = progress.record.differences(record)
    if diffs:
        where = f" (the model was {progress.record.source})" if progress.record.source else ""
        raise ResumeError(f"{path} holds summaries made with another model or other settings{where}: "
                          f"{'; '.join(diffs)}. {RESTART_HINT[0].upper()}{RESTART_HINT[1:]}")


def start(path: str, record: RunRecord, progress: Progress, restart: bool) -> None:
    """Begins the progress file at `path`, read before as `progress`: a new file, one that holds no
    record yet, or (with `restart`) any file is replaced by one holding `record` as its first line;
    a file being resumed gets the end of line its last, interrupted line may lack. Raises WriteError
    when it cannot be written."""
    with writing(path):
        if restart or progress.record is None or not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as sink:
                sink.write(record.to_json() + "\n")
                sink.flush()
                os.fsync(sink.fileno())
            return
        with open(path, "rb+") as sink:
            sink.seek(-1, os.SEEK_END)
            if sink.read(1) != b"\n":
                sink.write(b"\n")


def append(sink, path: str, records: Sequence[tuple[int, str, str]]) -> None:
    """Appends (index, fingerprint, summary) records and forces them to disk: a kill loses at most
    the batch being generated. Raises WriteError naming `path` on a full or read-only filesystem."""
    with writing(path, then=RESUME_HINT):
        for index, digest, summary in records:
            sink.write(json.dumps({"index": index, "fingerprint": digest, "summary": summary}) + "\n")
        sink.flush()
        os.fsync(sink.fileno())


# ---------------------------------------------------------------------------------------------- several processes
def process_file(path: str, process: int) -> str:
    """The progress file that process `process` of a job appends to: `path` itself for process 0 (and
    for a run of one process), PATH.I for process I."""
    return path if process == 0 else f"{path}.{process}"


def process_files(path: str) -> list[str]:
    """The progress files of `path` that exist: its own, then those of processes 1, 2, ... of earlier
    runs, in process order."""
    folder, name = os.path.split(os.path.abspath(path))
    others = []
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            suffix = entry[len(name) + 1:] if entry.startswith(name + ".") else ""
            if suffix.isdigit():
                others.append((int(suffix), os.path.join(folder, entry)))
    return ([path] if os.path.exists(path) else []) + [p for _, p in sorted(others)]


def read_all(path: str, record: RunRecord) -> Progress:
    """Every progress file of `path` (`process_files`) read and checked against `record`, their
    finished documents merged: a rerun resumes whatever the process counts of the runs before.
    Raises ResumeError naming the first file written for another run."""
    done: dict[tuple[int, str], str] = {}
    first = None
    for file in process_files(path):
        saved = read(file)
        check(saved, record, file)
        first = first or saved.record
        done.update(saved.done)
    return Progress(first, done)


def remove_all(path: str) -> None:
    """Removes every progress file of `path` (the run is done, or restarts)."""
    for file in process_files(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(file)
