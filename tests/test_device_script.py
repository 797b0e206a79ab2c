"""bench/device.py, the prepared accelerator run, at tiny shapes on this CPU: every row runs (or, for
splash attention off a TPU, says why not), parity with transformers holds on the device it runs on,
and the script imports nothing of what a GPU machine's environment may lack (our other
dependencies are blocked while it runs). Oracle for parity: transformers on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import NEUTRAL_CWD, ROOT, xla_flags

SCRIPT = os.path.join(ROOT, "bench", "device.py")
# what `pip install --no-deps` of our wheel leaves missing on a machine with jax, flax, optax, orbax,
# numpy, torch, transformers, tokenizers, safetensors and pyyaml
ABSENT = ("grain", "rouge_score", "tensorboardX", "aclsum", "datasets")
RUN = f"""
import importlib.abc, runpy, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ABSENT!r}:
            raise ImportError("not installed on the device machine: " + name)
sys.meta_path.insert(0, Absent())
sys.argv = [{SCRIPT!r}] + sys.argv[1:]
runpy.run_path({SCRIPT!r}, run_name="__main__")
"""


def test_the_device_script_runs_every_row_at_tiny_shapes(tmp_path):
    env = {**os.environ, "XLA_FLAGS": xla_flags(), "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-c", RUN, "--tiny", "--out", str(tmp_path)], capture_output=True, text=True,
                       cwd=NEUTRAL_CWD, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {row["row"]: row for row in json.loads((tmp_path / "results.json").read_text())}
    assert list(rows) == ["versions", "parity float32", "parity bfloat16", "encoder", "train 128", "generate",
                          "splash encoder", "splash train 128"]
    assert rows["versions"]["jax"] and rows["versions"]["backend"] == "cpu"
    for name in ("parity float32", "parity bfloat16", "encoder", "train 128", "generate"):
        assert rows[name]["status"] == "ok", (name, rows[name]["status"], r.stderr[-3000:])
    assert float(rows["parity float32"]["max rel err"]) < 1e-4 and rows["parity float32"]["ids equal"] == "100%"
    assert float(rows["parity bfloat16"]["max rel err"]) < 3e-2
    for name in ("encoder", "train 128", "generate"):
        assert rows[name]["led-flax s"] > 0 and rows[name]["reference s"] > 0 and rows[name]["led-flax MFU"] == "unknown"
    for name in ("splash encoder", "splash train 128"):
        assert rows[name]["status"] == "skipped: Unavailable: splash attention rows need a TPU backend; this one is cpu"
    table = (tmp_path / "results.md").read_text()
    assert "| row | status | led-flax s | reference s | speed-up |" in table and "| generate | ok |" in table
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_the_flop_counts_follow_the_architecture():
    """The model's own FLOP count, checked against a hand count for one layer of each kind."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import device
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    from led_flax import LEDConfig
    c = LEDConfig(vocab_size=10, d_model=4, encoder_layers=1, decoder_layers=1, encoder_attention_heads=1,
                  decoder_attention_heads=1, encoder_ffn_dim=8, decoder_ffn_dim=8, attention_window=2,
                  max_encoder_position_embeddings=16, max_decoder_position_embeddings=8)
    # per token: projections 8*16, ffn 4*4*8, band 4*4*(2+1+1), global rows 4*4*1
    assert device.encoder_flops(c, 3) == 3 * (128 + 128 + 64 + 16)
    # t=2, n=3: 12*16*2 + 4*16*3 + 4*4*4 + 4*4*2*3 + 4*4*8*2 = 384 + 192 + 64 + 96 + 256; head 2*4*10*2
    assert device.decoder_flops(c, 3, 2) == 992 + 160
