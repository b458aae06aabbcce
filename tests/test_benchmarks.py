"""The tokenizer and prior benchmarks run end to end on tiny models and tiny held-out data."""

import json

import numpy as np
import pytest
import xarray as xr
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


def test_tokenizer_benchmark_writes_every_router_rate_and_depth(tmp_path, monkeypatch, tokenizer_benchmark):
    monkeypatch.setenv("DYNFIELD_DATA_DIR", str(tmp_path / "data"))
    small = dict(hidden=8, code_dim=8, codebook_size=16, stages=2)
    dq = tiny_checkpoint(tmp_path / "dq.pt", DQVAE(in_channels=4, factors=(4, 8), vorticity_channel=2, **small))
    f8 = tiny_checkpoint(tmp_path / "f8.pt", vqvae(8, in_channels=4, **small))
    out = tmp_path / "out"
    tokenizer_benchmark.main(["--dq", dq, "--fixed", f8, "--n", "4", "--resolution", "32",
                              "--budgets", "0.05", "0.2", "--out", str(out)])
    summary = json.loads((out / "tokenizer.json").read_text())
    assert (out / "tokenizer.png").stat().st_size > 0
    assert summary["n_fields"] == 4 and summary["machine"]["cores"] >= 1
    results = summary["results"]
    rd = [r for r in results if r["name"] == "dq rd"]
    assert [r["target_bits"] for r in rd] == [0.05, 0.2]
    assert all(r["bits_per_value"] <= r["target_bits"] + 1e-9 for r in rd)
    rules = {(r["name"], r["target_fine_ratio"], r["depth"]) for r in results if r["name"] in
             ("dq learned", "dq enstrophy", "dq random")}
    assert len(rules) == 3 * len(tokenizer_benchmark.FINE_RATIOS) * 2
    # 32 x 32 fields: 16 regions of 8 x 8; 4 bits a code, 1 + 1 bits a region for the grain and depth maps
    for r in results:
        if r["name"] == "dq random" and r["target_fine_ratio"] == 0.5:
            codes = (8 * 1 + 8 * 4) * r["depth"]
            assert r["tokens_per_field"] == codes
            assert r["bits_per_value"] == pytest.approx((codes * 4 + 16 * 2) / (32 * 32 * 4))
    fixed = sorted(r["tokens_per_field"] for r in results if r["name"] == "fixed f=8")
    assert fixed == [16, 32]
    # the fixed model also gets the rd allocation of depths, within the same budgets
    fixed_rd = [r for r in results if r["name"] == "fixed f=8 rd"]
    assert [r["target_bits"] for r in fixed_rd] == [0.05, 0.2]
    assert all(r["bits_per_value"] <= r["target_bits"] + 1e-9 for r in fixed_rd)
    # and both models the blind allocation of every budget, rd's yardstick at equal bits
    for name in ("dq random budget", "fixed f=8 random budget"):
        blind = [r for r in results if r["name"] == name]
        assert [r["target_bits"] for r in blind] == [0.05, 0.2]
        assert all(r["bits_per_value"] <= r["target_bits"] + 1e-9 for r in blind)
    targets = summary["targets"]
    # (the tiny fixed model spends every code below 0.05: no budget that both allocations spend)
    assert "dq rd vs random budget at 0.05" in targets["rel_l2 reduction"]
    assert set(targets["psnr at 0.1"]) >= {"dq rd", "fixed f=8"}
    assert "best router - best fixed at 0.1 (dB)" in targets
    # what any allocation could gain: 2 levels x 2 depths of the dq model, 2 depths of the fixed one
    room = summary["allocation headroom"]
    assert len(room["dq"]) == 4 and len(room["fixed f=8"]) == 2 and room["data"]["block"] == 8
    for entry in [room["data"], *room["dq"].values(), *room["fixed f=8"].values()]:
        assert entry["spread"] >= 1.0 and 0.0 <= entry["rel_l2 bound"] < 1.0


def test_rd_is_compared_with_the_blind_allocation_only_where_both_spend_the_budget(tokenizer_benchmark):
    def point(name, target, bits, rel_l2):
        return dict(name=name, target_bits=target, bits_per_value=bits, psnr=-20 * np.log10(rel_l2), rel_l2=rel_l2)

    results = [point("fixed f=8 rd", 0.1, 0.19, 0.07), point("fixed f=8 random budget", 0.1, 0.19, 0.07),  # floor
               point("fixed f=8 rd", 0.2, 0.2, 0.04), point("fixed f=8 random budget", 0.2, 0.199, 0.05),
               point("fixed f=8 rd", 0.8, 0.6, 0.02), point("fixed f=8 random budget", 0.8, 0.66, 0.02),  # ceiling
               # rd finds nothing worth more bits past 0.18; the blind allocation spends 0.4 on worse upgrades
               point("dq rd", 0.4, 0.18, 0.056), point("dq random budget", 0.4, 0.4, 0.094)]
    reductions = tokenizer_benchmark.targets(results, [0.1, 0.2, 0.4, 0.8])["rel_l2 reduction"]
    assert reductions == {"fixed f=8 rd vs random budget at 0.2": pytest.approx(0.2)}


def test_fixed_models_of_one_factor_are_told_apart(tokenizer_benchmark):
    assert tokenizer_benchmark.fixed_labels([8, 16, 8]) == ["fixed f=8 #1", "fixed f=16", "fixed f=8 #2"]


def test_rate_curves_keep_the_upper_envelope_and_interpolate_in_log_rate(tokenizer_benchmark):
    points = [(0.1, 30.0, 0.3), (0.05, 25.0, 0.5), (0.2, 29.0, 0.4), (0.4, 36.0, 0.2)]
    curve = tokenizer_benchmark.envelope(points)
    assert curve == [(0.05, 25.0, 0.5), (0.1, 30.0, 0.3), (0.4, 36.0, 0.2)]  # 0.2 buys less than 0.1
    assert tokenizer_benchmark.at_rate(curve, 0.2) == pytest.approx(33.0)  # halfway between 0.1 and 0.4 in log2
    assert tokenizer_benchmark.at_rate(curve, 0.8) is None


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
    # training tokens for the unigram row: grain 1 (coarse) everywhere, only codes 0 and 1
    codes = [torch.full((6, 8, 8), -1), torch.randint(2, (6, 4, 4), generator=torch.Generator().manual_seed(1))]
    torch.save({"train": {"grain": torch.ones(6, 4, 4, dtype=torch.long), "codes": codes}}, tmp_path / "tokens.pt")
    out = tmp_path / "out"
    summary = prior_benchmark.main(["--tokenizer", tok, "--priors", str(tmp_path / "p.pt"), "--data", str(data),
                                    "--n", "4", "--out", str(out)])
    assert json.loads((out / "prior.json").read_text()) == json.loads(json.dumps(summary))
    assert (out / "prior.png").stat().st_size > 0 and summary["spectrum"]["shells"] == [1, 10]
    rows = {r["label"]: r for r in summary["rows"]}
    assert set(rows) == {"(tokenizer ceiling)", "(random tokens)", "(unigram)", "(per-file histograms)",
                         "coarse_to_fine"}
    # the held-out set's own frequencies code it in fewer bits than the training set's
    unigram, histograms = rows["(unigram)"], rows["(per-file histograms)"]
    assert histograms["bits_per_token"] < unigram["bits_per_token"]
    row = rows["coarse_to_fine"]
    assert histograms["tokens_per_field"] == unigram["tokens_per_field"] == row["tokens_per_field"]
    # bits per value is the same code length as bits per token, spread over the 4 x 32 x 32 values
    assert row["bits_per_value"] * 4 * 32 * 32 == pytest.approx(row["bits_per_token"] * row["tokens_per_field"])
    assert row["seconds_per_field_cpu"] > 0
    for r in (rows[label] for label in ("(tokenizer ceiling)", "(random tokens)", "coarse_to_fine")):
        assert r["spectrum_error"] >= 0 and r["vorticity_w1"] >= 0 and r["enstrophy_ratio"] > 0


def test_prior_codec_benchmark_compares_the_prior_with_per_file_histograms(tmp_path):
    from conftest import tiny_prior, tiny_tokenizer

    from dynfield.data.dummy import dummy_dataset

    tokenizer = tiny_tokenizer(tmp_path / "tokenizer.pt")
    prior = tiny_prior(tmp_path / "prior.pt", tokenizer, (16, 24))
    data = tmp_path / "held_out.nc"
    dummy_dataset(n_sample=2, ny=16, nx=24)[["u", "scalar"]].to_netcdf(data)
    summary = benchmark_module("prior_codec").main(["--prior", str(prior), "--data", str(data), "--checkpoint",
                                                    str(tokenizer), "--out", str(tmp_path / "out")])
    (row,) = summary["rows"]
    assert row["same_values"] and row["prior"]["fields"] == 4 and row["histograms"]["token_bits"] > 0
    assert row["histograms"]["header_bytes"] > row["prior"]["header_bytes"]  # no histograms stored with a prior
    assert (tmp_path / "out" / "prior_codec.png").exists()
    assert json.loads((tmp_path / "out" / "prior_codec.json").read_text())["prior_order"] == "raster"


@pytest.mark.parametrize("nested", [False, True])
def test_random_tokens_are_of_the_tokenizers_kind(nested):
    tokenizer = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=16, nested=nested)
    tokens = benchmark_module("prior").random_tokens(64, tokenizer, (16, 16), torch.Generator().manual_seed(0))
    assert tokens.nested == nested and tokenizer.decode(tokens).shape == (64, 1, 16, 16)
    # every region's grain and every used code drawn uniformly: both levels, all codes
    assert set(tokens.grain.unique().tolist()) == {0, 1} and tokens.codes[0].max() == 15
    coarse_used = tokens.codes[1] >= 0  # the coarse grid is the grain map's
    assert torch.equal(coarse_used, torch.ones_like(coarse_used) if nested else tokens.grain == 1)


def test_tokenizer_benchmark_reads_the_variable_named_for_a_channel_agnostic_model(tmp_path, tokenizer_benchmark):
    from dynfield.conventions import AGNOSTIC_CHANNEL

    model = DQVAE(in_channels=1, factors=(4, 8), hidden=8, code_dim=8, codebook_size=16, stages=2)
    model.train()(torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "agnostic.pt"
    save_checkpoint(path, model.eval(), kind="tokenizer", stats={AGNOSTIC_CHANNEL: {"mean": 0.0, "std": 1.0}},
                    variables=[AGNOSTIC_CHANNEL], periodic=True)
    src = tmp_path / "fields.nc"
    rng = np.random.default_rng(0)
    xr.Dataset({v: (("sample", "y", "x"), rng.normal(size=(4, 32, 32)).astype(np.float32)) for v in "uw"}).to_netcdf(src)
    out = tmp_path / "out"
    tokenizer_benchmark.main(["--dq", str(path), "--source", str(src), "--variable", "w", "--n", "4",
                              "--budgets", "0.2", "--out", str(out)])
    assert json.loads((out / "tokenizer.json").read_text())["variable"] == "w"
    # without --variable it reads the vorticity, which this file lacks
    with pytest.raises(KeyError, match=r"\['vorticity'\] not in .*available: \['u', 'w'\]"):
        tokenizer_benchmark.main(["--dq", str(path), "--source", str(src), "--n", "4", "--out", str(out)])
