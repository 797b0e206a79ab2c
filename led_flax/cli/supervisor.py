"""A small supervisor for one process of a multi-process `led-flax summarize` job.

XLA's coordination client ends a process whose peer died, or never joined, with SIGABRT and a C++
stack trace, after `--heartbeat-timeout-s` (or `--initialization-timeout-s`). So the command runs its
JAX work in a child process (the same command line, marked by CHILD_ENV) and waits for it: the
child's own one-line messages pass through, XLA's log and stack-trace lines do not, and an abort, a
kill or a timeout becomes one line that names this process and what to run next, with exit status 2.
The finished batches stay in the progress files, so the rerun resumes. The child dies with the
supervisor (Linux's parent-death signal), so killing a job's process kills its work too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

CHILD_ENV = "LED_FLAX_JOB_CHILD"
# glog/absl lines ("F1205 00:12:34.567 ...", "E1205 ..."), stack frames ("    @ 0x...") and the
# "*** Check failure stack trace: ***" banner: XLA's, not ours
_XLA_LINE = re.compile(r"^([IWEF]\d{4} |\s+@\s+0x|\*\*\* Check failure|\*\*\* SIGABRT|RPC: /xla\.|\[Gloo\]|"
                       r"terminate called after|\s+what\(\):|:[A-Z_]+:Error received from peer|\s*$)")


def is_child() -> bool:
    return os.environ.get(CHILD_ENV) == "1"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child outlives a killed supervisor
        pass


def _relay(stream, out, keep) -> None:
    """Copies the child's `stream` (bytes) to `out` as it comes, dropping the complete lines `keep`
    rejects; a progress bar's carriage-return redraws pass at once."""
    buffer = b""
    while True:
        chunk = os.read(stream.fileno(), 65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if keep(text):
                out.write(text + "\n")
        if buffer.startswith(b"\r"):  # tqdm's redraw of its bar: show it now
            out.write(buffer.decode("utf-8", "replace"))
            buffer = b""
        out.flush()
    if buffer and keep(buffer.decode("utf-8", "replace")):
        out.write(buffer.decode("utf-8", "replace"))
        out.flush()


def supervise(argv: list[str], prefix: str, process_id: int | None, then: str) -> int:
    """Runs `led-flax ARGV` in a child and returns the exit status this process should give. `then`:
    what to run next after a failure (named in the one-line message). SIGINT and SIGTERM received
    here go to the child, which stops and says how to resume; its line is passed on."""
    import threading

    from .usage import Terminated
    child = subprocess.Popen([sys.executable, "-m", "led_flax.cli", *argv], env={**os.environ, CHILD_ENV: "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_die_with_parent)
    relays = [threading.Thread(target=_relay, args=(child.stdout, sys.stdout, lambda t: not t.startswith("[Gloo]")),
                               daemon=True),
              threading.Thread(target=_relay, args=(child.stderr, sys.stderr, lambda t: not _XLA_LINE.match(t)),
                               daemon=True)]
    for relay in relays:
        relay.start()
    received = None
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM here: the child gets the same, and says what to do
            received = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            child.send_signal(received)
    for relay in relays:
        relay.join(timeout=10)
    if received is not None:
        return code if code > 0 else (143 if received == signal.SIGTERM else 130)
    if code >= 0 and code != 134:
        return code  # done (0), or the child's own error, interrupt or bug, already said in its line
    how = {signal.SIGABRT: "aborted by jax.distributed: a peer process died, stopped answering or never joined",
           signal.SIGKILL: "killed"}.get(-code if code < 0 else signal.SIGABRT, f"ended by signal {-code}")
    who = "this process" if process_id is None else f"process {process_id}"
    print(f"{prefix}: error: {who} of the job stopped ({how}); {then}", file=sys.stderr)
    sys.stderr.flush()
    return 2


__all__ = ["CHILD_ENV", "is_child", "supervise"]
