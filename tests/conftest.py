"""Shared fixtures: tiny random LED checkpoints built with transformers itself, the reference."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile

# The suite tests what users install: `led_flax` from site-packages (a wheel in CI, or an editable
# install while developing), never the checkout's folders put first on the path (by `python -m
# pytest` from the root, say): installed, `led_flax.train` and `led_flax.convert` exist; in the
# checkout's `led_flax/` folder they do not. Subprocesses start in NEUTRAL_CWD, so that `python -m`
# and `python -c` do not put the checkout first either.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
_kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != ROOT]
if _kept:
    os.environ["PYTHONPATH"] = os.pathsep.join(_kept)
else:
    os.environ.pop("PYTHONPATH", None)
NEUTRAL_CWD = os.path.join(tempfile.gettempdir(), "led-flax-tests-cwd")  # empty: nothing to import there
os.makedirs(NEUTRAL_CWD, exist_ok=True)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests compile many tiny programs, so compilation, not running them, is most of their time. XLA's
# CPU backend with LLVM at -O0 compiles them about a quarter faster (tests/test_half.py: 43 s -> 31 s);
# the programs, their buffers and memory analysis are the same, their floats equal within rounding.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(*flags: str) -> str:
    """XLA_FLAGS for a test process: `flags` and FAST_COMPILE."""
    return " ".join(f for f in (*flags, FAST_COMPILE) if f)


# The XLA:CPU flags `led-flax train` sets (train/cli.py) change how some sums are fused, so a float
# can differ in its last bit: tests that run training in this process and through the command line
# (a killed run resumed bit for bit against an uninterrupted one) need the same flags in both.
from led_flax.train.cli import configure_xla  # noqa: E402

configure_xla()
os.environ["XLA_FLAGS"] = xla_flags(os.environ.get("XLA_FLAGS", ""))  # read when JAX starts its backend
transformers.logging.set_verbosity_error()

VOCAB = 97
TINY = dict(vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
            decoder_attention_heads=4, encoder_ffn_dim=24, decoder_ffn_dim=20, attention_window=[4, 8],
            max_encoder_position_embeddings=80, max_decoder_position_embeddings=24, dropout=0.0,
            pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


def hf_config(**overrides):
    return transformers.LEDConfig(**{**TINY, **overrides})


def randomize(model, seed: int, std: float = 0.3):
    """Weights far from init (LayerNorms and biases too), so every parameter matters to the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith("layer_norm.weight") or name.endswith("layernorm_embedding.weight") else 0.0
            p.copy_(base + torch.randn(p.shape, generator=g) * (std if p.dim() > 1 else 0.1))
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn(model.final_logits_bias.shape, generator=g) * 0.1)
    return model.eval()


class SequenceClassificationReference(torch.nn.Module):
    """transformers 4.x's LEDForSequenceClassification, rebuilt from the parts transformers 5 still ships:
    the decoder state at the input's last eos, through LEDClassificationHead."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.led.modeling_led import LEDClassificationHead
        self.config = config
        self.led = transformers.LEDModel(config)
        self.classification_head = LEDClassificationHead(config.d_model, config.d_model, config.num_labels,
                                                         config.classifier_dropout)

    def forward(self, input_ids, labels=None, **kwargs):
        out = self.led(input_ids=input_ids, **kwargs)
        hidden = out.last_hidden_state
        eos_mask = input_ids.eq(self.config.eos_token_id)
        pooled = hidden[eos_mask, :].view(hidden.size(0), -1, hidden.size(-1))[:, -1, :]
        logits = self.classification_head(pooled)
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = torch.nn.functional.mse_loss(logits.squeeze(-1), labels.squeeze().to(logits.dtype))
            elif labels.dtype in (torch.long, torch.int):
                loss = torch.nn.functional.cross_entropy(logits.view(-1, self.config.num_labels), labels.view(-1))
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return out, logits, loss

    def save_4x(self, directory):
        """A checkpoint as transformers 4.x wrote it: tied copies included."""
        from safetensors.torch import save_file
        os.makedirs(directory, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        state["led.encoder.embed_tokens.weight"] = state["led.shared.weight"].clone()
        state["led.decoder.embed_tokens.weight"] = state["led.shared.weight"].clone()
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
        cfg = self.config.to_dict()
        cfg["architectures"] = ["LEDForSequenceClassification"]
        cfg["torch_dtype"] = "float32"
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(cfg, f)


HEAD_CLASSES = {
    "base": lambda c: transformers.LEDModel(c),
    "conditional_generation": lambda c: transformers.LEDForConditionalGeneration(c),
    "question_answering": lambda c: transformers.LEDForQuestionAnswering(c),
    "sequence_classification": lambda c: SequenceClassificationReference(c),
}


def make_reference(head: str, directory, seed: int = 0, **overrides):
    """A random transformers model of `head`, saved to `directory`; returns the torch model."""
    torch.manual_seed(seed)
    model = randomize(HEAD_CLASSES[head](hf_config(**overrides)), seed)
    if head == "sequence_classification":
        model.save_4x(directory)
    else:
        model.save_pretrained(directory)
    return model


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|: a norm-relative error, meaningful where elements are near zero."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = ref.detach().double().numpy() if hasattr(ref, "detach") else np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = max(np.abs(ref).max(), 1e-30)
    return float(np.abs(ours - ref).max() / scale)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """One saved tiny checkpoint per head: {head: (directory, torch model)}."""
    out = {}
    for i, head in enumerate(HEAD_CLASSES):
        d = tmp_path_factory.mktemp(head)
        extra = {"num_labels": 3} if head == "sequence_classification" else {}
        out[head] = (str(d), make_reference(head, d, seed=i, **extra))
    return out


def aclsum_texts(limit: int | None = None) -> list[str]:
    """Full-text bodies of ACLSum papers (real long documents, with unicode)."""
    import glob
    import aclsum
    paths = sorted(glob.glob(os.path.join(os.path.dirname(aclsum.__file__), "dataset", "paper_jsons", "*.json")))
    texts = []
    for p in paths[:limit]:
        with open(p, encoding="utf-8") as f:
            paper = json.load(f)
        texts.append("\n\n".join(par["text"] for par in paper["pdf_parse"]["body_text"]))
    return texts


def make_tokenizer(directory, vocab_size: int = 600, texts=None):
    """A byte-level BPE trained on ACLSum text, saved through transformers' LEDTokenizer, as the
    released checkpoints ship theirs. Returns the transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    raw = os.path.join(str(directory), "raw")
    os.makedirs(raw, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts or aclsum_texts(20), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(raw)
    tok = transformers.LEDTokenizer(vocab=os.path.join(raw, "vocab.json"), merges=os.path.join(raw, "merges.txt"))
    tok.save_pretrained(str(directory))
    return transformers.LEDTokenizer.from_pretrained(str(directory))


def run_on_eight_devices(script: str, *args: str, timeout: int = 900) -> dict:
    """Runs tests/SCRIPT ARGS in a subprocess with 8 fake CPU devices; returns the JSON it prints after RESULT."""
    import subprocess
    env = {**os.environ, "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=8"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", script), *args], env=env, capture_output=True,
                         text=True, timeout=timeout, cwd=NEUTRAL_CWD)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A folder shared by the pytest-xdist workers of this run (their base temp folders' parent)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


def built_once(root: str, name: str, build) -> str:
    """ROOT/NAME, filled by build(directory) once: the first process to ask builds it under a lock (in
    a temporary folder renamed into place), the others wait, then read it."""
    directory = os.path.join(root, name)
    with open(directory + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isdir(directory):
            partial = directory + ".partial"
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            build(partial)
            os.rename(partial, directory)
    return directory


# Modules by their time on 2 cores, longest first (`pytest --durations`); the others follow in their own
# order. pytest-xdist (`--dist loadfile`) hands modules to whichever worker is free in this order, so the
# long ones start first and the short ones fill in at the end: longest-first scheduling, not a long
# module left alone on one worker while the other idles.
LONGEST_FIRST = ("test_train", "test_parity", "test_scan", "test_quantize", "test_sequence", "test_train_sharding",
                 "test_generation", "test_modeling", "test_readme", "test_summarize", "test_summarize_hosts",
                 "test_half", "test_generation_settings", "test_train_records", "test_device_script", "test_wheel",
                 "test_train_step", "test_inputs", "test_serve", "test_generation_values")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable
