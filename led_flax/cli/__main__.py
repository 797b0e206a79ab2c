"""`python -m led_flax.cli ARGS` runs `led-flax ARGS`."""

import os
import sys

from . import supervisor
from .commands import main

code = main()
if code and supervisor.is_child():
    # a job's child that stops early (interrupted, refused, failed) leaves at once: jax.distributed's
    # exit hook would wait for its peers, which wait for it at their final barrier; they stop at their
    # heartbeat timeout instead. Its progress file is already on disk.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
