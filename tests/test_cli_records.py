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

from cli_helpers import assert_one_line_error, fill, run_command, run_main, small_tmpfs, tiny_summarizer

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


# ---------------------------------------------------------------------------------------------- issue 21
def _tree(folder) -> dict:
    """Every file under `folder` (links as links) with its bytes and mode: what a failed run must leave."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isfile(path):
                out[rel] = (open(path, "rb").read(), oct(os.stat(path).st_mode & 0o777))
    return out


def test_a_full_disk_during_convert_is_one_line_and_leaves_nothing(tiny, tmp_path):
    small = tmp_path / "small"
    with small_tmpfs(small, "300k"):
        fill(small, leave=40_000)
        before = _tree(small)
        r = run_command("convert", tiny.hf, small / "ck", "--quiet")  # the real command: orbax's threads too
        assert r.code == 2 and r.out == "", r.err[-3000:]
        assert r.err == (f"led-flax convert: error: cannot write {small}/ck: No space left on device; free some space "
                         f"on that filesystem, or write somewhere else\n")
        assert _tree(small) == before  # nothing left behind


def test_weights_that_are_not_finite_are_refused_by_every_loader(tiny, docs, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file
    hf = tmp_path / "hf"
    shutil.copytree(tiny.hf, hf)
    state = load_file(hf / "model.safetensors")
    for key, value in (("led.encoder.layers.0.fc1.weight", np.nan), ("led.decoder.layers.1.fc2.bias", np.inf)):
        state[key] = state[key].copy()
        state[key].flat[3] = value
    save_file(state, hf / "model.safetensors", metadata={"format": "pt"})
    message = (f"{hf} holds NaN or infinite weights in 2 tensors: led.decoder.layers.1.fc2.bias, "
               f"led.encoder.layers.0.fc1.weight; the checkpoint was saved from a diverged run or is damaged: use an "
               f"earlier checkpoint, or fix these tensors at their source")
    r = run_main(capsys, "convert", hf, tmp_path / "out", "--quiet")
    assert r.code == 2 and r.err == f"led-flax convert: error: {message}\n" and not (tmp_path / "out").exists()
    r = run_main(capsys, "summarize", "--model", hf, "--quiet", "--no-cache", docs[0])
    assert r.code == 2 and r.err == f"led-flax summarize: error: {message}\n"

    ours = tmp_path / "ours"  # our own format: a NaN written into a checkpoint with its CRCs made to agree
    from led_flax.io import checkpoint
    ckpt = checkpoint.load(tiny.ours, scan_layers=False)
    params = jax.tree_util.tree_map(np.asarray, ckpt.params)
    params["led"]["encoder"]["layers_1"]["fc2"]["bias"] = np.full_like(
        params["led"]["encoder"]["layers_1"]["fc2"]["bias"], np.nan)
    checkpoint.save(ours, ckpt.config, params)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(ours)
    assert str(e.value) == (f"{ours}/params holds NaN or infinite weights in 1 tensors: led/encoder/layers_1/fc2/bias; "
                            f"the checkpoint was saved from a diverged run or is damaged: use an earlier checkpoint, or "
                            f"fix these tensors at their source")


def test_a_generation_that_meets_non_finite_scores_is_reported(tiny, recwarn):
    """A model in memory (no loader checks it) whose logits are NaN: the documents are named, not
    returned as empty text in silence. The oracle: the same model with finite weights warns nothing."""
    from led_flax.io import pretrained
    from led_flax.summarization import NonFiniteWarning
    model = pretrained.load(tiny.ours)
    report = SummaryReport()
    summarize(DOCS[:2], model, SummarizeOptions(compilation_cache=None, progress_bar=False), report=report)
    assert report.non_finite == [] and not [w for w in recwarn if w.category is NonFiniteWarning]
    params = jax.tree_util.tree_map(lambda x: x, model.params)
    params["final_logits_bias"] = jnp.full_like(params["final_logits_bias"], jnp.nan)
    bad = dataclasses.replace(model, params=params)
    report = SummaryReport()
    with pytest.warns(NonFiniteWarning) as caught:
        summarize(DOCS[:2], bad, SummarizeOptions(compilation_cache=None, progress_bar=False), names=["a", "b"],
                  report=report)
    assert report.non_finite == [0, 1] and "2 with non-finite scores" in report.describe()
    assert [str(w.message) for w in caught] == [
        f"{n}: generation met non-finite scores (NaN or infinite logits), so its summary is not the model's answer: "
        f"the weights hold NaN or infinity, or the compute dtype overflowed (try compute_dtype float32)"
        for n in ("a", "b")]


def test_outputs_through_symlinks_are_written_through_with_the_umask_mode(capsys, tiny, docs, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "target.txt").write_text("old summaries\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real / "target.txt")
    reference = tmp_path / "reference.txt"
    old = os.umask(0o022)
    try:
        assert _summarize(capsys, tiny, docs, reference).code == 0
        assert _summarize(capsys, tiny, docs, link).code == 0
        assert link.is_symlink() and os.readlink(link) == str(real / "target.txt")
        assert (real / "target.txt").read_bytes() == reference.read_bytes()
        assert oct(os.stat(real / "target.txt").st_mode & 0o777) == "0o644"
        assert sorted(os.listdir(real)) == ["target.txt"] and sorted(p.name for p in tmp_path.iterdir()) == [
            "doc0.txt", "doc1.txt", "doc2.txt", "link.txt", "real", "reference.txt"]

        # a checkpoint directory through a link: the folder it points at is replaced, the link stays
        (real / "ck").mkdir()
        (tmp_path / "ck").symlink_to(real / "ck")
        r = run_main(capsys, "convert", tiny.hf, tmp_path / "ck", "--overwrite", "--quiet")
        assert r.code == 0, r.err
        assert os.readlink(tmp_path / "ck") == str(real / "ck") and sorted(os.listdir(real)) == ["ck", "target.txt"]
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stray .ck.old-... link
        modes = {name: oct(os.stat(real / "ck" / name).st_mode & 0o777) for name in os.listdir(real / "ck")}
        assert modes["config.json"] == modes["led_flax.json"] == modes["tokenizer.json"] == "0o644"
        assert modes["params"] == "0o755"

        # an output that is an input, through a link, stays refused
        (tmp_path / "doc-link.txt").symlink_to(docs[0])
        r = run_main(capsys, "summarize", "--model", tiny.ours, docs[0], "--out", tmp_path / "doc-link.txt")
        assert_one_line_error(r, 2, "summarize", "is also an input")
    finally:
        os.umask(old)


def test_a_second_run_writing_the_same_output_is_refused_naming_the_first(capsys, tiny, docs, tmp_path):
    from led_flax.utils.files import exclusive
    out = tmp_path / "out.txt"
    with exclusive(out):  # the first run, holding the output
        r = _summarize(capsys, tiny, docs, out)
        assert_one_line_error(r, 2, "summarize", f"{out} is being written by another run (process {os.getpid()} on ",
                              "wait for it to finish, or write somewhere else")
        assert sorted(p.name for p in tmp_path.iterdir()) == [".out.txt.lock", "doc0.txt", "doc1.txt", "doc2.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc0.txt", "doc1.txt", "doc2.txt"]
    assert _summarize(capsys, tiny, docs, out).code == 0  # once the first is done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc0.txt", "doc1.txt", "doc2.txt", "out.txt"]
