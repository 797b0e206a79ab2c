"""Oracle: transformers' tokenizer + `generate` + decode, document by document; and the same run on
one device, uninterrupted, for the sharded and the resumed runs."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import pytest
import torch
import transformers

from led_flax import convert

from led_flax.io.checkpoint import CheckpointError
from led_flax.summarization.progress import ResumeError
from led_flax.summarization.batch import InputWarning, SummarizeOptions, SummaryReport, format_summaries, summarize

from conftest import aclsum_texts, hf_config, make_tokenizer, randomize, xla_flags

from conftest import NEUTRAL_CWD
GEN = dict(max_length=10, num_beams=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("summ")
    tok = make_tokenizer(d)
    config = hf_config(vocab_size=len(tok), d_model=32, attention_window=[16, 16], max_encoder_position_embeddings=512,
                       max_decoder_position_embeddings=64, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = randomize(transformers.LEDForConditionalGeneration(config), 0, std=0.2)
    model.save_pretrained(d)
    return convert.load(d), model, tok


def _docs():
    papers = aclsum_texts(26)[20:]
    return [papers[0][:200], papers[1][:900], papers[2][:60], papers[3][:1500], papers[4][:400], papers[5][:2600]]


def _reference(model, tok, texts, max_positions=512):
    out = []
    for text in texts:
        enc = tok(text, return_tensors="pt", truncation=True, max_length=max_positions)
        glob = torch.zeros_like(enc["input_ids"])
        glob[:, 0] = 1
        with torch.no_grad():
            ids = model.generate(**enc, global_attention_mask=glob, do_sample=False, **GEN)
        out.append(tok.decode(ids[0], skip_special_tokens=True).strip())
    return out


def _options(**changes) -> SummarizeOptions:
    return SummarizeOptions(**{"batch_size": 2, "buckets": (64, 256), "progress_bar": False,
                               "compilation_cache": None, "generation": GEN, **changes})


def test_summaries_match_reference_in_input_order(model_dir, tmp_path):
    directory, model, tok = model_dir
    texts = _docs()
    report = SummaryReport()
    ours = summarize(texts, directory, _options(compilation_cache=str(tmp_path / "cache")), report=report)
    assert ours == _reference(model, tok, texts)
    assert len(set(ours)) > 1
    assert set(report.buckets) <= {64, 256, 512} and sum(report.buckets.values()) == len(texts)
    assert 0.0 < report.padding_waste < 1.0
    assert os.listdir(tmp_path / "cache")  # the persistent compilation cache was written


def test_bad_documents_warn_and_never_stop_the_corpus(model_dir, tmp_path):
    directory, model, tok = model_dir
    long = " ".join(aclsum_texts(21)[20].split()[:2000])  # far over 512 tokens
    texts = ["", "   \n ", _docs()[0], long]
    report = SummaryReport()
    with pytest.warns(InputWarning) as caught:
        out = summarize(texts, directory, _options(batch_size=4, buckets=None), report=report)
    messages = " ".join(str(w.message) for w in caught)
    assert "document 0 is empty" in messages and "document 3 has" in messages
    assert out[:2] == ["", ""] and out[2:] == _reference(model, tok, texts[2:])
    assert report.skipped == [(0, "empty"), (1, "empty")] and report.truncated == [3]
    with pytest.raises(ValueError, match="document 3 has .* tokens, more than the model's 512"):
        summarize(texts, directory, _options(truncate=False))


def test_nothing_to_generate_reports_no_padding_waste(model_dir):
    directory, _, _ = model_dir
    report = SummaryReport()
    with pytest.warns(InputWarning, match="empty"):
        assert summarize(["", " "], directory, _options(), report=report) == ["", ""]
    assert report.padding_waste == 0.0 and report.buckets == {}
    assert report.describe() == "2 documents, nothing left to generate"


def test_options_are_checked_before_any_work(model_dir, tmp_path):
    directory, _, _ = model_dir
    with pytest.raises(TypeError, match=r"unknown generation settings \['num_beam'\]"):
        SummarizeOptions(generation={"num_beam": 4})
    with pytest.raises(ValueError, match="output_format must be one of"):
        SummarizeOptions(output_format="csv")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        SummarizeOptions(batch_size=0)
    assert SummarizeOptions(buckets=[256, 64]).buckets == (64, 256)
    with pytest.raises(ValueError, match="num_return_sequences must be 1"):
        summarize(["text"], directory, _options(generation={"num_beams": 2, "num_return_sequences": 2}))
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        summarize(["text"], directory, _options(output=str(tmp_path / "missing" / "out.txt")))


def test_an_hf_directory_is_refused_with_the_line_that_loads_it(model_dir):
    directory, _, _ = model_dir
    with pytest.raises(CheckpointError, match=r"convert\.load\("):
        summarize(["text"], directory.source, _options())


def test_an_interrupted_run_resumes_where_it_stopped(model_dir, tmp_path, monkeypatch):
    directory, _, _ = model_dir
    texts = _docs()
    from led_flax.decoding import generation
    original = generation.generate
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # the run is stopped during this batch
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    stop_at = None
    full = summarize(texts, directory, _options())
    batches = len(calls)
    assert batches >= 3

    out = tmp_path / "out.jsonl"
    options = _options(output=str(out), output_format="jsonl")
    progress = tmp_path / "out.jsonl.progress.jsonl"
    assert options.resume_file == str(progress)
    calls.clear()
    stop_at = 2
    names = [f"doc{i}" for i in range(len(texts))]  # part of the corpus the run record digests
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, directory, options, names=names)
    assert not out.exists()
    with open(progress, "a") as f:
        f.write('{"index": 3, "fingerp')  # a line cut short by the kill
    lines = open(progress).readlines()
    assert json.loads(lines[0])["record"] == "run"  # what the summaries depend on, then one line a document
    saved = [json.loads(line)["index"] for line in lines[1:] if line.endswith("}\n")]
    assert 1 <= len(saved) <= 2  # the first batch's documents, and nothing of the second

    calls.clear()
    stop_at = None
    report = SummaryReport()
    resumed = summarize(texts, directory, options, names=names, report=report)
    assert resumed == full
    assert len(calls) == batches - 1  # the finished batch was not redone
    assert report.resumed == len(saved)
    assert out.read_text().splitlines() == format_summaries(full, names, "jsonl")
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == names
    assert not progress.exists()  # the output is complete: the progress file is gone


def test_a_sampled_summary_depends_on_its_seed_not_its_batch(model_dir, tmp_path):
    """Sampling: each document draws from its own key (its seed; default its index), so the summaries
    are the same whatever the batch size; other seeds draw others; and a rerun with other seeds does not
    resume the first run's progress."""
    directory, _, _ = model_dir
    texts = _docs()[:3]
    sample = {"do_sample": True, "top_k": 0, "temperature": 2.0, "max_length": 10}
    options = _options(buckets=(512,), generation=sample)
    one = summarize(texts, directory, dataclasses.replace(options, batch_size=1))
    three = summarize(texts, directory, dataclasses.replace(options, batch_size=3))
    assert one == three
    assert summarize(texts, directory, options, seeds=[0, 1, 2]) == one  # the default: the index
    other = summarize(texts, directory, dataclasses.replace(options, batch_size=3), seeds=[7, 8, 9])
    assert other != one
    progress = tmp_path / "run.progress.jsonl"
    summarize(texts[:1], directory, dataclasses.replace(options, progress_file=str(progress)), seeds=[7])
    with pytest.raises(ResumeError, match="seeds"):
        summarize(texts[:1], directory, dataclasses.replace(options, progress_file=str(progress)), seeds=[8])
    with pytest.raises(ValueError, match=r"^2 seeds for 3 inputs; give one seed per input$"):
        summarize(texts, directory, options, seeds=[1, 2])


_COUNT = """
import json, sys
import jax
from led_flax.summarization.batch import SummarizeOptions, SummaryReport, summarize
model, cache, docs, penalties = sys.argv[1:]
for penalty in json.loads(penalties):
    jax.clear_caches()  # each run's programs from the persistent cache, not from this process's memory
    report = SummaryReport()
    options = SummarizeOptions(batch_size=2, buckets=(64, 256), progress_bar=False, compilation_cache=cache,
                               generation={"max_length": 10, "num_beams": 1, "repetition_penalty": penalty})
    summaries = summarize(json.load(open(docs)), model, options, report=report)
    print(json.dumps([report.programs_compiled, report.programs_from_cache, len(report.buckets), summaries]))
"""


def test_report_tells_compiled_programs_from_cache_reads(model_dir, tmp_path):
    """The first process compiles every program into an empty cache; a second, identical process reads
    them all back and compiles none (jax.monitoring's compile and cache-hit events), and then reads them
    again for another repetition penalty: a traced value, not part of the programs' key."""
    directory, _, _ = model_dir
    done = convert.convert_checkpoint(directory.source, tmp_path / "ours")
    assert done.head == "conditional_generation" and "tokenizer.json" in done.extra_files
    docs = tmp_path / "docs.json"
    docs.write_text(json.dumps(_docs()))
    runs = []
    for penalties in ([1.3], [1.3, 2.5]):
        r = subprocess.run([sys.executable, "-c", _COUNT, done.path, str(tmp_path / "cache"), str(docs),
                            json.dumps(penalties)], capture_output=True, text=True, cwd=NEUTRAL_CWD, timeout=600)
        assert r.returncode == 0, r.stderr
        runs += [json.loads(line) for line in r.stdout.splitlines()[-len(penalties):]]
    (compiled, hits, buckets, first), (compiled_again, hits_again, _, second), (compiled_other, hits_other, _, other) \
        = runs
    assert compiled >= buckets >= 2 and hits == 0  # a program per bucket, and JAX's small helpers
    assert compiled_again == 0 and hits_again == compiled
    assert first == second
    assert compiled_other == 0 and hits_other >= buckets and other != first


def _cli(args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "led_flax.cli", *args], capture_output=True, text=True,
                          cwd=NEUTRAL_CWD, env={**os.environ, **(env or {})}, input=stdin, timeout=600)


def test_cli_files_stdin_jsonl_and_eight_devices(model_dir, tmp_path):
    directory, model, tok = model_dir
    texts = _docs()[:4]
    files = []
    for i, t in enumerate(texts):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(t, encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 na\xefve".encode("latin-1"))
    expected = _reference(model, tok, texts)
    common = ["--model", directory.source, "--max-length", "10", "--quiet", "--no-cache", "--batch-size", "3"]

    out = tmp_path / "out.jsonl"
    r = _cli(["summarize", *map(str, files), str(bad), "--format", "jsonl", "--out", str(out), *common])
    assert r.returncode == 0, r.stderr
    assert "latin1.txt is not UTF-8" in r.stderr
    assert "5 documents, buckets" in r.stderr and "compiled, 0 read from the compilation cache" in r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["summary"] for rec in records] == expected + [""]
    assert not os.path.exists(str(out) + ".progress.jsonl")

    r = _cli(["summarize", *common], stdin=texts[1])
    assert r.returncode == 0 and r.stdout.splitlines() == [" ".join(expected[1].split())], r.stderr

    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    r = _cli(["summarize", "--jsonl", str(jl), "--field", "body", *common],
             env={"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [" ".join(s.split()) for s in expected]  # batch of 8 over 8 devices
    # each document split over 4 devices' sequence axis, two documents at a time: the same summaries
    r = _cli(["summarize", "--jsonl", str(jl), "--field", "body", "--sequence-devices", "4", *common],
             env={"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [" ".join(s.split()) for s in expected]

    r = _cli(["summarize", "--model", str(tmp_path), "--quiet"], stdin="text")
    assert r.returncode == 2 and "neither a led-flax checkpoint" in r.stderr
