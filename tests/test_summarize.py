"""Oracle: transformers' tokenizer + `generate` + decode, document by document; and the same run on
one device, uninterrupted, for the sharded and the resumed runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import pytest
import torch
import transformers

import convert

from led_flax import summarization as summ
from led_flax.summarization import InputWarning, summarize

from conftest import aclsum_texts, hf_config, make_tokenizer, randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def test_summaries_match_reference_in_input_order(model_dir, tmp_path):
    directory, model, tok = model_dir
    texts = _docs()
    report = summ.SummaryReport()
    ours = summarize(texts, directory, batch_size=2, buckets=[64, 256], progress=False, report=report,
                     compilation_cache=str(tmp_path / "cache"), **GEN)
    assert ours == _reference(model, tok, texts)
    assert len(set(ours)) > 1
    assert set(report.buckets) <= {64, 256, 512} and report.programs <= len(report.buckets)
    assert 0.0 < report.padding_waste < 1.0
    assert os.listdir(tmp_path / "cache")  # the persistent compilation cache was written


def test_bad_documents_warn_and_never_stop_the_corpus(model_dir, tmp_path):
    directory, model, tok = model_dir
    long = " ".join(aclsum_texts(21)[20].split()[:2000])  # far over 512 tokens
    texts = ["", "   \n ", _docs()[0], long]
    with pytest.warns(InputWarning) as caught:
        out = summarize(texts, directory, progress=False, compilation_cache=None, **GEN)
    messages = " ".join(str(w.message) for w in caught)
    assert "document 0 is empty" in messages and "document 3 has" in messages
    assert out[:2] == ["", ""] and out[2:] == _reference(model, tok, texts[2:])
    with pytest.raises(ValueError, match="document 3 has .* tokens, more than the model's 512"):
        summarize(texts, directory, truncate=False, progress=False, compilation_cache=None, **GEN)


def test_an_interrupted_run_resumes_where_it_stopped(model_dir, tmp_path, monkeypatch):
    directory, _, _ = model_dir
    texts = _docs()
    kw = dict(batch_size=2, buckets=[64, 256], progress=False, compilation_cache=None, **GEN)
    import led_flax.generation as generation
    original = generation.generate
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt  # the run is stopped during this batch
        return original(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", counting)
    stop_at = None
    full = summarize(texts, directory, **kw)
    batches = len(calls)
    assert batches >= 3

    progress = tmp_path / "out.progress.jsonl"
    calls.clear()
    stop_at = 2
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, directory, progress_file=str(progress), **kw)
    with open(progress, "a") as f:
        f.write('{"index": 3, "fingerp')  # a line cut short by the kill
    saved = [json.loads(line)["index"] for line in open(progress) if line.endswith("}\n")]
    assert 1 <= len(saved) <= 2  # the first batch's documents, and nothing of the second

    calls.clear()
    stop_at = None
    resumed = summarize(texts, directory, progress_file=str(progress), **kw)
    assert resumed == full
    assert len(calls) == batches - 1  # the finished batch was not redone


def _cli(args, env=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "led_flax.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, input=stdin, timeout=600)


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
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [rec["summary"] for rec in records] == expected + [""]
    assert not os.path.exists(str(out) + ".progress.jsonl")

    r = _cli(["summarize", *common], stdin=texts[1])
    assert r.returncode == 0 and r.stdout.splitlines() == [" ".join(expected[1].split())], r.stderr

    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    r = _cli(["summarize", "--jsonl", str(jl), "--field", "body", *common],
             env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [" ".join(s.split()) for s in expected]  # batch of 8 over 8 devices

    r = _cli(["summarize", "--model", str(tmp_path), "--quiet"], stdin="text")
    assert r.returncode == 2 and "neither a led-flax checkpoint" in r.stderr
