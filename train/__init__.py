"""The training job behind `led-flax train`, an application: `led_flax.train` once installed (the
repository keeps it in `train/`). YAML config, data, sharded step, orbax checkpoints, loop.

It imports the core and `led_flax.convert` (to read HF checkpoints and export) and
`led_flax.summarization` (to evaluate); nothing below it imports it. Entry points:
`led_flax.train.loop.run(config)` and `led_flax.train.config.load(path_or_name, overrides)`.
"""
