"""Summarizing across processes, timed: two `led-flax summarize` processes of one job, each pinned to
one core (`taskset`), beside one process on both cores, on the same documents, in one run.

A led-base-shaped checkpoint with random weights (its tokenizer a byte-level BPE trained on ACLSum),
16 ACLSum papers cut to 4,096 tokens, greedy search with 64 new tokens (min = max length), batch 4,
the compilation cache warmed first. Per process: its documents, padded tokens, seconds of
generation (its report) and finish time (wall clock from the job's start).

    python bench/hosts.py [--workdir DIR] [--documents 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time


def _prepare(work: str, documents: int) -> str:
    """The checkpoint (ours) and the documents' jsonl in `work`; returns the jsonl path."""
    import transformers

    from led_flax import convert
    from led_flax.model.config import RELEASED
    from led_flax.train.config import DataConfig
    from led_flax.train.data import load_examples, train_tokenizer

    papers = [e.document for e in load_examples(DataConfig(), "train")]
    hf, ours = os.path.join(work, "hf"), os.path.join(work, "ours")
    if not os.path.isdir(ours):
        tokenizer = train_tokenizer(papers, os.path.join(work, "tokenizer"), vocab_size=50265)
        transformers.LEDForConditionalGeneration(transformers.LEDConfig(**RELEASED["allenai/led-base-16384"])
                                                 ).save_pretrained(hf)
        for name in os.listdir(os.path.join(work, "tokenizer")):
            os.replace(os.path.join(work, "tokenizer", name), os.path.join(hf, name))
        convert.convert_checkpoint(hf, ours)
    from led_flax.io import LEDTokenizer
    tokenizer = LEDTokenizer.from_pretrained(ours)
    docs = os.path.join(work, "docs.jsonl")
    with open(docs, "w") as f:
        for i, paper in enumerate(papers[:documents]):
            ids = tokenizer.encode(paper, add_special_tokens=False)[:4090]
            f.write(json.dumps({"id": f"paper-{i}", "text": tokenizer.decode(ids)}) + "\n")
    return docs


def _command(work: str, docs: str, out: str, cache: str) -> list[str]:
    return [sys.executable, "-m", "led_flax.cli", "summarize", "--model", os.path.join(work, "ours"), "--jsonl", docs,
            "--out", out, "--format", "jsonl", "--batch-size", "4", "--num-beams", "1", "--max-length", "65",
            "--min-length", "65", "--quiet", "--cache-dir", cache]


def _report(err: str) -> dict:
    line = next((ln for ln in err.splitlines() if " documents" in ln and "buckets" in ln), "")
    buckets = re.search(r"buckets (\{[^}]*\})", line)
    seconds = re.search(r"([\d.]+) s$", line)
    counts = json.loads(re.sub(r"(\d+):", r'"\1":', buckets.group(1))) if buckets else {}
    return {"documents": sum(counts.values()), "padded tokens": sum(int(b) * 4 * -(-n // 4) for b, n in counts.items()),
            "generation s": float(seconds.group(1)) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir")
    parser.add_argument("--documents", type=int, default=16)
    args = parser.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-hosts-")
    os.makedirs(work, exist_ok=True)
    docs = _prepare(work, args.documents)
    cache = os.path.join(work, "jax-cache")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}

    warm = subprocess.run(["taskset", "-c", "0"] + _command(work, docs, os.path.join(work, "warm.jsonl"), cache),
                          capture_output=True, text=True, env=env)
    assert warm.returncode == 0, warm.stderr[-3000:]

    rows = []
    out_one = os.path.join(work, "one.jsonl")
    start = time.perf_counter()
    one = subprocess.run(["taskset", "-c", "0,1"] + _command(work, docs, out_one, cache), capture_output=True,
                         text=True, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    rows.append({"run": "one process, cores 0-1", "process": 0, **_report(one.stderr),
                 "finish s": round(time.perf_counter() - start, 1)})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_two = os.path.join(work, "two.jsonl")
    start = time.perf_counter()
    procs = [subprocess.Popen(["taskset", "-c", str(i)] + _command(work, docs, out_two, cache) + [
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env) for i in range(2)]
    finished = [None, None]
    errs = ["", ""]
    while any(f is None for f in finished):
        for i, p in enumerate(procs):
            if finished[i] is None and p.poll() is not None:
                finished[i] = time.perf_counter() - start
                errs[i] = p.stderr.read()
        time.sleep(0.05)
    for i, p in enumerate(procs):
        assert p.returncode == 0, errs[i][-3000:]
        rows.append({"run": "two processes, one core each", "process": i, **_report(errs[i]),
                     "finish s": round(finished[i], 1)})
    same = open(out_one, "rb").read() == open(out_two, "rb").read()

    keys = ["run", "process", "documents", "padded tokens", "generation s", "finish s"]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    print(f"\nthe two-process output equals the one-process output byte for byte: {same}")


if __name__ == "__main__":
    main()
