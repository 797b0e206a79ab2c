"""Batch summarization over a job's processes. Oracle: one process on the same documents.

Two `led-flax summarize` processes, each with 2 fake CPU devices, joined by `jax.distributed` (gloo,
coordinator on 127.0.0.1), resume a run that one process began and was interrupted in: they split
what is left by process 0's plan, and the output is byte for byte the one-process run's. Each
device holds one document of a batch in every run here, so a document's summary does not depend on
which others share its batch. Refusals of a rerun over other documents; the plan's balance."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import NEUTRAL_CWD, aclsum_texts, xla_flags
from cli_helpers import tiny_summarizer
from led_flax.summarization import SummarizeOptions, plan, summarize
from led_flax.summarization.progress import ResumeError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_summarizer(tmp_path_factory.mktemp("hosts"))


def _corpus(tmp_path, n: int = 8):
    texts = [t[:40 + 37 * i] for i, t in enumerate(aclsum_texts(n))]  # varied lengths
    names = [f"paper-{i}" for i in range(n)]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": name, "text": text}) + "\n" for name, text in zip(names, texts)))
    return texts, names, path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(model, jsonl, out, processes: int, timeout: int = 300, heartbeat: int = 30, initialization: int = 60,
         only=None, wait: bool = True, extra=(), extra_for=None):
    """The real `led-flax summarize` in each process of a job on this machine; (exit status, stdout,
    stderr) of each, or the Popen objects with wait=False. only: the process ids to start."""
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2", os.environ.get(
        "XLA_FLAGS", "")), "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [subprocess.Popen([sys.executable, "-m", "led_flax.cli", "summarize", "--model", model, "--jsonl", jsonl,
                               "--out", out, "--format", "jsonl", "--batch-size", "2", "--quiet", "--no-cache",
                               "--verbose", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                               "--process-id", str(i), "--heartbeat-timeout-s", str(heartbeat),
                               "--initialization-timeout-s", str(initialization), *extra,
                               *((extra_for or {}).get(i, ()))],
                              cwd=NEUTRAL_CWD, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in (only if only is not None else range(processes))]
    if not wait:
        return procs
    outs = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_two_processes_finish_a_one_process_run_with_its_output(tiny, tmp_path):
    texts, names, jsonl = _corpus(tmp_path)
    reference = tmp_path / "reference.jsonl"
    one = dict(batch_size=1, output_format="jsonl", progress_bar=False, compilation_cache=None)
    summarize(texts, tiny.ours, SummarizeOptions(output=str(reference), **one), names=names)

    out = tmp_path / "out.jsonl"
    seen = []

    def stop_after_three(i, summary):
        seen.append(i)
        if len(seen) == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, tiny.ours, SummarizeOptions(output=str(out), **one), names=names, on_result=stop_after_three)
    progress = tmp_path / "out.jsonl.progress.jsonl"
    assert len(progress.read_text().splitlines()) == 1 + 3  # the record, three finished documents

    results = _job(tiny.ours, jsonl, out, 2)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert out.read_bytes() == reference.read_bytes()
    # process 0 planned the five documents left, two and three, and nobody redid the first three
    assert re.search(r"plan: \[[23] [23]\] documents per process", results[0][2]), results[0][2][-2000:]
    for _, _, err in results:  # each tokenized its half of the corpus for the plan, and its own documents
        tokenized = re.search(r"tokenized (\d+) of 8 documents: a share of 4 for the plan", err)
        assert tokenized and int(tokenized.group(1)) < 8, err[-2000:]
        assert len(re.findall(r"^8 documents(, 3 resumed)?, buckets", err, re.M)) == 1, err[-2000:]  # the report, once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out.jsonl", "reference.jsonl"]


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_a_rerun_over_changed_documents_is_refused(tiny, tmp_path):
    texts, names, _ = _corpus(tmp_path, 4)
    out = tmp_path / "out.txt"
    options = SummarizeOptions(output=str(out), batch_size=1, progress_bar=False, compilation_cache=None)

    def stop(i, summary):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, tiny.ours, options, names=names, on_result=stop)
    changed = texts[:2] + [texts[2] + " An added sentence."] + texts[3:]
    with pytest.raises(ResumeError, match=r'corpus: "4 documents, \w+" then, "4 documents, \w+" now'):
        summarize(changed, tiny.ours, options, names=names)
    with pytest.raises(ResumeError, match="corpus"):
        summarize(texts, tiny.ours, options, names=names[:3] + ["renamed"])


def test_the_plan_deals_every_document_once_and_no_worse_than_the_alternatives():
    buckets = [512] * 7 + [1024] * 5 + [2048] * 3
    for batch in (1, 2, 4):
        owners = plan.assign(buckets, 3, batch, decode_steps=16, num_beams=2)
        assert len(owners) == len(buckets) and set(owners) <= {0, 1, 2}
        busiest = max(plan.costs(buckets, owners, 3, batch, 16, 2))
        # the oracle: the snake deal and a split by count, costed by the same model
        snake = [0, 1, 2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 2]
        by_order = sorted(range(len(buckets)), key=lambda i: (-buckets[i], i))
        dealt = [snake[by_order.index(i)] for i in range(len(buckets))]
        slices = [i * 3 // len(buckets) for i in range(len(buckets))]
        for other in (dealt, slices):
            assert busiest <= max(plan.costs(buckets, other, 3, batch, 16, 2))
    assert plan.assign([], 4) == [] and plan.assign([512], 4) == [0]
    with pytest.raises(ValueError, match="at least 1"):
        plan.assign([512], 0)


def _wait_for_lines(path, n: int, proc, timeout: float = 120):
    import time
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} lines")


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_a_killed_process_stops_the_other_in_one_line_and_one_process_finishes(tiny, tmp_path):
    import signal
    texts, names, jsonl = _corpus(tmp_path, 24)
    reference = tmp_path / "reference.jsonl"
    summarize(texts, tiny.ours, SummarizeOptions(output=str(reference), batch_size=1, output_format="jsonl",
                                                 progress_bar=False, compilation_cache=None), names=names)
    out = tmp_path / "out.jsonl"
    procs = _job(tiny.ours, jsonl, out, 2, heartbeat=5, wait=False)
    _wait_for_lines(tmp_path / "out.jsonl.progress.jsonl.1", 2, procs[1])  # process 1 has finished a batch
    procs[1].send_signal(signal.SIGKILL)  # its supervisor, and with it its JAX child
    _, err = procs[0].communicate(timeout=120)
    assert procs[0].returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    # one line: the child's own (the final barrier fails when the peer's connection closes) or the
    # supervisor's (jax.distributed aborts the child first); either way, how to resume
    errors = [ln for ln in lines if ln.startswith("led-flax summarize: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err[-3000:]
    assert errors[0].endswith("rerun the same command, with any number of processes, to resume"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert not [ln for ln in lines if re.match(r"^([IWEF]\d{4} |\s+@\s+0x|\*\*\*)", ln)]  # no XLA trace
    procs[1].communicate()
    kept = []
    for path in sorted(tmp_path.glob("out.jsonl.progress.jsonl*")):
        kept += [json.loads(ln)["index"] for ln in path.read_text().splitlines()[1:] if ln.endswith("}")]
    assert kept and len(kept) == len(set(kept))  # no document was summarized twice

    r = subprocess.run([sys.executable, "-m", "led_flax.cli", "summarize", "--model", tiny.ours, "--jsonl", jsonl,
                        "--out", out, "--format", "jsonl", "--batch-size", "1", "--quiet", "--no-cache"],
                       capture_output=True, text=True, cwd=NEUTRAL_CWD, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.read_bytes() == reference.read_bytes()
    assert f"{len(set(kept))} resumed" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out.jsonl", "reference.jsonl"]


def test_a_process_that_never_starts_stops_the_other_in_one_line(tiny, tmp_path):
    _, _, jsonl = _corpus(tmp_path, 2)
    out = tmp_path / "out.jsonl"
    (code, _, err), = _job(tiny.ours, jsonl, out, 2, only=(0,), initialization=3, timeout=120)
    assert code == 2, err[-3000:]
    # jax's own INFO lines (the job runs with --verbose), then one line; nothing of XLA's abort
    lines = [ln for ln in err.splitlines() if "JAX distributed service" not in ln]
    assert lines == ["led-flax summarize: error: process 0 of the job stopped (aborted by jax.distributed: a peer "
                     "process died, stopped answering or never joined); the finished batches are kept in the "
                     f"progress files ({out}.progress.jsonl and its siblings): rerun the same command, with any "
                     "number of processes, to resume"], err[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_one_process_reads_every_process_file_and_restart_removes_them(tiny, tmp_path):
    """A progress file of process 1 of an earlier job is read as finished work by a one-process rerun;
    with restart it is removed with the rest. Oracle: an uninterrupted run's output."""
    from led_flax.summarization import SummaryReport
    texts, names, _ = _corpus(tmp_path, 4)
    one = dict(batch_size=1, progress_bar=False, compilation_cache=None)
    reference = summarize(texts, tiny.ours, SummarizeOptions(**one), names=names)
    out = tmp_path / "out.txt"
    options = SummarizeOptions(output=str(out), **one)
    seen = []

    def stop(i, summary):
        seen.append(i)
        if len(seen) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, tiny.ours, options, names=names, on_result=stop)
    own = tmp_path / "out.txt.progress.jsonl"
    record, first, second = own.read_text().splitlines()
    own.write_text(record + "\n" + first + "\n")
    (tmp_path / "out.txt.progress.jsonl.1").write_text(record + "\n" + second + "\n")  # as process 1 left it
    report = SummaryReport()
    assert summarize(texts, tiny.ours, options, names=names, report=report) == reference
    assert report.resumed == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out.txt"]

    out.unlink()
    with pytest.raises(KeyboardInterrupt):
        seen.clear()
        summarize(texts, tiny.ours, options, names=names, on_result=stop)
    (tmp_path / "out.txt.progress.jsonl.3").write_text(own.read_text())
    report = SummaryReport()
    restarted = SummarizeOptions(output=str(out), restart=True, **one)
    assert summarize(texts, tiny.ours, restarted, names=names, report=report) == reference
    assert report.resumed == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl", "out.txt"]


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_a_job_over_other_settings_is_refused_by_every_process(tiny, tmp_path):
    texts, names, jsonl = _corpus(tmp_path, 4)
    out = tmp_path / "out.jsonl"

    def stop(i, summary):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        summarize(texts, tiny.ours, SummarizeOptions(output=str(out), output_format="jsonl", batch_size=1,
                                                     progress_bar=False, compilation_cache=None),
                  names=names, on_result=stop)
    progress = tmp_path / "out.jsonl.progress.jsonl"
    before = progress.read_bytes()
    (code0, _, err0), (code1, _, err1) = _job(tiny.ours, jsonl, out, 2, extra=("--max-length", "9"))
    assert code0 == 2 and code1 == 2, (err0[-2000:], err1[-2000:])
    assert f"led-flax summarize: error: {progress} holds summaries made with another model or other settings" in \
        err0 and "generation.max_length: " in err0
    assert [ln for ln in err1.splitlines() if ln.startswith("led-flax summarize: error")] == [
        f"led-flax summarize: error: process 0 refused to resume {progress} (its message says why); rerun with the "
        f"same model, settings and documents, or with --restart"]
    assert progress.read_bytes() == before and not out.exists()


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_processes_given_different_commands_are_refused_before_any_work(tiny, tmp_path):
    _, _, jsonl = _corpus(tmp_path, 4)
    out = tmp_path / "out.jsonl"
    results = _job(tiny.ours, jsonl, out, 2, extra_for={1: ("--max-length", "9")})
    line = ("led-flax summarize: error: processes [1] were given another model, other settings, other documents or "
            "another --out than process 0: every process of a job runs the same command on the same inputs")
    for code, _, err in results:
        assert code == 2 and [ln for ln in err.splitlines() if ln.startswith("led-flax summarize: error")] == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]


@pytest.mark.filterwarnings("ignore::led_flax.summarization.InputWarning")
def test_sigterm_to_one_process_stops_the_job_in_a_line_each(tiny, tmp_path):
    """jax.distributed takes SIGTERM over for its preemption notice; the command takes it back, so a
    `kill` stops the job as Ctrl-C does, and its peer stops too instead of waiting at the barrier."""
    import signal
    texts = aclsum_texts(40)
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"d{i}", "text": texts[i % 40][:200 + i % 50]}) + "\n"
                             for i in range(400)))  # long enough to be stopped mid-way
    out = tmp_path / "out.jsonl"
    procs = _job(tiny.ours, jsonl, out, 2, heartbeat=5, wait=False)
    _wait_for_lines(tmp_path / "out.jsonl.progress.jsonl", 6, procs[0])
    procs[0].send_signal(signal.SIGTERM)
    (_, err0), (_, err1) = [p.communicate(timeout=120) for p in procs]
    assert procs[0].returncode == 143, err0[-3000:]
    assert [ln for ln in err0.splitlines() if ln.startswith(("led-flax summarize: terminated",
                                                             "led-flax summarize: error"))] == [
        f"led-flax summarize: terminated; rerun the same command to resume (finished batches are kept in "
        f"{out}.progress.jsonl)"]
    errors = [ln for ln in err1.splitlines() if ln.startswith("led-flax summarize: error:")]
    assert procs[1].returncode == 2 and len(errors) == 1 and errors[0] == err1.splitlines()[-1], err1[-3000:]
    assert errors[0].endswith("rerun the same command, with any number of processes, to resume")
    assert "Traceback" not in err0 + err1 and "grpc" not in err0 + err1
    assert not out.exists() and (tmp_path / "out.jsonl.progress.jsonl").exists()
