"""What users install: the wheel built from this checkout, its files listed, then installed alone
(`--no-deps`) into a fresh virtual environment and run from a scratch folder as a user would.

The fresh environment sees this one's packages (jax, torch, ...) through a `.pth` file that names
this environment's site-packages (`--system-site-packages` would show the base interpreter's, not
ours); its own site-packages comes first, so `led_flax` is the wheel's. The wheel is built from a copy
of the tracked sources, so a stale `build/` folder in the checkout cannot leak into it.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import ROOT, xla_flags

SOURCES = ("led_flax", "convert", "train", "configs", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    pytest.importorskip("setuptools")
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(src)], capture_output=True, text=True, cwd=src)
    assert r.returncode == 0, r.stderr[-3000:]
    (found,) = out.glob("led_flax-*.whl")
    return found


def test_the_wheel_holds_one_package_with_the_configs_inside(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"led_flax"}
    for config in ("tiny-aclsum", "led-base-16384", "led-large-16384"):
        assert f"led_flax/configs/{config}.yaml" in names
    for module in ("led_flax/train/loop.py", "led_flax/convert/hf.py", "led_flax/cli/__main__.py",
                   "led_flax/model/attention.py", "led_flax/io/checkpoint.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "/tests/" in n or "/bench/" in n]
    # every source file of the repository's four folders is in the wheel, and nothing else is
    expected = {f"{'led_flax/' if folder != 'led_flax' else ''}{p.relative_to(ROOT).as_posix()}"
                for folder in ("led_flax", "convert", "train", "configs")
                for p in (pathlib.Path(ROOT) / folder).rglob("*") if p.suffix in (".py", ".yaml")}
    assert expected == {n for n in names if n.endswith((".py", ".yaml"))}


def _fresh_env(tmp_path, wheel) -> pathlib.Path:
    """A new virtual environment holding only the wheel, seeing this one's packages."""
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    python = env / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    pathlib.Path(purelib, "test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: this environment's own led_flax (seen through the .pth) is neither taken as
    # already there nor uninstalled
    r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    where = subprocess.run([str(python), "-c", "import led_flax; print(led_flax.__file__)"], capture_output=True,
                           text=True, check=True, cwd=tmp_path).stdout.strip()
    assert where.startswith(purelib), f"led_flax came from {where}, not the wheel in {purelib}"
    return env


def test_the_installed_wheel_runs_every_command_from_any_folder(wheel, tmp_path):
    env = _fresh_env(tmp_path, wheel)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "train.py").write_text("raise SystemExit('the user\\'s own train.py was imported')\n")
    (scratch / "convert.py").write_text("raise SystemExit('the user\\'s own convert.py was imported')\n")
    run_env = {**os.environ, "XLA_FLAGS": xla_flags(), "TF_CPP_MIN_LOG_LEVEL": "2", "TOKENIZERS_PARALLELISM": "false"}
    run_env.pop("PYTHONPATH", None)

    def led_flax(*args, timeout=300):
        r = subprocess.run([str(env / "bin" / "led-flax"), *args], capture_output=True, text=True, cwd=scratch,
                           env=run_env, timeout=timeout)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
        return r

    assert "summarize" in led_flax("--help").stdout
    dry = led_flax("train", "--config", "tiny-aclsum", "--dry-run")
    assert "mesh" in dry.stdout.lower()
    demo = led_flax("demo", "--steps", "2", "--documents", "2", "--quiet", "--workdir", str(tmp_path / "demo"))
    assert "ROUGE F1 on 2 held-out ACLSum test papers" in demo.stdout
    assert "lead-3 baseline" in demo.stdout
    assert sorted(p.name for p in scratch.iterdir()) == ["convert.py", "train.py"]  # nothing written here
