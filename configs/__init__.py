"""The shipped training configs, package data of `led_flax.configs` once installed: `path(name)`
finds one by name (`tiny-aclsum`, `led-base-16384`, `led-large-16384`), in a wheel and in an
editable install alike."""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
    """The shipped configs' names, sorted."""
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def path(name: str) -> pathlib.Path | None:
    """The shipped config called `name` (with or without `.yaml`), or None when there is none."""
    stem = name[:-len(".yaml")] if name.endswith(".yaml") else name
    found = HERE / f"{stem}.yaml"
    return found if stem and "/" not in stem and found.is_file() else None
