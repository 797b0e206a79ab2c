"""Oracle: the expected error. A user's mistake with `led-flax` is one line `led-flax CMD: error: ...`
naming the problem and the fix, exit status 2 and no traceback, found before any model is loaded
or any input read; warnings are one line; an internal failure is exit status 1 with its
traceback; an interrupt is 130; training's NaN stop is 3."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
import warnings

import numpy as np
import pytest

from led_flax import convert
from led_flax.cli import commands as cli
from led_flax.io.checkpoint import MARKER
from led_flax.summarization import InputWarning

from cli_helpers import assert_one_line_error, run_command, run_main


@pytest.fixture
def fake_model(tmp_path):
    """A directory that passes the cheap `--model` check (it has a led-flax marker) but cannot load:
    any test that reaches the loader fails there with another message than the one it expects."""
    d = tmp_path / "model"
    d.mkdir()
    (d / MARKER).write_text("{}")
    return str(d)


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if a model is loaded or stdin is read."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(convert, "load", refuse)

    class Unread:
        def isatty(self):
            return False

        def read(self, *a):
            raise AssertionError("stdin was read before --model was checked")
        buffer = property(lambda self: self)
    monkeypatch.setattr(sys, "stdin", Unread())


# ------------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("argv, fragment", [
    (["--max-length", "0"], "argument --max-length: must be at least 2, got 0"),
    (["--max-length", "1"], "argument --max-length: must be at least 2, got 1"),
    (["--max-length", "ten"], "argument --max-length: 'ten' is not a whole number"),
    (["--batch-size", "-1"], "argument --batch-size: must be at least 1, got -1"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--batch-size", "2.5"], "argument --batch-size: '2.5' is not a whole number"),
    (["--num-beams", "0"], "argument --num-beams: must be at least 1, got 0"),
    (["--min-length", "-1"], "argument --min-length: must be at least 0, got -1"),
    (["--no-repeat-ngram-size", "-2"], "argument --no-repeat-ngram-size: must be at least 0, got -2"),
    (["--length-penalty", "nan"], "argument --length-penalty: must be a finite number, got nan"),
    (["--length-penalty=-inf"], "argument --length-penalty: must be a finite number, got -inf"),
    (["--length-penalty", "x"], "argument --length-penalty: 'x' is not a number"),
    (["--min-length", "30", "--max-length", "10"], "--min-length 30 exceeds --max-length 10"),
    (["--format", "csv"], "argument --format: invalid choice: 'csv'"),
])
def test_numeric_summarize_options_are_checked_before_any_work(capsys, fake_model, no_loading, argv, fragment):
    r = run_main(capsys, "summarize", "--model", fake_model, "--quiet", *argv)
    line = assert_one_line_error(r, 2, "summarize", fragment)
    if fragment.startswith("argument"):
        assert line.endswith("(see led-flax summarize --help)")
    assert r.out == "" and len(r.err.splitlines()) == 1


@pytest.mark.parametrize("argv, fragment", [
    (["demo", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["demo", "--documents", "-3"], "argument --documents: must be at least 1, got -3"),
    (["train", "--num-processes", "2"], "--num-processes need --coordinator HOST:PORT"),
    (["train", "--coordinator", "h:1", "--num-processes", "0", "--process-id", "0"],
     "--num-processes must be at least 1, got 0"),
    (["train", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be 0 to 1 (--num-processes 2), got 2"),
    (["train", "--coordinator", "h:1", "--num-processes", "2"], "--coordinator needs --num-processes N and --process-id I"),
    (["train", "--coordinator", "nohost", "--num-processes", "1", "--process-id", "0"], "is not HOST:PORT"),
    (["train", "--coordinator", "h:1", "--distributed"], "not both"),
    (["train", "--set", "steps=0"], "steps must be at least 1, not 0"),
    (["train", "--set", "optimizer.b2=1.5"], "optimizer.b2 must be in [0, 1), not 1.5"),
    (["train", "--set", "optimizer.eps=-1e-8"], "optimizer.eps must be a positive number"),
    (["train", "--set", "eval.num_beams=0"], "eval.num_beams must be at least 1, not 0"),
    (["train", "--set", "mesh.data=0"], "mesh.data must be -1"),
    (["train", "--set", "steps=[1"], "--set 'steps=[1': the value is not valid YAML"),
])
def test_demo_and_train_options_are_checked_before_any_work(capsys, monkeypatch, argv, fragment):
    import led_flax.train.loop
    from led_flax import train
    monkeypatch.setattr(train.loop, "run", lambda *a, **k: pytest.fail("the job started"))
    r = run_main(capsys, *argv)
    assert_one_line_error(r, 2, argv[0], fragment)


def test_a_config_that_is_not_utf8_names_its_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"steps: 10\n# caf\xe9\n")
    assert_one_line_error(run_main(capsys, "train", "--config", bad), 2, "train", f"{bad} line 2 is not UTF-8")
    bad.write_text("steps: [10\n")
    assert_one_line_error(run_main(capsys, "train", "--config", bad), 2, "train", "is not valid YAML", "line 2")


# ------------------------------------------------------------------------------------------ paths
def test_output_paths_are_checked_before_the_model_or_input(capsys, tmp_path, fake_model, no_loading):
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--out", tmp_path / "missing" / "out.txt"], "the folder of the output", "does not exist; create it first"),
        (["--out", tmp_path], f"the output {tmp_path} is a directory; name a file, such as"),
        (["--cache-dir", tmp_path / "afile"], "is a file; name a folder, or turn the cache off"),
        (["--restart"], "--restart discards the progress of an --out run; it needs --out"),
        (["a.txt", "--jsonl", "b.jsonl"], "give FILES or --jsonl FILE, not both"),
        (["--jsonl", tmp_path / "d.jsonl", "--out", tmp_path / "d.jsonl"], "is also an input: it would be overwritten"),
    ]
    for argv, *fragments in cases:
        r = run_main(capsys, "summarize", "--model", fake_model, "--quiet", *argv)
        assert_one_line_error(r, 2, "summarize", *fragments)


@pytest.mark.parametrize("code, fix", [(errno.EROFS, "the filesystem is read-only: write somewhere else"),
                                       (errno.ENOSPC, "free some space on that filesystem")])
def test_an_output_on_a_read_only_or_full_filesystem_fails_first(capsys, tmp_path, fake_model, no_loading,
                                                                  monkeypatch, code, fix):
    import tempfile

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # the probe write beside the output
    out = tmp_path / "summaries.txt"
    r = run_main(capsys, "summarize", "--model", fake_model, "--out", out)
    assert_one_line_error(r, 2, "summarize", f"cannot write {out}: {os.strerror(code)}", fix)


def test_model_is_checked_before_stdin_is_read(capsys, tmp_path, no_loading):
    (tmp_path / "plain").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = [(tmp_path / "nowhere", "does not exist; give a checkpoint directory or a hub id"),
             (tmp_path / "plain", "is neither a led-flax checkpoint"),
             (tmp_path / "afile", "is a file; give a checkpoint directory or a hub id")]
    for model, fragment in cases:
        assert_one_line_error(run_main(capsys, "summarize", "--model", model), 2, "summarize", fragment)


def test_stdin_on_a_terminal_says_what_it_waits_for(capsys, fake_model, monkeypatch):
    class Terminal(io.BytesIO):
        def isatty(self):
            return True
        buffer = property(lambda self: self)
    monkeypatch.setattr(sys, "stdin", Terminal("caf\xe9".encode("latin-1")))
    r = run_main(capsys, "summarize", "--model", fake_model)
    first = r.err.splitlines()[0]
    assert first == ("led-flax summarize: reading one document from the terminal; end it with Ctrl-D (or pass FILES "
                     "or --jsonl FILE)")
    assert_one_line_error(r, 2, "summarize", "<stdin> line 1 is not UTF-8", "iconv -t UTF-8")


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("line, fragment", [
    ('"just a string"', "line 2 is a string, not a JSON object"),
    ("42", "line 2 is a number, not a JSON object"),
    ("[1, 2]", "line 2 is a list, not a JSON object"),
    ("null", "line 2 is null, not a JSON object"),
    ('{"text": 3}', "line 2: field 'text' is a number, not a string"),
    ('{"text": null}', "line 2: field 'text' is null, not a string"),
    ('{"text": ["a"]}', "line 2: field 'text' is a list, not a string"),
    ('{"text": {"a": "b"}}', "line 2: field 'text' is an object, not a string"),
    ('{"text": true}', "line 2: field 'text' is a boolean, not a string"),
    ('{"body": "x"}', "line 2 has no field 'text' (it has ['body']); name the text field with --field"),
    ('{"text": "x"', "line 2 is not JSON"),
])
def test_jsonl_lines_that_are_not_text_records_are_refused(capsys, tmp_path, fake_model, no_loading, line, fragment):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "a good record"}\n' + line + "\n")
    r = run_main(capsys, "summarize", "--model", fake_model, "--jsonl", path)
    assert_one_line_error(r, 2, "summarize", f"{path} {fragment}")


def test_a_jsonl_file_that_is_not_utf8_names_the_line(capsys, tmp_path, fake_model, no_loading):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "one"}\n\n{"text": "caf\xe9"}\n')
    r = run_main(capsys, "summarize", "--model", fake_model, "--jsonl", path)
    assert_one_line_error(r, 2, "summarize", f"{path} line 3 is not UTF-8", "iconv -t UTF-8")
    r = run_main(capsys, "summarize", "--model", fake_model, "--jsonl", tmp_path / "missing.jsonl")
    assert_one_line_error(r, 2, "summarize", "cannot read", "missing.jsonl: No such file or directory")
    r = run_main(capsys, "summarize", "--model", fake_model, tmp_path / "missing.txt")
    assert_one_line_error(r, 2, "summarize", "cannot read", "missing.txt: No such file or directory")


def test_jsonl_records_are_named_by_their_own_id(tmp_path):
    path = tmp_path / "docs.jsonl"
    records = [{"id": "P-1", "text": "a"}, {"text": "b"}, {"id": 7, "text": "c"}, {"id": True, "text": "d"},
               {"id": None, "text": "e"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records[:2]) + "\n" +
                    "".join(json.dumps(r) + "\n" for r in records[2:]))
    docs = cli.read_jsonl(str(path), "text")
    assert docs.texts == ["a", "b", "c", "d", "e"]
    assert docs.names == ["P-1", f"{path}:2", "7", f"{path}:5", f"{path}:6"]


def test_a_file_that_is_not_utf8_warns_in_one_line(capsys, tmp_path, fake_model):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    r = run_main(capsys, "summarize", "--model", fake_model, "--quiet", bad)
    warning = [ln for ln in r.err.splitlines() if "warning" in ln]
    assert warning == [f"led-flax summarize: warning: {bad} is not UTF-8 (unexpected end of data at byte 3); "
                       f"skipped: convert it with iconv -t UTF-8"]
    assert r.code == 2  # then the fake model fails to load, in one line too
    assert_one_line_error(r, 2, "summarize")


# ------------------------------------------------------------------------------------------ conventions
def test_warnings_print_as_one_line_under_the_command(capsys, monkeypatch):
    def export(args):
        warnings.warn("something to know\nacross lines?", UserWarning)
        return 0
    monkeypatch.setattr(cli, "cmd_export", export)
    r = run_main(capsys, "export", "a", "b")
    assert r.code == 0 and r.err == "led-flax export: warning: something to know\nacross lines?\n"
    assert "commands.py" not in r.err and "UserWarning" not in r.err


def test_an_internal_failure_exits_1_with_its_traceback(capsys, monkeypatch):
    monkeypatch.setattr(cli, "cmd_export", lambda args: {}["missing"])
    r = run_main(capsys, "export", "a", "b")
    assert r.code == 1 and "Traceback" in r.err
    assert r.err.splitlines()[-1] == ("led-flax export: internal error: KeyError: 'missing' (a bug in led-flax: please "
                                      "report it with the traceback above)")


@pytest.mark.parametrize("argv, then", [
    (["summarize", "--model", "m", "--out", "o.txt"],
     "interrupted; rerun the same command to resume (finished batches are kept in o.txt.progress.jsonl)"),
    (["summarize", "--model", "m"], "interrupted; nothing was saved; pass --out FILE to make a run resumable"),
    (["train"], "interrupted; rerun the same command to resume from the run's last checkpoint"),
    (["convert", "a", "b"], "interrupted; nothing was written (b is as it was)"),
    (["export", "a", "b"], "interrupted; nothing was written (b is as it was)"),
])
def test_an_interrupt_exits_130_and_says_what_to_do(capsys, monkeypatch, argv, then):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    for name in ("cmd_summarize", "cmd_convert", "cmd_export"):
        monkeypatch.setattr(cli, name, interrupted)
    import led_flax.train.cli
    from led_flax import train
    monkeypatch.setattr(train.cli, "main", interrupted)
    r = run_main(capsys, *argv)
    assert r.code == 130 and r.err == f"led-flax {argv[0]}: {then}\n"


def test_a_nan_stop_exits_3_in_one_line(capsys, monkeypatch):
    import led_flax.train.loop
    from led_flax import train

    def nan(*a, **k):
        raise train.loop.TrainingError("loss nan at step 2: training stopped without saving")
    monkeypatch.setattr(train.loop, "run", nan)
    r = run_main(capsys, "train", "--set", "steps=2")
    assert_one_line_error(r, 3, "train", "loss nan at step 2")


def test_every_option_has_help_and_the_generation_options_their_defaults():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, sub in commands.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
    text = " ".join(commands["summarize"].format_help().split())
    for option in ("--num-beams", "--max-length", "--min-length", "--length-penalty", "--no-repeat-ngram-size"):
        assert option in text
    assert text.count("(default: the checkpoint's generation_config.json, else transformers' default") == 5
    assert "exit status" in parser.format_help()


def test_help_exits_0(capsys):
    r = run_main(capsys, "export", "--help")
    assert r.code == 0 and "transformers" in r.out and r.err == ""


# ------------------------------------------------------------------------------------------ the real command
def test_the_real_command_reports_a_usage_error_in_one_line():
    r = run_command("summarize", "--model", "x", "--batch-size", "0")
    assert r.code == 2 and r.err == ("led-flax summarize: error: argument --batch-size: must be at least 1, got 0 "
                                     "(see led-flax summarize --help)\n")
    r = run_command()
    assert r.code == 2 and r.err.startswith("led-flax: error: the following arguments are required: command")


def test_the_real_command_refuses_a_bad_jsonl_line_before_loading(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n17\n')
    r = run_command("summarize", "--model", tmp_path, "--jsonl", path)  # tmp_path is no checkpoint: checked first
    assert_one_line_error(r, 2, "summarize", "is neither a led-flax checkpoint")
    (tmp_path / MARKER).write_text("{}")
    r = run_command("summarize", "--model", tmp_path, "--jsonl", path)
    assert_one_line_error(r, 2, "summarize", f"{path} line 2 is a number, not a JSON object")


# ------------------------------------------------------------------------------------------ issue 21
@pytest.mark.parametrize("argv, then", [
    (["summarize", "--model", "m", "--out", "o.txt"],
     "terminated; rerun the same command to resume (finished batches are kept in o.txt.progress.jsonl)"),
    (["train"], "terminated; rerun the same command to resume from the run's last checkpoint"),
    (["convert", "a", "b"], "terminated; nothing was written (b is as it was)"),
])
def test_sigterm_exits_143_and_says_what_sigint_says(capsys, monkeypatch, argv, then):
    import signal
    import threading
    import time
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set on the main thread only")

    def work(*a, **k):  # a real SIGTERM, delivered while the command runs
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        pytest.fail("SIGTERM did not stop the command")
    for name in ("cmd_summarize", "cmd_convert"):
        monkeypatch.setattr(cli, name, work)
    import led_flax.train.cli
    from led_flax import train
    monkeypatch.setattr(train.cli, "main", work)
    before = signal.getsignal(signal.SIGTERM)
    r = run_main(capsys, *argv)
    assert r.code == 143 and r.err == f"led-flax {argv[0]}: {then}\n"
    assert signal.getsignal(signal.SIGTERM) is before  # put back


def test_an_empty_training_config_is_refused_pointing_at_the_shipped_ones(capsys, tmp_path):
    from led_flax import configs
    for text in ("", "# only a comment\n\n   \n# another\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        r = run_main(capsys, "train", "--config", path, "--dry-run")
        assert r.code == 2 and r.err == (
            f"led-flax train: error: {path} sets nothing (it is empty or holds only comments); start from a shipped "
            f"config: --config tiny-aclsum, or copy one of led-base-16384, led-large-16384, tiny-aclsum from "
            f"{configs.HERE}\n")


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(capsys, tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("steps: 3\nmodel:\n  led:\n    d_model: 128\n  remat: full\n  led:\n    d_model: 64\n")
    r = run_main(capsys, "train", "--config", path, "--dry-run")
    assert r.code == 2 and r.err == (f"led-flax train: error: {path} sets 'model.led' twice, on lines 3 and 6; keep one "
                                     f"of them\n")
    path.write_text("steps: 3\nmodel:\n  led:\n    d_model: 128\n    encoder_layers: 2\n    d_model: 64\n")
    r = run_main(capsys, "train", "--config", path, "--dry-run")
    assert r.code == 2 and r.err == (f"led-flax train: error: {path} sets 'model.led.d_model' twice, on lines 4 and 6; "
                                     f"keep one of them\n")


def test_a_shipped_config_is_found_by_name_and_a_path_wins(capsys, tmp_path, monkeypatch):
    from led_flax.train import config as config_lib
    shipped = config_lib.find("tiny-aclsum")
    assert shipped == config_lib.find("tiny-aclsum.yaml") and shipped.endswith("tiny-aclsum.yaml")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-aclsum").write_text("steps: 3\n")  # a file of that name here wins
    assert config_lib.find("tiny-aclsum") == "tiny-aclsum"
    r = run_main(capsys, "train", "--config", "no-such-config", "--dry-run")
    assert r.code == 2 and r.err == ("led-flax train: error: no config file no-such-config; give a path to a YAML file, "
                                     "or the name of a shipped config: led-base-16384, led-large-16384, tiny-aclsum\n")


def test_a_tokenizer_without_merges_warns_once_naming_the_file(tmp_path):
    from led_flax.io.tokenizer import LEDTokenizer, TokenizerWarning
    from cli_helpers import tiny_summarizer
    tiny = tiny_summarizer(tmp_path / "t")
    path = os.path.join(tiny.hf, "tokenizer.json")
    data = json.loads(open(path).read())
    for merges in ([], None):
        if merges is None:
            data["model"].pop("merges")
        else:
            data["model"]["merges"] = merges
        open(path, "w").write(json.dumps(data))
        with pytest.warns(TokenizerWarning) as caught:
            tok = LEDTokenizer.from_pretrained(tiny.hf)
        assert [str(w.message) for w in caught] == [
            f"{path} (model.merges) has no BPE merges: every word splits into single bytes (about twice the tokens) "
            f"and a model trained with merges reads it wrong; copy the tokenizer files again from the checkpoint the "
            f"model was made from"]
        assert len(tok.encode("summaries")) == len("summaries") + 2  # a byte a token, and <s> </s>


def test_file_messages_name_the_fix(capsys, tmp_path, fake_model, no_loading, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run_main(capsys, "summarize", "--model", fake_model, ".")
    assert r.code == 2 and r.err == ("led-flax summarize: error: cannot read .: Is a directory; name the text files in "
                                     "it, or pass --jsonl FILE\n")
    r = run_main(capsys, "summarize", "--model", fake_model, "nosuch.txt")
    assert r.code == 2 and r.err == ("led-flax summarize: error: cannot read nosuch.txt: No such file or directory; "
                                     "check the path\n")
    r = run_main(capsys, "summarize", "--model", fake_model, "--jsonl", "nosuch.jsonl")
    assert r.code == 2 and r.err == ("led-flax summarize: error: cannot read nosuch.jsonl: No such file or directory; "
                                     "check the path\n")
    r = run_main(capsys, "export", "nosuchdir", "out")
    assert r.code == 2 and r.err == (f"led-flax export: error: {tmp_path}/nosuchdir does not exist; check the path (a "
                                     f"checkpoint written by `led-flax convert` or by training)\n")
    assert sorted(os.listdir(tmp_path)) == ["model"]  # nothing written


def test_an_unexpected_tensor_is_one_line(capsys, tmp_path):
    from safetensors.numpy import load_file, save_file
    from cli_helpers import tiny_summarizer
    tiny = tiny_summarizer(tmp_path / "t")
    state = load_file(os.path.join(tiny.hf, "model.safetensors"))
    state["led.encoder.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, os.path.join(tiny.hf, "model.safetensors"), metadata={"format": "pt"})
    r = run_main(capsys, "convert", tiny.hf, tmp_path / "out", "--quiet")
    assert r.code == 2 and r.err == (
        f"led-flax convert: error: {tiny.hf}: the checkpoint does not fit its LED config (in the checkpoint but unused: "
        f"['led.encoder.extra.weight']); it was saved from another model than config.json describes, or edited: put "
        f"back the config.json and weights that were saved together\n")


def test_a_text_file_with_a_byte_order_mark_reads_without_it(tmp_path):
    path = tmp_path / "paper.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "Abstract \ufeff inside".encode())
    assert cli.read_files([str(path)]).texts == ["Abstract \ufeff inside"]  # only the leading mark goes


def test_jsonl_with_a_byte_order_mark_and_duplicate_ids(tmp_path, recwarn):
    path = tmp_path / "docs.jsonl"
    records = [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "a", "text": "three"},
               {"id": "a", "text": "four"}, {"text": "five"}]
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in records).encode())
    docs = cli.read_jsonl(str(path), "text")
    assert docs.texts == ["one", "two", "three", "four", "five"]  # the first record kept, as utf-8-sig reads it
    assert docs.names == ["a", "b", "a", "a", f"{path}:5"]
    assert [str(w.message) for w in recwarn if w.category is InputWarning] == [
        f"{path}: id 'a' is on line 1 and line 3 (and maybe more): their output records cannot be told apart; give "
        f"each record its own id"]


def test_an_unreadable_file_is_reported_once(capsys, tmp_path, monkeypatch):
    """Not UTF-8: one warning, not a second one calling it empty (the oracle: an empty file still gets
    that one)."""
    bad, empty = tmp_path / "bad.bin", tmp_path / "empty.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    empty.write_text("")
    from cli_helpers import tiny_summarizer
    tiny = tiny_summarizer(tmp_path / "t")
    r = run_main(capsys, "summarize", "--model", tiny.ours, "--quiet", "--no-cache", bad, empty)
    assert r.code == 0, r.err
    warned = [ln for ln in r.err.splitlines() if ": warning: " in ln]
    assert warned == [f"led-flax summarize: warning: {bad} is not UTF-8 (invalid start byte at byte 0); skipped: "
                      f"convert it with iconv -t UTF-8",
                      f"led-flax summarize: warning: {empty} is empty: its summary is empty"]
