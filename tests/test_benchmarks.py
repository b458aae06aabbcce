"""The tokenizer benchmark runs end to end on tiny models and tiny held-out data."""

import json
import sys
from pathlib import Path

import pytest
import torch

from dynfield.checkpoint import save_checkpoint
from dynfield.models import DQVAE, vqvae

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = ["u", "v", "vorticity", "scalar"]


@pytest.fixture
def tokenizer_benchmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tokenizer
    finally:
        sys.path.pop(0)
    return tokenizer


def tiny_checkpoint(path, model):
    model.train()(torch.randn(4, 4, 32, 32, generator=torch.Generator().manual_seed(0)))  # initialises the codebook
    stats = {v: {"mean": 0.0, "std": 1.0} for v in VARIABLES}
    save_checkpoint(path, model.eval(), kind="tokenizer", stats=stats, variables=VARIABLES, periodic=True)
    return str(path)


def test_tokenizer_benchmark_writes_every_router_and_budget(tmp_path, monkeypatch, tokenizer_benchmark):
    monkeypatch.setenv("DYNFIELD_DATA_DIR", str(tmp_path / "data"))
    small = dict(hidden=8, code_dim=8, codebook_size=16)
    dq = tiny_checkpoint(tmp_path / "dq.pt", DQVAE(in_channels=4, factors=(4, 8), vorticity_channel=2, **small))
    f4 = tiny_checkpoint(tmp_path / "f4.pt", vqvae(4, in_channels=4, **small))
    f8 = tiny_checkpoint(tmp_path / "f8.pt", vqvae(8, in_channels=4, **small))
    out = tmp_path / "out"
    tokenizer_benchmark.main(["--dq", dq, "--fixed", f4, f8, "--n", "4", "--resolution", "32",
                              "--ratios", "0.25", "0.5", "--out", str(out)])
    summary = json.loads((out / "tokenizer.json").read_text())
    assert (out / "tokenizer.png").stat().st_size > 0
    assert summary["n_fields"] == 4 and summary["machine"]["cores"] >= 1
    results = summary["results"]
    budgets = {(r["router"], r["fine_ratio_target"]): r for r in results if r["model"] == "dq"}
    assert set(budgets) == {(r, b) for r in ("learned", "random", "enstrophy") for b in (0.25, 0.5)} | {("learned", None)}
    # 32 x 32 fields: 16 regions of 8 x 8; a fine region costs 4 codes instead of 1
    for (router, ratio), r in budgets.items():
        if ratio is not None:
            assert r["fine_ratio"] == ratio and r["tokens_per_field"] == 16 + 3 * 16 * ratio
            assert r["bits_per_value"] == pytest.approx(r["tokens_per_field"] * 4 / (32 * 32 * 4))
    fixed = sorted(r["tokens_per_field"] for r in results if r["model"] == "fixed")
    assert fixed == [16, 64]
    assert set(summary["targets"]) == {"fine_ratio=0.25", "fine_ratio=0.5"}
    for check in summary["targets"].values():
        assert check["below_chord"] == (check["learned_rel_l2"] < check["fixed_chord_rel_l2"])
