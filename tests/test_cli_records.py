"""Oracle: an uninterrupted run, and the expected error. `summarize --out` records what its summaries
depend on: an interrupted run resumes only with the same model and settings, names every
difference otherwise, and starts afresh with --restart; a full or read-only disk is one line that
keeps the finished work; the generation settings in use are printed."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from led_flax import convert
from led_flax.decoding import generation
from led_flax.summarization.progress import ResumeError, RunRecord
from led_flax.summarization.batch import SummarizeOptions, SummaryReport, summarize

from cli_helpers import assert_one_line_error, run_main, tiny_summarizer

DOCS = ["Attention windows slide over long documents.", "A second document, about parsing trees.",
        "Third: summaries of scientific papers are short."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_summarizer(tmp_path_factory.mktemp("records"))


@pytest.fixture
def docs(tmp_path):
    paths = []
    for i, text in enumerate(DOCS):
        paths.append(tmp_path / f"doc{i}.txt")
        paths[-1].write_text(text)
    return paths


@pytest.fixture
def counted(monkeypatch):
    """Counts the batches generated; `counted.stop_at = K` interrupts the K-th (Ctrl-C)."""
    original = generation.generate

    class Counter:
        calls = 0
        stop_at = None

    def generate(*args, **kwargs):
        Counter.calls += 1
        if Counter.calls == Counter.stop_at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    monkeypatch.setattr(generation, "generate", generate)
    return Counter


def _summarize(capsys, tiny, docs, out, *extra):
    return run_main(capsys, "summarize", "--model", tiny.ours, *docs, "--out", out, "--batch-size", "1", "--quiet",
                    "--no-cache", "--max-length", "5", *extra)


def test_a_rerun_with_other_settings_refuses_naming_them_then_resumes_or_restarts(capsys, tiny, docs, tmp_path,
                                                                                  counted):
    reference = tmp_path / "reference.txt"
    assert _summarize(capsys, tiny, docs, reference).code == 0
    assert counted.calls == 3

    out = tmp_path / "out.txt"
    progress = tmp_path / "out.txt.progress.jsonl"
    counted.calls, counted.stop_at = 0, 2
    r = _summarize(capsys, tiny, docs, out)
    assert r.code == 130 and r.err.splitlines()[-1] == (
        f"led-flax summarize: interrupted; rerun the same command to resume (finished batches are kept in {progress})")
    lines = progress.read_text().splitlines()
    record = json.loads(lines[0])
    assert record["record"] == "run" and record["settings"]["generation"]["max_length"] == 5
    assert set(record["model"]) == {"config", "params", "tokenizer"} and record["source"] == tiny.ours
    assert len(lines) == 2 and not out.exists()  # one batch done, the output not written

    counted.calls, counted.stop_at = 0, None
    for extra, difference in [(["--max-length", "6"], "generation.max_length: 5 then, 6 now"),
                              (["--num-beams", "2"], "generation.num_beams: 1 then, 2 now"),
                              (["--no-truncate"], "truncate: true then, false now"),
                              (["--no-repeat-ngram-size", "2"], "generation.no_repeat_ngram_size: 0 then, 2 now")]:
        r = _summarize(capsys, tiny, docs, out, *extra)
        assert_one_line_error(r, 2, "summarize", f"{progress} holds summaries made with another model or other "
                                                 f"settings", difference, "--restart")
    assert counted.calls == 0 and progress.read_text().splitlines() == lines  # refused before any work

    assert _summarize(capsys, tiny, docs, out).code == 0  # the same command resumes
    assert counted.calls == 2 and out.read_text() == reference.read_text() and not progress.exists()

    # --restart discards a progress file of other settings (truncation: the same compiled program)
    counted.calls, counted.stop_at = 0, 2
    assert _summarize(capsys, tiny, docs, out, "--no-truncate", "--restart").code == 130
    counted.calls, counted.stop_at = 0, None
    assert_one_line_error(_summarize(capsys, tiny, docs, out), 2, "summarize", "truncate: false then, true now")
    assert _summarize(capsys, tiny, docs, out, "--restart").code == 0
    assert counted.calls == 3 and out.read_text() == reference.read_text()


def test_the_record_names_a_different_model_and_dtype(tiny, tmp_path):
    loaded = convert.load(tiny.ours)
    options = SummarizeOptions(batch_size=1, output=str(tmp_path / "out.txt"), progress_bar=False,
                               compilation_cache=None, generation={"max_length": 5})
    progress = tmp_path / "out.txt.progress.jsonl"
    before = RunRecord.build(loaded, before_generation(loaded), truncate=True)
    progress.write_text(before.to_json() + "\n")  # as an interrupted run leaves it

    changed = jax.tree_util.tree_map(lambda x: x, loaded.params)
    changed["led"]["shared"]["embedding"] = np.asarray(changed["led"]["shared"]["embedding"]).copy()
    changed["led"]["shared"]["embedding"][5, 3] += 1e-3
    with pytest.raises(ResumeError, match=r"the model's params: \"[0-9a-f]+\" then, \"[0-9a-f]+\" now") as e:
        summarize(DOCS, dataclasses.replace(loaded, params=changed), options)
    assert "the model's config" not in str(e.value) and "restart=True (--restart)" in str(e.value)
    with pytest.raises(ResumeError, match=r"dtype: \"float32\" then, \"bfloat16\" now"):
        summarize(DOCS, convert.load(tiny.ours, dtype=jnp.bfloat16), options)
    moved = tmp_path / "moved"
    shutil.copytree(tiny.ours, moved)  # the same model elsewhere: its source is no difference
    assert RunRecord.build(convert.load(str(moved)), before_generation(loaded), truncate=True).differences(before) == []

    progress.write_text('{"index": 0, "fingerprint": "abc", "summary": "old"}\n')  # an older led-flax's file
    with pytest.raises(ResumeError, match="does not start with a run record"):
        summarize(DOCS, loaded, options)
    progress.write_text('{"record": "ru')  # the record itself cut short: nothing was done yet
    assert len(summarize(DOCS, loaded, options)) == 3
    with pytest.raises(IsADirectoryError, match="the progress file .* is a directory"):
        summarize(DOCS, loaded, dataclasses.replace(options, progress_file=str(tmp_path)))


def before_generation(loaded):
    return loaded.generation_config.replace(max_length=5).resolved(loaded.config)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_keeps_the_finished_batches(capsys, tiny, docs, tmp_path, counted, monkeypatch, code):
    out = tmp_path / "out.txt"
    progress = f"{out}.progress.jsonl"
    real_fsync, synced = os.fsync, []

    def fsync(fd):  # the second batch's append fails
        synced.append(fd)
        if len(synced) == 3:  # 1: the record, 2: batch 1, 3: batch 2
            raise OSError(code, os.strerror(code))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    r = _summarize(capsys, tiny, docs, out)
    assert_one_line_error(r, 2, "summarize", f"cannot write {progress}: {os.strerror(code)}",
                          "the progress file keeps the finished batches: rerun the same command to resume")
    monkeypatch.setattr(os, "fsync", real_fsync)

    real_replace = os.replace

    def replace(src, dst, *a, **k):  # the output's final rename fails
        if os.fspath(dst) == str(out):
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    counted.calls = 0
    r = _summarize(capsys, tiny, docs, out)
    assert_one_line_error(r, 2, "summarize", f"cannot write {out}: {os.strerror(code)}",
                          f"the summaries are kept in {progress}: rerun the same command to write them")
    # resumed after batch 2 (its lines were written, only their fsync failed); the output never half-written
    assert counted.calls == 1 and not out.exists()
    monkeypatch.setattr(os, "replace", real_replace)
    counted.calls = 0
    assert _summarize(capsys, tiny, docs, out).code == 0
    assert counted.calls == 0 and len(out.read_text().splitlines()) == 3 and not os.path.exists(progress)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_the_generation_settings_in_use_are_printed(capsys, tiny, docs, tmp_path, counted):
    bare = tmp_path / "bare"
    shutil.copytree(tiny.ours, bare)
    os.remove(bare / "generation_config.json")
    counted.stop_at = 1  # the settings line comes before any generation: stop there
    r = run_main(capsys, "summarize", "--model", bare, docs[0], "--quiet", "--no-cache")
    assert r.code == 130, r.err
    assert r.err.splitlines()[0] == ("led-flax summarize: generation: greedy search, max_length=20 (from "
                                     "transformers' defaults (the checkpoint has no generation_config.json))")
    counted.calls = 0
    r = run_main(capsys, "summarize", "--model", tiny.ours, docs[0], "--quiet", "--no-cache", "--num-beams", "2",
                 "--max-length", "5", "--length-penalty", "2")
    assert r.code == 130, r.err
    assert r.err.splitlines()[0] == ("led-flax summarize: generation: beam search (num_beams=2), max_length=5, "
                                     "length_penalty=2.0 (from the checkpoint's generation_config.json; given: "
                                     "length_penalty, max_length, num_beams)")
    # settings that only fail together with the checkpoint's: after loading, before generating
    r = run_main(capsys, "summarize", "--model", bare, docs[0], "--min-length", "25")
    assert_one_line_error(r, 2, "summarize", "min_length 25 exceeds max_length 20; lower min_length or raise "
                                             "max_length")
    r = run_main(capsys, "summarize", "--model", bare, docs[0], "--max-length", "40")
    assert_one_line_error(r, 2, "summarize", "max_length 40 exceeds the decoder's 32 positions")


def test_jsonl_output_names_records_by_their_id(capsys, tiny, tmp_path):
    path = tmp_path / "papers.jsonl"
    path.write_text(json.dumps({"id": "E09-1056", "text": DOCS[0]}) + "\n" + json.dumps({"text": DOCS[1]}) + "\n")
    r = run_main(capsys, "summarize", "--model", tiny.ours, "--jsonl", path, "--format", "jsonl", "--quiet",
                 "--no-cache", "--max-length", "5", "--batch-size", "1")
    assert r.code == 0, r.err
    assert [json.loads(line)["source"] for line in r.out.splitlines()] == ["E09-1056", f"{path}:2"]


def test_verbose_tells_compiled_programs_from_cache_reads(tiny, monkeypatch, caplog):
    original = generation.generate
    hits = iter([False, True])  # max_length 7: a program no other test of this process compiled

    def generate(*args, **kwargs):  # the second batch's program comes from the persistent cache
        if next(hits):
            jax.monitoring.record_event("/jax/compilation_cache/cache_hits")
            jax.monitoring.record_event_duration_secs("/jax/core/compile/backend_compile_duration", 0.1)
        return original(*args, **kwargs)
    monkeypatch.setattr(generation, "generate", generate)
    report = SummaryReport()
    with caplog.at_level(logging.INFO, logger="led_flax.summarization.batch"):
        summarize(DOCS[:2], tiny.ours, SummarizeOptions(batch_size=1, progress_bar=False, compilation_cache=None,
                                                        generation={"max_length": 7}), report=report)
    messages = [r.getMessage() for r in caplog.records]
    assert "compiled a program for bucket 64, batch 1" in messages
    assert "read the program for bucket 64, batch 1 from the compilation cache" in messages
    assert report.programs_from_cache == 1 and report.programs_compiled >= 1
    assert "1 read from the compilation cache" in report.describe()
