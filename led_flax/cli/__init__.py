"""The `led-flax` command line, the composition root (`commands`): `convert`, `export`, `summarize`,
`train` and `demo` (`demo`), with the document readers (`documents`) and the usage errors and
option types they share (`usage`). Nothing in the library imports it."""

from .commands import build_parser, main

__all__ = ["build_parser", "main"]
