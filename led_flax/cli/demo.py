"""`led-flax demo`: the offline main job on an embedded default. It trains the shipped config
`tiny-aclsum` on the CPU, summarizes held-out ACLSum papers with `led_flax.summarize` and scores them
with ROUGE against lead-3; `--convert` instead round-trips a random LED through an HF checkpoint.
The training package loads only when the demo runs."""

from __future__ import annotations

import os
import tempfile
import textwrap
import time
import warnings

from tqdm import tqdm

from led_flax import convert
from led_flax.io import pretrained
from led_flax.summarization import InputWarning, SummarizeOptions, SummaryReport, summarize

from .usage import UsageError

DEMO_CONFIG = "tiny-aclsum"
# the demo's generation settings; max_length is the tiny model's decoder positions
DEMO_GENERATION = {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 2.0, "max_length": 128}


def cmd_demo(args) -> int:
    """The offline main job on the embedded default: train the shipped config `tiny-aclsum` (a small LED
    from scratch on the ACLSum papers) on the CPU, summarize held-out papers with `led_flax.summarize`, and
    score them with ROUGE against the lead-3 baseline."""
    if args.convert:
        return cmd_demo_convert(args)
    from led_flax.train import cli as train_cli
    from led_flax.train import config as config_lib
    from led_flax.train import data as data_lib
    from led_flax.train import loop
    from led_flax.train.evaluate import lead_sentences, rouge

    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir} is a file; name a folder")
    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-demo-")
    out = os.path.join(work, "tiny-aclsum")
    cfg = config_lib.load(DEMO_CONFIG, [f"output_dir={out}"] + ([f"steps={args.steps}"] if args.steps else []))
    print(f"1. training the shipped config {DEMO_CONFIG} into {out} (a few minutes on a laptop CPU)", flush=True)
    train_cli.configure_xla()
    start = time.perf_counter()
    last = loop.run(cfg, progress=not args.quiet)
    losses = "".join(f", {name} {last[k]:.3f}" for k, name in (("loss", "training loss"), ("val_loss", "validation loss"))
                     if k in last)
    print(f"   trained to step {cfg.steps} in {time.perf_counter() - start:.0f} s{losses}", flush=True)

    papers = data_lib.load_examples(cfg.data, "test", limit=args.documents)
    final = os.path.join(out, "final")
    summaries_path = os.path.join(work, "summaries.jsonl")
    settings = ", ".join(f"{k}={v}" for k, v in DEMO_GENERATION.items())
    print(f"2. summarizing {len(papers)} held-out ACLSum test papers with {final} ({settings}) into "
          f"{summaries_path}", flush=True)
    options = SummarizeOptions(generation=DEMO_GENERATION, output=summaries_path, output_format="jsonl",
                               progress_bar=not args.quiet, compilation_cache=None)
    report = SummaryReport()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # papers are longer than the tiny model's 2,048 positions
        summaries = summarize([e.document for e in papers], pretrained.load(final), options,
                              names=[e.id for e in papers], report=report)
    print(f"   {report.describe()}")

    abstracts = [e.summary for e in papers]
    ours = rouge(summaries, abstracts)
    lead = rouge([lead_sentences(e.document) for e in papers], abstracts)
    print(f"3. ROUGE F1 on {len(papers)} held-out ACLSum test papers (reference: the abstract)")
    print(f"   {'':22s} {'ROUGE-1':>8s} {'ROUGE-2':>8s} {'ROUGE-L':>8s}")
    for name, r in (("tiny-aclsum (ours)", ours), ("lead-3 baseline", lead)):
        print(f"   {name:22s} {r['rouge1']:8.2f} {r['rouge2']:8.2f} {r['rougeL']:8.2f}")
    print(f"4. held-out paper {papers[0].id}")
    for label, text in (("our summary", summaries[0]), ("its abstract", abstracts[0])):
        print(textwrap.fill(" ".join(text.split()), width=100, initial_indent=f"   {label + ':':14s}",
                            subsequent_indent=" " * 17))
    print(f"   the model: {final} (led-flax), {os.path.join(out, 'hf')} (transformers); "
          f"metrics: {os.path.join(out, 'metrics.jsonl')}")
    return 0


def cmd_demo_convert(args) -> int:
    """Offline, on an embedded default: a small random LED written as an HF checkpoint, converted to
    led-flax, checked bit for bit, then a jitted encoder pass over a long input."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from led_flax.utils.trees import flatten
    from led_flax import LEDConfig, LEDForConditionalGeneration, init_params
    from led_flax.io import checkpoint

    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir} is a file; name a folder")
    work = args.workdir or tempfile.mkdtemp(prefix="led-flax-demo-")
    config = LEDConfig(vocab_size=1024, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, attention_window=256,
                       max_encoder_position_embeddings=8192, max_decoder_position_embeddings=256)
    params = init_params(LEDForConditionalGeneration(config), jax.random.PRNGKey(0))
    hf_dir, ours_dir = os.path.join(work, "hf"), os.path.join(work, "led-flax")
    convert.to_hf(config, params, hf_dir)
    print(f"1. wrote a random LED as an HF checkpoint: {hf_dir}")
    with tqdm(desc="convert tensors", unit="tensor", disable=args.quiet) as bar:
        done = convert.convert_checkpoint(hf_dir, ours_dir, overwrite=True, progress=bar)
    ckpt = checkpoint.load(done.path)
    a, b = flatten(jax.device_get(params)), flatten(ckpt.params)
    exact = sorted(a) == sorted(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)
    print(f"2. converted it to led-flax ({done.path}) and reloaded: {len(a)} tensors, bit-exact: {exact}")

    n = 8192
    ids = np.random.default_rng(0).integers(3, config.vocab_size, (1, n))
    glob = np.zeros((1, n), np.int32)
    glob[0, 0] = 1
    model = LEDForConditionalGeneration(ckpt.config)
    encode = jax.jit(lambda p, i, g: model.apply({"params": p}, i, global_attention_mask=g, num_global_slots=1,
                                                 method="encode").last_hidden_state)
    t0 = time.perf_counter()
    out = encode(ckpt.params, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode(ckpt.params, jnp.asarray(ids), jnp.asarray(glob)).block_until_ready()
    print(f"3. encoded {n} tokens (window {config.attention_window[0]}, one global token): output "
          f"{tuple(out.shape)}, {first:.1f} s with compilation, {time.perf_counter() - t0:.2f} s warm")
    return 0 if exact and bool(jnp.isfinite(out).all()) else 1
