"""Oracle: the params as saved, and the expected error. Our checkpoint directory checks config.json
against the saved shapes and every tensor against its recorded CRC-32: a damaged or edited
checkpoint is a CheckpointError naming the file and the fix, never wrong params, a
ScopeParamShapeError or a spray of tracebacks. Outputs are checked before the work; temporaries
left by killed writers are cleaned or named."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from tqdm import tqdm

from led_flax import convert
from led_flax.io import checkpoint
from led_flax.utils import trees
from led_flax.io.checkpoint import CheckpointError
from led_flax.utils.files import (HOST, StaleTemporaryWarning, WriteError, atomic_directory, stale_temporaries,
                                  write_atomic)

from conftest import NEUTRAL_CWD
from cli_helpers import assert_one_line_error, run_command, run_main, tiny_summarizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_summarizer(tmp_path_factory.mktemp("ckpt-errors"))


@pytest.fixture(scope="module")
def saved(tiny):
    return trees.flatten(checkpoint.load(tiny.ours, scan_layers=False).params)


def _copy(tiny, tmp_path, name="ckpt"):
    d = tmp_path / name
    shutil.copytree(tiny.ours, d)
    return d


def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, fragments", [
    ({"encoder_ffn_dim": 40}, ["shapes that differ: led/encoder/layers_0/fc1/bias: params (24,), config.json implies "
                               "(40,)"]),
    ({"decoder_layers": 3}, ["missing from params: led/decoder/layers_2/"]),
    ({"encoder_layers": 1, "attention_window": [8]}, ["in params but unused: led/encoder/layers_1/"]),
    ({"d_model": 32}, ["led/decoder/embed_positions/embedding: params (32, 16), config.json implies (32, 32)"]),
    ({"vocab_size": 400}, ["final_logits_bias: params (1, 300), config.json implies (1, 400)"]),
])
def test_a_config_that_does_not_fit_the_params_is_named_before_reading_them(tiny, tmp_path, capsys, changes, fragments):
    d = _copy(tiny, tmp_path)
    _edit_config(d, **changes)
    with pytest.raises(CheckpointError) as e:
        checkpoint.load(d)
    message = str(e.value)
    assert message.startswith(f"{d}/config.json does not fit the params saved beside it (")
    assert message.endswith("config.json was changed after the params were written: put back the one written with "
                            "them, or convert the checkpoint again")
    for fragment in fragments:
        assert fragment in message
    doc = tmp_path / "doc.txt"
    doc.write_text("a document")
    for argv in (["export", d, tmp_path / "hf"], ["summarize", "--model", d, "--quiet", doc]):
        r = run_main(capsys, *argv)
        assert_one_line_error(r, 2, argv[0], "does not fit the params saved beside it")
        assert "ScopeParamShapeError" not in r.err
    assert not (tmp_path / "hf").exists()


def _damaged_variants(params_dir):
    """(description, how) for every file of the params folder: cut to half, and one byte flipped."""
    for root, _, files in os.walk(params_dir):
        for f in sorted(files):
            path = os.path.join(root, f)
            if os.path.getsize(path) < 16:
                continue
            yield f"{os.path.relpath(path, params_dir)} cut", path, "cut"
            yield f"{os.path.relpath(path, params_dir)} flipped", path, "flip"


def test_a_damaged_params_file_is_an_error_or_changes_nothing(tiny, tmp_path, saved, capfd):
    """Every file cut in half, then every file with one byte flipped: the load raises CheckpointError
    or returns exactly the saved params (a file orbax does not read for them), never other params."""
    errors = 0
    for k, (what, path, how) in enumerate(_damaged_variants(os.path.join(tiny.ours, "params"))):
        d = tmp_path / f"v{k}"
        shutil.copytree(tiny.ours, d)
        target = os.path.join(d, os.path.relpath(path, tiny.ours))
        data = bytearray(open(target, "rb").read())
        if how == "cut":
            data = data[:len(data) // 2]
        else:
            data[len(data) // 2] ^= 0xFF
        open(target, "wb").write(bytes(data))
        try:
            params = trees.flatten(checkpoint.load(d, scan_layers=False).params)
        except CheckpointError as e:
            assert f"{d}/params is truncated or corrupt" in str(e) and "convert or export the checkpoint again" in str(e)
            errors += 1
            continue
        assert sorted(params) == sorted(saved), what
        for key, value in saved.items():
            assert np.asarray(params[key]).tobytes() == np.asarray(value).tobytes(), (what, key)
    assert errors >= 4
    assert "Event loop is closed" not in capfd.readouterr().err


def test_the_real_command_on_a_truncated_checkpoint_is_one_line(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    manifest = d / "params" / "manifest.ocdbt"  # cut short, orbax's readers used to spray "Event loop is closed"
    manifest.write_bytes(manifest.read_bytes()[:100])
    doc = tmp_path / "doc.txt"
    doc.write_text("a short document")
    r = run_command("summarize", "--model", d, doc, "--quiet", "--no-cache")
    assert_one_line_error(r, 2, "summarize", f"{d}/params is truncated or corrupt")
    assert "Event loop is closed" not in r.err and len(r.err.splitlines()) == 1, r.err


def test_a_damaged_marker_or_missing_params_is_named(tiny, tmp_path):
    d = _copy(tiny, tmp_path)
    marker = json.loads((d / "led_flax.json").read_text())
    (d / "led_flax.json").write_text('{"format": "led-flax", "he')
    with pytest.raises(CheckpointError, match=rf"{d}/led_flax.json is not valid JSON .*convert or export it again"):
        checkpoint.load(d)
    (d / "led_flax.json").write_text('["led-flax"]')
    with pytest.raises(CheckpointError, match="is not a led-flax marker"):
        checkpoint.load(d)
    # a checkpoint written before markers held CRC-32s still loads, unchecked
    (d / "led_flax.json").write_text(json.dumps({k: v for k, v in marker.items() if k != "param_crc32"}))
    assert checkpoint.load(d).head == "conditional_generation"
    shutil.rmtree(d / "params")
    with pytest.raises(CheckpointError, match="has no params/ folder"):
        checkpoint.load(d)


def test_export_checks_its_destination_before_reading(tiny, tmp_path, capsys, monkeypatch):
    damaged = _copy(tiny, tmp_path, "damaged")
    _edit_config(damaged, d_model=32)  # would fail on reading: every refusal below comes first
    (tmp_path / "hf").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [([tmp_path / "hf"], "already exists; pass overwrite=True (--overwrite) to replace it"),
             ([tmp_path / "afile", "--overwrite"], "is a file; name a directory to write"),
             ([tmp_path / "afile" / "hf"], "afile is a file, not a folder"),
             ([damaged, "--overwrite"], "is the source itself; write the result to another directory")]
    for argv, fragment in cases:
        assert_one_line_error(run_main(capsys, "export", damaged, *argv), 2, "export", fragment)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    import tempfile
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    r = run_main(capsys, "export", damaged, tmp_path / "new")
    assert_one_line_error(r, 2, "export", f"cannot write {tmp_path / 'new'}: Read-only file system")
    r = run_main(capsys, "convert", tiny.hf, tmp_path / "new")
    assert_one_line_error(r, 2, "convert", f"cannot write {tmp_path / 'new'}: Read-only file system")


def test_export_overwrite_swaps_only_a_complete_directory(tiny, tmp_path, monkeypatch):
    out = convert.export_checkpoint(tiny.ours, tmp_path / "hf")
    before = {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)}

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    from led_flax.convert import directories
    monkeypatch.setattr(directories, "to_hf", broken)
    with pytest.raises(WriteError, match=f"cannot write {out}: No space left on device; free some space"):
        convert.export_checkpoint(tiny.ours, out, overwrite=True)
    assert {f: open(os.path.join(out, f), "rb").read() for f in os.listdir(out)} == before
    assert stale_temporaries(out) == []


def test_the_convert_bar_knows_its_total(tiny, tmp_path):
    with tqdm(file=io.StringIO()) as bar:
        convert.convert_checkpoint(tiny.hf, tmp_path / "ours", progress=bar)
    assert bar.total == bar.n == len(trees.flatten(checkpoint.load(tmp_path / "ours", False).params))


# ------------------------------------------------------------------------------------------ temporaries
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_removed_and_the_others_named(tiny, tmp_path):
    target = tmp_path / "ours"
    shutil.copytree(tiny.ours, target)
    dead = _dead_pid()
    stale = [tmp_path / f".ours.tmp-{dead}@{HOST}@0a1b2c3d", tmp_path / f".ours.tmp-{dead}-legacy12",
             tmp_path / f".ours.old-{dead}@{HOST}@00aa11bb"]
    live = tmp_path / f".ours.tmp-{os.getpid()}@{HOST}@deadbeef"
    remote = tmp_path / ".ours.tmp-1@another-host@cafe0001"
    for d in stale + [live, remote]:
        d.mkdir()
        (d / "params").mkdir()
    assert {t.path for t in stale_temporaries(target)} == {str(p) for p in stale + [live, remote]}
    with pytest.warns(StaleTemporaryWarning, match=rf"{remote} was left by a writer on host another-host"):
        with atomic_directory(target, overwrite=True) as tmp:
            open(os.path.join(tmp, "x"), "w").close()
    assert not any(p.exists() for p in stale)
    assert live.exists() and remote.exists()  # a running writer's, and another host's
    assert os.listdir(target) == ["x"]

    # a swap killed between its two renames: the old version is the only copy, and is named
    shutil.rmtree(target)
    shutil.rmtree(remote)
    old = tmp_path / f".ours.old-{dead}@{HOST}@11223344"
    old.mkdir()
    with pytest.warns(StaleTemporaryWarning, match=rf"{target} is missing and {old} holds its previous version"):
        with atomic_directory(target):
            pass
    assert old.exists()


def test_a_killed_writer_leaves_a_temporary_the_next_writer_removes(tmp_path):
    target = tmp_path / "ckpt"
    code = ("import os, signal, sys; from led_flax.utils.files import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as tmp:\n"
            "    open(os.path.join(tmp, 'half'), 'w').close(); os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], cwd=NEUTRAL_CWD, capture_output=True)
    assert r.returncode == -9
    left = stale_temporaries(target)
    assert len(left) == 1 and left[0].stale and left[0].host == HOST and os.path.basename(left[0].path).startswith(
        ".ckpt.tmp-")
    with atomic_directory(target):
        pass
    assert stale_temporaries(target) == [] and target.is_dir()

    # files too
    (tmp_path / f".notes.txt.tmp-{_dead_pid()}@{HOST}@abcdefgh").write_text("half")
    write_atomic(tmp_path / "notes.txt", "whole")
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "notes.txt"]


def test_write_errors_name_the_path_and_the_fix(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError) as e:
        write_atomic(tmp_path / "a.txt", "text")
    assert str(e.value) == (f"cannot write {tmp_path / 'a.txt'}: No space left on device; free some space on that "
                            f"filesystem, or write somewhere else")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_atomic(tmp_path / "a.txt", "text")
