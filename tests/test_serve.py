"""`led-flax serve`, a real server process on 127.0.0.1 (an ephemeral port) and a real HTTP client
(httpx). The oracle is `led_flax.summarize` on the same documents and settings: every summary the
server gives equals it, whatever else shared the batch. Then every error of the table (each followed
by a request that still succeeds), the API key, the metrics (parsed with prometheus_client's parser,
counted against the requests sent), a soak with bad requests mixed in (and the process's memory), a
second start that reads its programs from the persistent cache, and SIGTERM with requests in flight.
The timeout, a client that goes away and a second signal (stop at once: the running request gets 503)
run on a server in this process whose device work is slowed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli_helpers import tiny_summarizer
from conftest import NEUTRAL_CWD, aclsum_texts
from led_flax.summarization import SummarizeOptions, summarize

KEY = "s3cret-key"
BUCKETS = (32,)  # and the tiny model's 64 positions: two buckets
AUTH = {"Authorization": f"Bearer {KEY}"}


class Process:
    """A `led-flax serve` child: its stderr lines gathered by a thread, its URL once it listens."""

    def __init__(self, model, cache, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "led_flax.cli", "serve", "--model", str(model), "--port", "0", "--cache-dir",
             str(cache), "--buckets", ",".join(map(str, BUCKETS)), "--max-batch-size", "4", *map(str, extra)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=NEUTRAL_CWD,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self._wait_for(r"listening on (http://\S+);").group(1)
        self.ready = self._wait_for(r"ready: (\d+) warm-up programs \((\d+) compiled, (\d+) read")

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def _wait_for(self, pattern, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = re.search(pattern, line)
                if m:
                    return m
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n" + "\n".join(self.lines))
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.lines))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_summarizer(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def loaded(tiny):
    """The tiny model in this process, for the oracle (`summarize`)."""
    from led_flax.io import pretrained
    return pretrained.load(tiny.ours)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-cache")
    ORACLE_CACHE[:] = [str(path)]
    return path


@pytest.fixture(scope="module")
def server(tiny, cache, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text(KEY + "\n")
    p = Process(tiny.ours, cache, "--max-wait-ms", "100", "--api-key-file", key_file, "--max-queue", "40",
                "--max-body-mb", "0.05")
    yield p
    p.stop()


def _post(url, body, headers=AUTH, **kw):
    return httpx.post(f"{url}/summarize", json=body, headers=headers, timeout=60, **kw)


def _documents():
    papers = aclsum_texts(8)
    return [papers[0][:60], papers[1][:400], papers[2][:150], papers[3][:900], papers[4][:30], papers[5][:250],
            papers[6][:1200], papers[7][:90]]


# every request of the concurrency test: (documents, parameters); three static settings, their numbers
# varying per request (beam search's length penalty, sampling's temperature, seed and top-p)
def _requests(docs):
    out = []
    for k in range(16):
        picked = [docs[(k + j) % len(docs)] for j in range(1 + k % 3)]
        if k % 3 == 0:
            params = {}  # the checkpoint's own settings: the warm-up's programs
        elif k % 3 == 1:
            params = {"max_length": 8, "num_beams": 2, "length_penalty": [0.6, 1.8][k // 3 % 2]}
        else:
            params = {"max_length": 8, "do_sample": True, "top_k": 0, "temperature": 1.5 + k / 10,
                      "top_p": 0.9, "seed": 1000 * k}
        out.append((picked, params))
    return out


ORACLE_CACHE: list = []  # the servers' compilation cache: the oracle reads the programs they compiled


def _oracle(model, docs, params, seeds=None):
    """summarize's summaries (model: a LoadedModel, loaded once), batch 4 as the servers'."""
    generation = {k: v for k, v in params.items() if k != "seed"}
    options = SummarizeOptions(batch_size=4, buckets=BUCKETS, progress_bar=False,
                               compilation_cache=ORACLE_CACHE[0] if ORACLE_CACHE else None, generation=generation)
    return summarize(docs, model, options, seeds=seeds)


def test_sixteen_clients_get_the_summaries_of_summarize(server, loaded):
    docs = _documents()
    requests = _requests(docs)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: _post(server.url, {"inputs": r[0], "parameters": r[1]}), requests))
    by_settings: dict[str, tuple[list, list, list]] = {}  # one summarize per distinct settings
    for (picked, params), answer in zip(requests, answers):
        assert answer.status_code == 200, answer.text
        items = answer.json()
        assert len(items) == len(picked)
        assert all(item["input_tokens"] > 0 and 0 < item["generated_tokens"] <= 19 for item in items)
        if params.get("do_sample"):
            assert [item["seed"] for item in items] == [params["seed"] + j for j in range(len(picked))]
        group = by_settings.setdefault(json.dumps({k: v for k, v in params.items() if k != "seed"}), ([], [], []))
        group[0].extend(picked)
        group[1].extend(item.get("seed", 0) for item in items)
        group[2].extend(item["summary_text"] for item in items)
    for settings, (picked, seeds, got) in by_settings.items():
        assert _oracle(loaded, picked, json.loads(settings), seeds) == got, settings
    metrics = _metrics(server.url)
    assert metrics["led_flax_batch_size_count"] < sum(len(r[0]) for r in requests)  # documents shared batches


def _metrics(url) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return out


GOOD = {"inputs": ["A short document about attention.", "And a second one."], "parameters": {"max_length": 6}}


def _error_cases(url):
    big = {"inputs": "word " * 12_000}  # 60 kB: over the 0.05 MB limit
    long_text = "The encoder reads long documents with windowed attention. " * 20
    return [
        ("malformed JSON", lambda: httpx.post(f"{url}/summarize", content=b'{"inputs": ', headers=AUTH), 400,
         "invalid_json"),
        ("a wrong type", lambda: _post(url, {"inputs": 5}), 400, "invalid_request"),
        ("a wrong parameter type", lambda: _post(url, {"inputs": "x", "parameters": {"num_beams": "4"}}), 400,
         "invalid_parameter"),
        ("an unknown parameter", lambda: _post(url, {"inputs": "x", "parameters": {"beams": 4}}), 400,
         "unknown_parameter"),
        ("settings that do not fit", lambda: _post(url, {"inputs": "x", "parameters": {"max_length": 999}}), 400,
         "invalid_parameter"),
        ("an empty list", lambda: _post(url, {"inputs": []}), 400, "invalid_request"),
        ("no API key", lambda: _post(url, GOOD, headers={}), 401, "unauthorized"),
        ("a wrong API key", lambda: _post(url, GOOD, headers={"Authorization": "Bearer nope"}), 401, "unauthorized"),
        ("a body over the limit", lambda: _post(url, big), 413, "payload_too_large"),
        ("an over-long input with truncation false",
         lambda: _post(url, {"inputs": long_text, "parameters": {"truncation": False}}), 413, "input_too_long"),
        ("more documents than the queue could ever hold", lambda: _post(url, {"inputs": ["x"] * 41}), 413,
         "too_many_inputs"),
        ("a number that is not finite", lambda: httpx.post(
            f"{url}/summarize", content=b'{"inputs": "x", "parameters": {"length_penalty": NaN}}', headers=AUTH),
         400, "invalid_parameter"),  # JSON has no NaN; Python's parser reads it
        ("a number out of its range", lambda: _post(url, {"inputs": "x", "parameters": {"top_k": -1}}), 400,
         "invalid_parameter"),
        ("an unknown path", lambda: httpx.get(f"{url}/summarise", timeout=30), 404, "not_found"),
    ]


def test_every_error_is_json_with_its_status_and_the_next_request_succeeds(server, loaded):
    expected = _oracle(loaded, GOOD["inputs"], GOOD["parameters"])
    for what, send, status, kind in _error_cases(server.url):
        r = send()
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        body = r.json()
        assert body["type"] == kind and body["error"], f"{what}: {body}"
        if status == 401:
            assert r.headers["www-authenticate"] == "Bearer"
        good = _post(server.url, GOOD)
        assert good.status_code == 200 and [i["summary_text"] for i in good.json()] == expected, what
    r = _post(server.url, {"inputs": ["x", 5], "parameters": {"beams": 4, "max_lenght": 9}})
    assert r.json()["error"] == "inputs[1] is a JSON int, not a string; every input is a document's text"
    r = _post(server.url, {"inputs": "x", "parameters": {"beams": 4, "max_lenght": 9}})
    assert r.json()["error"].startswith("unknown parameters 'beams' (did you mean 'num_beams'?), 'max_lenght' (did "
                                        "you mean 'max_length'?); the parameters are: max_length, ")
    assert _post(server.url, GOOD, headers={"X-API-Key": KEY}).status_code == 200


def test_metrics_count_the_requests_sent(server):
    before = _metrics(server.url)
    sent = {"200": 3, "400": 2, "401": 1}
    for _ in range(3):
        assert _post(server.url, GOOD).status_code == 200
    for _ in range(2):
        assert _post(server.url, {"inputs": []}).status_code == 400
    assert _post(server.url, GOOD, headers={}).status_code == 401
    after = _metrics(server.url)
    for status, n in sent.items():
        key = f"led_flax_requests_total{{status={status}}}"
        assert after[key] - before.get(key, 0) == n, key
    assert after["led_flax_documents_total"] - before["led_flax_documents_total"] == 6
    assert after["led_flax_errors_total{type=invalid_request}"] - before.get(
        "led_flax_errors_total{type=invalid_request}", 0) == 2
    assert after["led_flax_queue_depth"] == 0
    assert after["led_flax_compilations_total"] >= 2 and after["led_flax_program_evictions_total"] == 0
    assert after["led_flax_request_seconds_count"] - before["led_flax_request_seconds_count"] == 6
    assert after["led_flax_generated_tokens_total"] > before["led_flax_generated_tokens_total"]
    assert httpx.get(f"{server.url}/health", timeout=30).json()["status"] == "ok"


def test_a_soak_with_bad_requests_mixed_in(server, loaded):
    docs = _documents()
    expected = dict(zip(docs, _oracle(loaded, docs, {"max_length": 8})))
    for k in range(16):  # warm: every bucket has run
        assert _post(server.url, {"inputs": docs[k % len(docs)], "parameters": {"max_length": 8}}).status_code == 200
    warm = server.rss_kib()
    bad = [{"inputs": 5}, {"inputs": "x", "parameters": {"nope": 1}}, {"inputs": []}]

    def send(k):
        if k % 4 == 3:
            return k, _post(server.url, bad[k % 3])
        return k, _post(server.url, {"inputs": docs[k % len(docs)], "parameters": {"max_length": 8}})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(320)))
    assert len(results) == 320
    for k, r in results:
        if k % 4 == 3:
            assert r.status_code == 400, r.text
        else:
            assert r.status_code == 200, r.text
            assert [i["summary_text"] for i in r.json()] == [expected[docs[k % len(docs)]]]
    assert server.rss_kib() <= 1.05 * warm, (warm, server.rss_kib())


def test_a_second_start_reads_its_programs_and_sigterm_drains(server, tiny, loaded, cache):
    """Same model, buckets and batch: the warm-up programs come from the persistent cache. SIGTERM
    with requests in flight: they are answered, a new one gets 503, the process exits 0."""
    second = Process(tiny.ours, cache, "--max-wait-ms", "800")
    try:
        programs, compiled, read = map(int, second.ready.groups())
        assert programs == 2 and compiled == 0 and read >= 2, second.lines
        docs = _documents()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            flying = [pool.submit(_post, second.url, {"inputs": d, "parameters": {"max_length": 8}}, {})
                      for d in docs[:3]]
            time.sleep(0.3)  # queued: their batch waits up to 800 ms
            second.proc.send_signal(signal.SIGTERM)
            second._wait_for(r"SIGTERM: draining")
            late = _post(second.url, GOOD, headers={})
            answers = [f.result() for f in flying]
        assert late.status_code == 503 and late.json()["type"] == "draining" and late.headers["retry-after"]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert [a.json()[0]["summary_text"] for a in answers] == _oracle(loaded, docs[:3], {"max_length": 8})
        assert second.proc.wait(timeout=60) == 0, second.lines
        assert second.lines[-1].endswith("stopped")
    finally:
        second.stop()


def test_a_timeout_a_client_that_goes_away_and_a_forced_stop(tiny):
    """A server in this process whose device work is slowed on demand: a request past --timeout-s gets
    504; a client that disconnects while its document waits takes it out of the queue (it never runs);
    the next request is answered."""
    from led_flax.serving import ServeOptions, Server
    srv = Server(tiny.ours, ServeOptions(port=0, max_batch_size=2, max_wait_ms=10, timeout_s=1.0, max_queue=3,
                                         compilation_cache=None))
    run, slow, ran = srv.engine.run, threading.Event(), []

    def slowed(rows):
        ran.append(len(rows))
        if slow.is_set():
            time.sleep(1.5)
        return run(rows)
    srv.engine.run = slowed
    srv.start()
    try:
        deadline = time.monotonic() + 120
        while httpx.get(f"{srv.url}/health", timeout=30).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        slow.set()  # the checkpoint's own settings: the warm-up's program, nothing to compile
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(_post, srv.url, {"inputs": "the first"}, {})
            time.sleep(0.2)  # the first batch runs (1.5 s); the second document waits behind it
            gone = pool.submit(httpx.post, f"{srv.url}/summarize", timeout=0.3,
                               json={"inputs": "the second, gone", "parameters": {"max_length": 7}})
            time.sleep(0.1)
            full = _post(srv.url, {"inputs": ["a", "b", "c"]}, {})  # 1 waiting + 3 > --max-queue 3
            assert full.status_code == 429 and full.json()["type"] == "queue_full", full.text
            assert full.headers["retry-after"] == "1"
            with pytest.raises(httpx.ReadTimeout):
                gone.result()
            r = first.result()
        assert r.status_code == 504 and r.json()["type"] == "timeout"
        while not srv.scheduler.idle:  # the slowed batch ends
            time.sleep(0.05)
        slow.clear()
        metrics = _metrics(srv.url)
        assert metrics["led_flax_documents_cancelled_total"] == 1  # the gone client's document left the queue
        assert metrics["led_flax_errors_total{type=client_gone}"] == 1  # before its own timeout
        assert metrics["led_flax_errors_total{type=timeout}"] == 1
        good = _post(srv.url, {"inputs": "the third"}, {})
        assert good.status_code == 200
        assert ran == [1, 1]  # the first, the third: the gone client's document never ran

        # a second signal stops the server at once: the request whose batch runs is answered 503
        slow.set()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            running = pool.submit(_post, srv.url, {"inputs": "the fourth"}, {})
            while len(ran) < 3:  # its batch started (slowed)
                time.sleep(0.02)
            srv._uvicorn.handle_exit(signal.SIGTERM, None)  # what uvicorn's signal handler calls: drain
            srv._uvicorn.handle_exit(signal.SIGTERM, None)  # and again: stop now
            stopped = running.result()
        assert stopped.status_code == 503 and stopped.json()["type"] == "stopped", stopped.text
        assert stopped.headers["retry-after"]
        srv._thread.join(30)
        assert not srv._thread.is_alive() and srv.forced_by == signal.SIGTERM  # the command exits 143
    finally:
        slow.clear()
        srv.stop(30)
