"""`python -m led_flax.cli ARGS` runs `led-flax ARGS`."""

import sys

from .commands import main

sys.exit(main())
