"""Shared by the training tests: the config composer, the training subprocess, one smoke tokenizer run."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dynfield import paths

REPO = Path(__file__).resolve().parents[1]


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=paths.config_dir(), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """Environment of the training subprocesses: a private data cache, one thread each."""
    data = tmp_path_factory.mktemp("data")
    return dict(os.environ, DYNFIELD_DATA_DIR=str(data), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def train(run_dir, env, *overrides, cwd, launcher=(sys.executable, "-m")):
    cmd = [*launcher, "dynfield.train", "experiment=smoke", f"hydra.run.dir={run_dir}", *overrides]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_steps(run_dir, split):
    with open(run_dir / "metrics.csv") as f:
        return sorted({int(r["step"]) for r in csv.DictReader(f) if r["split"] == split})


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, env):
    # Run from an unrelated working directory: the configs must still be found.
    cwd = tmp_path_factory.mktemp("elsewhere")
    run_dir = tmp_path_factory.mktemp("runs") / "smoke"
    proc = train(run_dir, env, cwd=cwd)
    return run_dir, proc, cwd
