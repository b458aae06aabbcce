"""The tokenizer and prior benchmarks run end to end on tiny models and tiny held-out data."""

import json

import pytest
import torch
from conftest import benchmark_module
from omegaconf import OmegaConf

from dynfield.checkpoint import save_checkpoint, tokenizer_entry
from dynfield.data import open_fields
from dynfield.data.dummy import write_dummy_netcdf
from dynfield.models import DQVAE, ARPrior, vqvae
from dynfield.train_prior import data_entry

VARIABLES = ["u", "v", "vorticity", "scalar"]


@pytest.fixture
def tokenizer_benchmark():
    return benchmark_module("tokenizer")


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


def test_prior_benchmark_reports_likelihood_speed_and_physics(tmp_path):
    prior_benchmark = benchmark_module("prior")
    data = tmp_path / "held_out.nc"
    write_dummy_netcdf(data, n_sample=4, ny=32, nx=32)
    tok = tiny_checkpoint(tmp_path / "tok.pt", DQVAE(in_channels=4, factors=(4, 8), hidden=8, code_dim=8, codebook_size=16))
    entry, _ = tokenizer_entry(tok)
    extra = {"tokenizer": entry,
             "data": data_entry(OmegaConf.create({"source": "files", "name": "d"}), open_fields(data), VARIABLES)}
    prior = ARPrior(order="coarse_to_fine", factors=(4, 8), shape=(32, 32), codebook_size=16, dim=16, depth=2, heads=2)
    stats = {v: {"mean": 0.0, "std": 1.0} for v in VARIABLES}
    save_checkpoint(tmp_path / "p.pt", prior, kind="prior", stats=stats, variables=VARIABLES, periodic=True, extra=extra)
    out = tmp_path / "out"
    summary = prior_benchmark.main(["--tokenizer", tok, "--priors", str(tmp_path / "p.pt"), "--data", str(data),
                                    "--n", "4", "--out", str(out)])
    assert json.loads((out / "prior.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "prior.png").stat().st_size > 0 and summary["spectrum"]["shells"] == [1, 10]
    rows = {r["label"]: r for r in summary["rows"]}
    assert set(rows) == {"(tokenizer ceiling)", "(random tokens)", "coarse_to_fine"}
    row = rows["coarse_to_fine"]
    # bits per value is the same code length as bits per token, spread over the 4 x 32 x 32 values
    assert row["bits_per_value"] * 4 * 32 * 32 == pytest.approx(row["bits_per_token"] * row["tokens_per_field"])
    assert row["seconds_per_field_cpu"] > 0
    for r in rows.values():
        assert r["spectrum_error"] >= 0 and r["vorticity_w1"] >= 0 and r["enstrophy_ratio"] > 0
