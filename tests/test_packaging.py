"""Packaging: the wheel holds every subpackage, the Hydra configs and the bundled tokenizer."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dynfield").rglob("__init__.py")}
    assert found | {"dynfield.conf"} == listed


@pytest.mark.slow
def test_installed_wheel_finds_its_configs(tmp_path):
    # Build from a copy so no build/ directory is left in (or reused from) the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".*", "build", "outputs", "datasets", "*.egg-info"))
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(src)],
        check=True, capture_output=True, timeout=600,
    )
    target = tmp_path / "site"
    wheel = next(wheel_dir.glob("dynfield-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-m", "dynfield.train", "--cfg", "job", "model=vqvae"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dynfield.models.vqvae" in proc.stdout
    # the configs came from the wheel, not from this checkout
    probe = subprocess.run([sys.executable, "-c", "import dynfield.paths as p; print(p.config_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(target))
    # and the bundled tokenizer is in the wheel: the codec works with no checkpoint given
    probe = subprocess.run([sys.executable, "-c", "from dynfield.codec import default_checkpoint as d; print(d())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert probe.stdout.strip().startswith(str(target)) and probe.stdout.strip().endswith("tokenizer.pt")
