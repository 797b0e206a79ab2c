"""Oracle: the run's records as they were, and the expected message. A rerun of `led-flax train` checks
the resume before it touches a record; a config that does not fit the checkpoints is one line
naming the tensors; an unreadable latest checkpoint is set aside and the one before resumed, with a
warning; steps at or below the checkpoint's step says so; a full or read-only disk, an interrupt
and a bad output_dir are one line each."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil

import pytest

from conftest import aclsum_texts
from train_helpers import TINY_LED, tiny_config, write_config

from led_flax.train import data as data_lib
from led_flax.train.checkpoints import Checkpoints, ResumeError
from led_flax.train.loop import run

from cli_helpers import assert_one_line_error, run_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run of two steps, a checkpoint after each: (its output_dir, its tokenizer)."""
    tok = str(tmp_path_factory.mktemp("records-tokenizer") / "tok")
    data_lib.train_tokenizer(aclsum_texts(20), tok, vocab_size=400)
    out = tmp_path_factory.mktemp("records-run") / "run"
    run(_config(out, tok, 2), progress=False)
    return str(out), tok


def _config(out, tok, steps, **sections):
    return tiny_config(out, tok, steps=steps, eval={"every_steps": -1}, checkpoint={"every_steps": 1}, **sections)


def _copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    return str(out)


def _records(out) -> dict:
    """Every file of the run but the checkpoints and the exports, with its bytes."""
    found = {}
    for root, dirs, files in os.walk(out):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in {os.path.join(out, x) for x in
                                                                  ("checkpoints", "final", "hf", "tokenizer")}]
        for f in files:
            path = os.path.join(root, f)
            found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


def _damage(out, step, what):
    """Cuts checkpoint `step`'s parameter metadata, or its largest data file, to a few bytes."""
    state = os.path.join(out, "checkpoints", str(step), "state")
    if what == "metadata":
        path = os.path.join(state, "_METADATA")
    else:
        path = max((os.path.join(r, f) for r, _, fs in os.walk(state) for f in fs), key=os.path.getsize)
    with open(path, "r+b") as f:
        f.truncate(64)


@pytest.mark.parametrize("led, fragment", [
    ({"encoder_ffn_dim": 48}, "led/encoder/scan_0_0/fc1/bias: saved (1, 64), this config (1, 48)"),
    ({"d_model": 16}, "led/decoder/embed_positions/embedding: saved (32, 32), this config (32, 16)"),
    ({"decoder_layers": 2}, "not in the checkpoint: led/decoder/"),
])
def test_a_config_that_does_not_fit_the_checkpoints_leaves_every_record(trained, tmp_path, capsys, led, fragment):
    out = _copy(trained, tmp_path)
    before = _records(out)
    cfg = write_config(_config(out, trained[1], 3, model={"led": {**TINY_LED, **led}}), tmp_path / "changed.yaml")
    r = run_main(capsys, "train", "--config", cfg, "--quiet")
    assert_one_line_error(r, 2, "train", f"checkpoint step 2 in {out}/checkpoints was saved by another model than this "
                                         f"config describes", fragment,
                          f"resume with the config the run was started with ({out}/train_config.yaml)")
    assert _records(out) == before  # train_config.yaml, metrics.jsonl, processes/, tensorboard/: untouched


def test_steps_at_or_below_the_checkpoint_say_what_happened(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    with open(os.path.join(out, "train_config.yaml"), encoding="utf-8") as f:
        old = f.read()
    cfg = write_config(_config(out, trained[1], 1), tmp_path / "lower.yaml")
    r = run_main(capsys, "train", "--config", cfg, "--quiet")
    assert r.code == 0, r.err[-3000:]
    assert (f"the run in {out} is already at step 2, past steps=1: nothing to train; final/ and hf/ are exported "
            f"again from step 2's parameters (raise steps to train further)") in r.err
    assert f"the old record is kept as {out}/train_config.until-step-2.yaml" in r.err and "steps: 2 -> 1" in r.err
    with open(os.path.join(out, "train_config.until-step-2.yaml"), encoding="utf-8") as f:
        assert f.read() == old  # the config the run was trained with is never lost
    assert r.out.splitlines()[0].startswith("wrote ")  # and no empty metrics line


@pytest.mark.parametrize("what", ["metadata", "data"])
def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_resumed(trained, tmp_path, caplog, capfd, what):
    out = _copy(trained, tmp_path)
    _damage(out, 2, what)
    with caplog.at_level(logging.WARNING, logger="led_flax.train"):
        assert run(_config(out, trained[1], 1), progress=False) == {}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"checkpoint step 2 in {out}/checkpoints cannot be read (" in messages
    assert (f"resumed from step 1 instead, the step before it; the unreadable ones were moved to "
            f"{out}/unreadable-checkpoints/2") in messages
    assert Checkpoints(os.path.join(out, "checkpoints"), 2, 1).all_steps() == [1]
    assert os.path.isdir(os.path.join(out, "unreadable-checkpoints", "2", "state"))
    assert "Event loop is closed" not in capfd.readouterr().err


def test_no_readable_checkpoint_is_one_line(trained, tmp_path, capsys):
    out = _copy(trained, tmp_path)
    _damage(out, 2, "metadata")
    _damage(out, 1, "metadata")
    with pytest.raises(ResumeError):
        run(_config(out, trained[1], 3), progress=False)
    r = run_main(capsys, "train", "--config", write_config(_config(out, trained[1], 3), tmp_path / "c.yaml"))
    assert_one_line_error(r, 2, "train", f"no checkpoint in {out}/checkpoints can be read (step 2: ",
                          f"move {out}/checkpoints away to start the run afresh, or set a new output_dir")


@pytest.mark.parametrize("code, record", [(errno.ENOSPC, "train_config.yaml"), (errno.EROFS, "metrics.jsonl")])
def test_a_full_or_read_only_disk_is_one_line_and_the_rerun_resumes(trained, tmp_path, capsys, monkeypatch, code,
                                                                    record):
    out = _copy(trained, tmp_path)
    before = _records(out)
    real_replace = os.replace

    def replace(src, dst, *a, **k):  # the write of `record` fails
        if os.fspath(dst).endswith(record):
            raise OSError(code, os.strerror(code))
        return real_replace(src, dst, *a, **k)
    monkeypatch.setattr(os, "replace", replace)
    cfg = write_config(_config(out, trained[1], 2), tmp_path / "same.yaml")
    r = run_main(capsys, "train", "--config", cfg, "--quiet")
    assert_one_line_error(r, 2, "train", f"cannot write {out}/{record}: {os.strerror(code)}",
                          "then rerun the same command: the run resumes from its last checkpoint")
    assert _records(out)[record] == before[record]
    monkeypatch.setattr(os, "replace", real_replace)
    assert run_main(capsys, "train", "--config", cfg, "--quiet").code == 0


def test_an_interrupt_and_a_file_as_output_dir_are_one_line(trained, tmp_path, capsys, monkeypatch):
    out = _copy(trained, tmp_path)
    import led_flax.train.step
    from led_flax import train

    def interrupted(*a, **k):
        def step(*a, **k):
            raise KeyboardInterrupt
        return step
    monkeypatch.setattr(train.step, "make_train_step", interrupted)
    r = run_main(capsys, "train", "--config", write_config(_config(out, trained[1], 3), tmp_path / "c.yaml"), "--quiet")
    assert r.code == 130
    assert r.err.splitlines()[-1] == ("led-flax train: interrupted; rerun the same command to resume from the run's "
                                      "last checkpoint")
    afile = tmp_path / "afile"
    afile.write_text("x")
    r = run_main(capsys, "train", "--config", write_config(_config(afile, trained[1], 3), tmp_path / "f.yaml"))
    assert_one_line_error(r, 2, "train", f"output_dir {afile} is a file; set output_dir to a folder")


def test_a_disk_that_fills_during_a_checkpoint_save_is_one_line_and_the_rerun_resumes(trained, tmp_path, capfd):
    """A real full filesystem (a small tmpfs): the run's copy fits, the next step's checkpoint does
    not. Oracle: one line naming the checkpoints folder and the fix, no traceback from orbax's
    background threads; the rerun, with room again, finishes the run."""
    from cli_helpers import small_tmpfs
    small = tmp_path / "small"

    def used(folder):  # bytes on a filesystem of 4 KiB pages: every file and folder rounded up
        return sum(4096 * (1 + sum(-(-os.path.getsize(os.path.join(r, f)) // 4096) for f in fs))
                   for r, _, fs in os.walk(folder))
    size = used(trained[0]) + used(os.path.join(trained[0], "checkpoints", "2")) // 2  # half a checkpoint more
    with small_tmpfs(small, str(size)) as resize:
        out = str(small / "run")
        shutil.copytree(trained[0], out)
        cfg = write_config(_config(out, trained[1], 3), tmp_path / "c.yaml")
        capfd.readouterr()
        r = run_main(capfd, "train", "--config", cfg, "--quiet")
        err = r.err
        assert "Traceback" not in err and "ERROR:absl" not in err, err[-3000:]
        assert_one_line_error(r, 2, "train", "No space left on device; free some space on that filesystem",
                              "then rerun the same command: the run resumes from its last checkpoint")
        foreign = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("led-flax train: ")
                    and " led_flax.train: " not in ln]  # the run's own log lines are expected, nothing else
        assert foreign == [], err[-3000:]
        # whichever write meets the full disk first (the checkpoint's, here; a record's, on a slower
        # machine) is the one named
        assert re.search(rf"cannot write {re.escape(out)}(/\S+)?: No space left on device", err), err[-3000:]
        resize(str(size * 4 + 2_000_000))
        assert run_main(capfd, "train", "--config", cfg, "--quiet").code == 0
        assert Checkpoints(os.path.join(out, "checkpoints"), 2, 0).latest_step() == 3
