"""Shared test helpers: valid random tokens, a tiny tokenizer checkpoint; for the training tests the
config composer, the training subprocess and one smoke tokenizer run."""

import csv
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dynfield import paths
from dynfield.checkpoint import save_checkpoint
from dynfield.models import DQVAE
from dynfield.models.tokens import Tokens, repeat_cells

REPO = Path(__file__).resolve().parents[1]


def make_tokens(grain="random", factors=(4, 8), shape=(40, 56), codebook_size=32, B=3, seed=0, nested=False):
    """Valid tokens; `grain` is "random", "coarse" (every region at the coarsest level),
    "fine" (every region at the finest) or a (B, Hc, Wc) grain map; `nested`: a region also carries the
    codes of every coarser level."""
    g = torch.Generator().manual_seed(seed)
    f_K, K = factors[-1], len(factors)
    Hc, Wc = -(-shape[0] // f_K), -(-shape[1] // f_K)
    if isinstance(grain, torch.Tensor):
        grain_map = grain
    elif grain == "random":
        grain_map = torch.randint(K, (B, Hc, Wc), generator=g)
    else:
        grain_map = torch.full((B, Hc, Wc), K - 1 if grain == "coarse" else 0)
    codes = []
    for k, f in enumerate(factors):
        used = repeat_cells(grain_map <= k if nested else grain_map == k, f_K // f)
        codes.append(torch.where(used, torch.randint(codebook_size, used.shape, generator=g), -1))
    return Tokens(grain_map, tuple(codes), factors, shape, codebook_size, nested=nested).validate()


def same_tokens(a, b):
    return (torch.equal(a.grain, b.grain) and torch.equal(a.depth, b.depth)
            and all(torch.equal(x, y) for x, y in zip(a.stage_codes(), b.stage_codes())))


def benchmark_module(name):
    """A script of benchmarks/ imported as a module (the scripts import their neighbour provenance.py)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


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


def tiny_tokenizer(path, in_channels=1, variables=("field",), seed=0, nested=False, stages=1):
    """A randomly initialised tokenizer whose codebook is initialised from data, so codes get used."""
    torch.manual_seed(seed)
    model = DQVAE(in_channels=in_channels, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, periodic=False,
                  nested=nested, stages=stages)
    model.train()
    model(torch.randn(4, in_channels, 16, 16))
    model.eval()
    stats = {v: {"mean": 0.5, "std": 2.0, "min": -5.0, "max": 5.0} for v in variables}
    save_checkpoint(path, model, kind="tokenizer", stats=stats, variables=list(variables), periodic=False)
    return path


def tiny_prior(path, tokenizer_path, shape, order="raster", seed=0):
    """A randomly initialised autoregressive prior over the tokens of a tokenizer checkpoint, for (H, W) fields."""
    from dynfield.checkpoint import tokenizer_entry
    from dynfield.models import ARPrior

    entry, tokenizer = tokenizer_entry(tokenizer_path)
    torch.manual_seed(seed)
    prior = ARPrior(order=order, factors=list(tokenizer.factors), shape=list(shape),
                    codebook_size=tokenizer.config["codebook_size"], dim=16, depth=2, heads=2)
    save_checkpoint(path, prior, kind="prior", stats={}, variables=["field"], periodic=False,
                    extra={"tokenizer": entry})
    return path
