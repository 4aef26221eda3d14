"""The installed import names live under `edgegen.`; the generic top-level folder names are not importable."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"runtime", "quantize", "models", "device", "firmware_bridge", "cli"}


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # what an installed user has
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", sorted(FOLDERS))
def test_generic_names_are_not_installed(tmp_path, name):
    done = run_python(f"import {name}", tmp_path)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done.stderr
    done = run_python(f"import edgegen.{name}; print(edgegen.{name}.__file__)", tmp_path)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().parent.name == name


def test_every_package_folder_is_in_the_distribution():
    """A subpackage left out of pyproject's list would import in the checkout and be missing from a wheel."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = {"edgegen." + ".".join(p.parent.relative_to(REPO).parts)
               for top in FOLDERS for p in (REPO / top).rglob("__init__.py")}
    assert folders <= listed, f"missing from [tool.setuptools] packages: {sorted(folders - listed)}"
    assert {f"edgegen.{top}": top for top in FOLDERS} == config["package-dir"]


def test_shipped_weights_are_package_resources(tmp_path):
    done = run_python("import importlib.resources as r; w = r.files('edgegen.models') / 'weights';"
                      "print(sorted(p.name for p in w.iterdir() if p.name.endswith('.gguf')))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['latent-mnist.gguf', 'mnist-classifier.gguf', 'unet-mnist.gguf']"


def test_the_command_runs_as_a_module(tmp_path):
    done = subprocess.run([sys.executable, "-m", "edgegen.cli", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "generate" in done.stdout, done.stderr
