"""The training job behind `led-flax train`: YAML config, data, sharded step, orbax checkpoints, loop.

It imports `led_flax` (and `convert`, to read HF checkpoints and export); the model core never imports
it. Entry points: `train.loop.run(config)` and `train.config.load(path, overrides)`.
"""
