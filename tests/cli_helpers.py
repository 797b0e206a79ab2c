"""What the CLI tests share: a tiny summarization checkpoint (HF and led-flax, with a tokenizer), and
calls of `led-flax` in-process or in a subprocess that return (exit status, stdout, stderr)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys

from conftest import NEUTRAL_CWD


@dataclasses.dataclass(frozen=True)
class Tiny:
    hf: str  # an HF LED directory with tokenizer.json and generation_config.json
    ours: str  # the same model as a led-flax checkpoint


def tiny_summarizer(directory, seed: int = 0) -> Tiny:
    """A random summarization LED small enough to compile in seconds, in both formats."""
    import torch
    import transformers

    from led_flax import convert
    from conftest import hf_config, make_tokenizer, randomize

    hf = os.path.join(str(directory), "hf")
    tok = make_tokenizer(hf, vocab_size=300)
    config = hf_config(vocab_size=len(tok), d_model=16, attention_window=[8, 8], max_encoder_position_embeddings=64,
                       max_decoder_position_embeddings=32, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       decoder_start_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    randomize(transformers.LEDForConditionalGeneration(config), seed, std=0.2).save_pretrained(hf)
    ours = convert.convert_checkpoint(hf, os.path.join(str(directory), "ours")).path
    return Tiny(hf=hf, ours=ours)


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run_main(capsys, *argv) -> Result:
    """`led_flax.cli(argv)` in this process."""
    from led_flax.cli import main
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_command(*argv, stdin: str | bytes | None = None, env=None, timeout: int = 300) -> Result:
    """The real `led-flax` command (`python -m led_flax.cli`) in a subprocess."""
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    r = subprocess.run([sys.executable, "-m", "led_flax.cli", *map(str, argv)], capture_output=True, input=data,
                       cwd=NEUTRAL_CWD, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}, timeout=timeout)
    return Result(r.returncode, r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace"))


def assert_one_line_error(result: Result, code: int, command: str, *fragments: str) -> str:
    """The result is exit status `code` with one `led-flax COMMAND: error: ...` line naming every
    fragment, and no traceback. Returns the line."""
    assert result.code == code, (result.code, result.err[-3000:])
    assert "Traceback" not in result.err and "Traceback" not in result.out, result.err[-3000:]
    lines = [ln for ln in result.err.splitlines() if ln.startswith(f"led-flax {command}: error: ")]
    assert len(lines) == 1, result.err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@contextlib.contextmanager
def small_tmpfs(path, size: str):
    """A tmpfs of `size` (mount's size=, such as "300k") mounted at `path` for the block; the test is
    skipped, with the reason, where it cannot be mounted (mounting needs CAP_SYS_ADMIN: root alone
    is not enough in some containers). Yields a function that resizes it (`mount -o remount`)."""
    import pytest

    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill ({(r.stderr or r.stdout).strip() or 'mount failed'})")

    def resize(new_size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True, capture_output=True)
    try:
        yield resize
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path, leave: int = 0) -> None:
    """Fills the filesystem of folder `path` but for about `leave` bytes."""
    free = os.statvfs(str(path)).f_bavail * os.statvfs(str(path)).f_frsize
    with open(os.path.join(str(path), "fill"), "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(free - leave, 0))
