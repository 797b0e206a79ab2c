"""The model core imports neither `convert` nor `train`; only the application layer may."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE = ["config", "attention", "modeling", "outputs", "losses", "checkpoint", "generation", "tokenizer", "sharding"]
APPLICATION = ["cli", "summarization"]  # may import convert and train, but only when they run


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_modules_do_not_import_convert_or_train():
    present = [m for m in CORE if (ROOT / "led_flax" / f"{m}.py").exists()]
    assert {"config", "attention", "modeling"} <= set(present)
    for m in present + ["__init__"]:
        bad = _imports(ROOT / "led_flax" / f"{m}.py") & {"convert", "train"}
        assert not bad, f"led_flax/{m}.py imports {bad}"


def test_importing_the_library_loads_neither_package():
    code = ("import sys, led_flax, " + ", ".join(f"led_flax.{m}" for m in CORE + APPLICATION
                                                    if (ROOT / "led_flax" / f"{m}.py").exists()) +
            "\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('convert', 'train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_convert_depends_on_the_core_only_one_way():
    assert "led_flax" in _imports(ROOT / "convert" / "hf.py")
