"""The server under load, against the same requests one at a time and against offline `summarize`, in
one run, on this machine.

A led-base-16384-shaped checkpoint (6+6 layers, d_model 768, vocab 50265) with random weights and a
byte-level BPE trained on ACLSum, converted to led-flax; ACLSum papers cut to 1,024 tokens, one
document a request. Each document generates exactly `--new-tokens` tokens (min_length = max_length),
so every row does the same work. Three ways:
  server:   `led-flax serve --max-batch-size 8`, 16 concurrent clients;
  single:   `led-flax serve --max-batch-size 1`, one client, one request at a time;
  offline:  `led_flax.summarize(..., SummarizeOptions(batch_size=8))` over the same documents.
Each starts warm (its programs compiled before the clock starts). Reported: documents/s, generated
tokens/s, p50 and p99 latency (per request; offline: none), and the ratios.

    python bench/serve.py --cases greedy beam4
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from led_flax.model.config import RELEASED

BASE = {**RELEASED["allenai/led-base-16384"], "dropout": 0.0}
TOKENS = 1024
CASES = {"greedy": {}, "beam4": {"num_beams": 4}}


def build(work: str) -> tuple[str, list[str]]:
    """The led-flax checkpoint (made once in `work`) and the documents."""
    ours = os.path.join(work, "ours")
    docs_file = os.path.join(work, "docs.json")
    if not os.path.exists(ours):
        import glob

        import aclsum
        import torch
        import transformers
        from tokenizers import ByteLevelBPETokenizer

        from led_flax.convert import convert_checkpoint
        paths = sorted(glob.glob(os.path.join(os.path.dirname(aclsum.__file__), "dataset", "paper_jsons", "*.json")))
        texts = []
        for p in paths:
            with open(p, encoding="utf-8") as f:
                paper = json.load(f)
            texts.append("\n\n".join(par["text"] for par in paper["pdf_parse"]["body_text"]))
        hf, raw = os.path.join(work, "hf"), os.path.join(work, "raw")
        os.makedirs(raw, exist_ok=True)
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(texts, vocab_size=BASE["vocab_size"], min_frequency=2,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        bpe.save_model(raw)
        tok = transformers.LEDTokenizer(vocab=os.path.join(raw, "vocab.json"), merges=os.path.join(raw, "merges.txt"))
        tok.save_pretrained(hf)
        torch.manual_seed(0)
        transformers.logging.set_verbosity_error()
        transformers.LEDForConditionalGeneration(transformers.LEDConfig(**BASE)).save_pretrained(hf)
        convert_checkpoint(hf, ours)
        docs = []
        for text in texts:  # each paper cut to 1,024 tokens (special tokens included)
            ids = tok(text, truncation=True, max_length=TOKENS)["input_ids"]
            if len(ids) == TOKENS:
                docs.append(tok.decode(ids[1:-1]))
        with open(docs_file, "w", encoding="utf-8") as f:
            json.dump(docs, f)
    with open(docs_file, encoding="utf-8") as f:
        return ours, json.load(f)


class Serve:
    def __init__(self, model: str, cache: str, batch: int):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "led_flax.cli", "serve", "--model", model, "--port", "0", "--cache-dir", cache,
             "--buckets", str(TOKENS), "--max-batch-size", str(batch), "--max-wait-ms", "10", "--max-queue", "1024",
             "--timeout-s", "3600"], stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stderr], daemon=True).start()
        while not any("ready:" in x for x in self.lines):
            if self.proc.poll() is not None:
                raise SystemExit("the server exited:\n" + "".join(self.lines))
            time.sleep(0.1)
        self.url = re.search(r"listening on (http://\S+);", "".join(self.lines)).group(1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=600)


def _load(url: str, docs: list[str], parameters: dict, clients: int) -> dict:
    import httpx

    def one(doc):
        start = time.perf_counter()
        r = httpx.post(f"{url}/summarize", json={"inputs": doc, "parameters": parameters}, timeout=3600)
        r.raise_for_status()
        return time.perf_counter() - start, r.json()[0]["generated_tokens"]
    one(docs[0])  # warm: the first call of a program pays its one-time costs
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, docs))
    wall = time.perf_counter() - start
    latency = np.array([r[0] for r in results])
    tokens = sum(r[1] for r in results)
    return {"documents": len(docs), "seconds": wall, "docs_s": len(docs) / wall, "tok_s": tokens / wall,
            "p50": float(np.percentile(latency, 50)), "p99": float(np.percentile(latency, 99))}


OFFLINE = """
import json, sys, time
from led_flax import SummarizeOptions, SummaryReport, summarize
model, docs_file, parameters, cache = sys.argv[1:]
docs, parameters = json.load(open(docs_file)), json.loads(parameters)
options = SummarizeOptions(batch_size=8, buckets=({tokens},), progress_bar=False, compilation_cache=cache,
                           generation=parameters)
summarize(docs[:8], model, options)  # warm
report = SummaryReport()
start = time.perf_counter()
summarize(docs, model, options, report=report)
wall = time.perf_counter() - start
print(json.dumps({{"documents": len(docs), "seconds": wall, "docs_s": len(docs) / wall,
                   "tok_s": report.generated_tokens / wall}}))
"""


def offline(model: str, docs: list[str], parameters: dict, cache: str, work: str) -> dict:
    path = os.path.join(work, "offline-docs.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(docs, f)
    r = subprocess.run([sys.executable, "-c", OFFLINE.format(tokens=TOKENS), model, path, json.dumps(parameters),
                        cache], capture_output=True, text=True, cwd=tempfile.gettempdir())
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--requests", type=int, default=200, help="requests to the server and offline documents")
    p.add_argument("--single", type=int, default=48, help="requests sent one at a time")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "led-flax-bench-serve"))
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    model, docs = build(args.workdir)
    cache = os.path.join(args.workdir, "jax-cache")
    n = args.new_tokens + 1  # the lengths count the decoder start token
    print(f"{len(docs)} ACLSum papers of {TOKENS} tokens; {args.new_tokens} new tokens each\n")
    print("| case | way | documents | docs/s | generated tok/s | p50 s | p99 s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case in args.cases:
        parameters = {"max_length": n, "min_length": n, **CASES[case]}
        picked = [docs[k % len(docs)] for k in range(args.requests)]
        rows = {}
        server = Serve(model, cache, 8)
        try:
            rows["server"] = _load(server.url, picked, parameters, 16)
        finally:
            server.stop()
        server = Serve(model, cache, 1)
        try:
            rows["single"] = _load(server.url, picked[:args.single], parameters, 1)
        finally:
            server.stop()
        rows["offline"] = offline(model, picked, {**parameters}, cache, args.workdir)
        for way, r in rows.items():
            lat = f"{r['p50']:.2f} | {r['p99']:.2f}" if "p50" in r else "- | -"
            print(f"| {case} | {way} | {r['documents']} | {r['docs_s']:.3f} | {r['tok_s']:.1f} | {lat} |", flush=True)
        print(f"| {case} | server / single | | {rows['server']['docs_s'] / rows['single']['docs_s']:.2f}x | | | |")
        print(f"| {case} | server / offline | | {rows['server']['docs_s'] / rows['offline']['docs_s']:.2f}x | | | |",
              flush=True)


if __name__ == "__main__":
    main()
