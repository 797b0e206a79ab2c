"""A one-way library: every module of the `led_flax` namespace, read from its source folder with `ast`
(imports inside functions included), against the layering rules; and the imports themselves, in a
fresh interpreter, from the installed package.

The repository keeps `convert/`, `train/` and `configs/` beside `led_flax/`; installed, they are
`led_flax.convert`, `led_flax.train` and `led_flax.configs` (pyproject.toml's package-dir). The layers,
lowest first; a module imports its own subpackage and the layers below it, never one above or
beside it:

    utils, configs -> parallel -> model -> decoding -> io -> summarization | convert -> train | serving -> cli

- the core (`utils`, `parallel`, `model`, `decoding`, `io`) never imports an application
  (`summarization`, `convert`, `train`, `serving`) or the command line;
- `summarization` and `convert` do not import each other; `train` imports both; `serving` builds on
  `summarization` (the same rows and settings as `summarize`), and it and `train` keep apart;
- `led_flax/__init__.py`, the public face, imports the core and `summarization` only, and only
  `train` and the command line import it (`from led_flax import convert`);
- `led_flax.cli` is the composition root: nothing imports it.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

from conftest import NEUTRAL_CWD

ROOT = pathlib.Path(__file__).resolve().parents[1]
# source folder -> its name once installed
FOLDERS = {"led_flax": "led_flax", "convert": "led_flax.convert", "train": "led_flax.train",
           "configs": "led_flax.configs"}
RANKS = {"led_flax.utils": 0, "led_flax.configs": 0, "led_flax.parallel": 1, "led_flax.model": 2,
         "led_flax.decoding": 3, "led_flax.io": 4, "led_flax.summarization": 5, "led_flax.convert": 5,
         "led_flax.train": 6, "led_flax.serving": 6, "led_flax.cli": 7}
FACE = "led_flax"  # the top-level __init__: the public names, between summarization and train
FACE_RANK = 5.5
FACE_MAY_IMPORT = {"led_flax.utils", "led_flax.parallel", "led_flax.model", "led_flax.decoding", "led_flax.io",
                   "led_flax.summarization"}


def _modules() -> dict[str, pathlib.Path]:
    """Installed dotted name -> source file, for every module of the namespace."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join((package,) + parts)] = path
    return out


def _imports(name: str, path: pathlib.Path) -> set[str]:
    """Every module `path` imports, anywhere in the file, as absolute dotted names (`from a import b`
    gives both `a` and `a.b`, since b may be a module); `importlib.import_module("x")` and
    `__import__("x")` with a literal name count too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _layer(name: str) -> str | None:
    """The layer (a key of RANKS, or FACE) a dotted name of the namespace belongs to; None outside it."""
    if name == FACE:
        return FACE
    return next((layer for layer in RANKS if name == layer or name.startswith(layer + ".")), None)


def _violations(name: str, imported: set[str]) -> set[str]:
    """The names among `imported` that module `name` may not import."""
    own = _layer(name)
    bad = set()
    for target in imported:
        layer = _layer(target)
        if layer is None or layer == own:
            continue
        if own == FACE:
            ok = layer in FACE_MAY_IMPORT
        else:
            ok = (FACE_RANK if layer == FACE else RANKS[layer]) < RANKS[own]
        if not ok:
            bad.add(target)
    return bad


def test_every_module_follows_the_layering():
    modules = _modules()
    assert {"led_flax", "led_flax.summarization.batch", "led_flax.io.checkpoint", "led_flax.convert.hf",
            "led_flax.convert.loader", "led_flax.train.loop", "led_flax.train.evaluate", "led_flax.cli.commands",
            "led_flax.configs"} <= set(modules)
    assert {_layer(m) for m in modules} == set(RANKS) | {FACE}, "a subpackage without a rank"
    problems = [f"{path.relative_to(ROOT)} imports {sorted(bad)}" for name, path in modules.items()
                if (bad := _violations(name, _imports(name, path)))]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    import led_flax.convert.hf\n    from ...cli import commands\n    from . import x\n"
                    "    importlib.import_module('led_flax.train.loop')\n    from led_flax import summarize\n")
    found = _imports("led_flax.model.sub.mod", path)
    assert {"led_flax.convert.hf", "led_flax.cli.commands", "led_flax.model.sub.x", "led_flax.train.loop",
            FACE} <= found
    assert _violations("led_flax.model.sub.mod", found) == {
        "led_flax.convert.hf", "led_flax.cli", "led_flax.cli.commands", "led_flax.train.loop", FACE}
    # beside, not below: summarization and convert keep apart; the face imports no application but one
    assert _violations("led_flax.convert.hf", {"led_flax.summarization.batch"}) == {"led_flax.summarization.batch"}
    assert _violations(FACE, {"led_flax.convert", "led_flax.summarization"}) == {"led_flax.convert"}
    assert _violations("led_flax.train.loop", {"led_flax.convert", "led_flax.model.config", FACE}) == set()
    assert _violations("led_flax.serving.app", {"led_flax.summarization.rows", "led_flax.train.loop"}) == {
        "led_flax.train.loop"}


def test_importing_a_layer_loads_nothing_above_it():
    """In a fresh interpreter, away from the checkout: importing every module of the core and of
    summarization loads no application above them, and so on up."""
    modules = sorted(_modules())
    groups = {  # what a group's modules import at run time, never what is named beside it
        "core": ([m for m in modules if _layer(m) not in ("led_flax.convert", "led_flax.train", "led_flax.cli")],
                 ["led_flax.convert", "led_flax.train", "led_flax.cli"]),
        "convert": ([m for m in modules if _layer(m) == "led_flax.convert"], ["led_flax.train", "led_flax.cli"]),
        "train": ([m for m in modules if _layer(m) == "led_flax.train"], ["led_flax.cli"]),
    }
    for group, (names, forbidden) in groups.items():
        code = ("import importlib, sys\n"
                f"for name in {names!r}:\n    importlib.import_module(name)\n"
                "print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') "
                f"for f in {forbidden!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=NEUTRAL_CWD)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "[]", f"importing {group} loaded {out.stdout.strip()}"
