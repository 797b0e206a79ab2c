"""A one-way library: every module of `led_flax`, `convert` and `train`, read with `ast` (imports
inside functions included), against the layering rules; and the imports themselves, in a fresh
interpreter.

- The core (every module of `led_flax/` but `cli.py`) imports neither `convert` nor `train`.
- `convert` imports only the core (and outside packages).
- `train` imports the core and `convert`.
- `led_flax/cli.py` is the composition root: it may import everything, and nothing imports it.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("led_flax", "convert", "train")
ROOT_MODULE = "led_flax.cli"
FORBIDDEN = {
    "led_flax": {"convert", "train", ROOT_MODULE},
    "convert": {"train", ROOT_MODULE},
    "train": {ROOT_MODULE},
}


def _modules() -> dict[str, pathlib.Path]:
    """Dotted name -> file, for every module of the three packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
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


def _hits(imported: set[str], forbidden: set[str]) -> set[str]:
    return {m for m in imported for f in forbidden if m == f or m.startswith(f + ".")}


def test_every_module_follows_the_layering():
    modules = _modules()
    assert {"led_flax", "led_flax.summarization", "led_flax.checkpoint", "convert.hf", "convert.loader",
            "train.loop", "train.evaluate", ROOT_MODULE} <= set(modules)
    problems = []
    for name, path in modules.items():
        if name == ROOT_MODULE:
            continue
        bad = _hits(_imports(name, path), FORBIDDEN[name.split(".")[0]])
        if bad:
            problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_the_checker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    import convert.hf\n    from .. import cli\n    from . import x\n"
                    "    importlib.import_module('train.loop')\n")
    found = _imports("led_flax.sub.mod", path)
    assert {"convert.hf", "led_flax.cli", "led_flax.sub.x", "train.loop"} <= found
    assert _hits(found, FORBIDDEN["led_flax"]) == {"convert.hf", "led_flax.cli", "train.loop"}


def test_importing_a_layer_loads_nothing_above_it():
    modules = sorted(_modules())
    layers = {
        "led_flax": [m for m in modules if m.split(".")[0] == "led_flax" and m != ROOT_MODULE],
        "convert": [m for m in modules if m.split(".")[0] == "convert"],
        "train": [m for m in modules if m.split(".")[0] == "train"],
    }
    for layer, names in layers.items():
        code = ("import importlib, sys\n"
                f"for name in {names!r}:\n    importlib.import_module(name)\n"
                f"print(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.') "
                f"for f in {sorted(FORBIDDEN[layer])!r})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
        assert out.stdout.strip() == "[]", f"importing {layer} loaded {out.stdout.strip()}"
