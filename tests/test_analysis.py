import json
import math

import numpy as np
import pytest
import torch

from dynfield import analysis, physics
from dynfield.analysis import (
    channel_roles,
    error_by_region,
    fine_coarse_ratio,
    flow_diagnostics,
    mean_roc,
    precision_recall,
    region_means,
    region_types,
    roc_auc,
    roc_curve,
    top_fraction,
    velocity_from_vorticity,
)
from dynfield.checkpoint import save_checkpoint
from dynfield.data import compute_stats, normalise
from dynfield.data.dummy import dummy_dataset, write_dummy_netcdf
from dynfield.models import DQVAE
from dynfield.models.router import budget_ratios, rank_assign

N_GRID, FACTOR = 64, 8  # 8 x 8 regions of the coarsest grid
# every other region in both directions: 16 of the 64, none sharing an edge
PLANTED = np.zeros((N_GRID // FACTOR,) * 2, dtype=bool)
PLANTED[::2, ::2] = True


def planted_vortices(core=1.2):
    """Vorticity of Gaussian vortices of alternating sign at the centres of the PLANTED regions, and its velocity."""
    y, x = np.meshgrid(np.arange(N_GRID), np.arange(N_GRID), indexing="ij")
    omega = np.zeros((N_GRID, N_GRID))
    for n, (i, j) in enumerate(zip(*np.nonzero(PLANTED))):
        cy, cx = (i + 0.5) * FACTOR - 0.5, (j + 0.5) * FACTOR - 0.5
        omega += (-1) ** n * (1 + 0.1 * n) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * core**2))
    omega -= omega.mean()  # a periodic velocity carries no net vorticity
    u, v = velocity_from_vorticity(omega)
    return u, v, omega


def tiny_model(in_channels=3, **kw):
    torch.manual_seed(0)
    return DQVAE(in_channels=in_channels, factors=(4, FACTOR), hidden=8, code_dim=8, codebook_size=16, **kw).eval()


def as_batch(*channels, n=1):
    """(n, C, H, W) float32 of identical fields and their statistics."""
    x = np.repeat(np.stack(channels)[None], n, axis=0).astype(np.float32)
    stats = {str(c): {"mean": float(x[:, c].mean()), "std": float(x[:, c].std())} for c in range(len(channels))}
    return torch.from_numpy(x), stats


# --------------------------------------------------------------------------- ROC-AUC and friends


def brute_force_auc(score, label):
    pos, neg = score[label], score[~label]
    return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


def test_roc_auc_counts_ties_as_one_half():
    # positives 2 and 3 against negatives 1 and 2: wins 2>1, 3>1, 3>2 and the tie 2=2
    assert roc_auc([1, 2, 2, 3], [0, 1, 0, 1]) == pytest.approx(3.5 / 4)
    assert roc_auc([5, 5, 5, 5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert roc_auc([0, 1, 2, 3], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0, 1, 2, 3], [1, 1, 0, 0]) == 0.0


def test_roc_auc_matches_the_pairwise_count_on_rows_with_many_ties():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 4, size=(6, 40)).astype(float)
    label = rng.random((6, 40)) < 0.3
    auc = roc_auc(score, label)
    assert auc.shape == (6,)
    assert np.allclose(auc, [brute_force_auc(s, l) for s, l in zip(score, label)])


def test_roc_auc_is_nan_for_a_row_with_one_class_only():
    auc = roc_auc([[1, 2, 3], [1, 2, 3]], [[True, True, True], [False, True, False]])
    assert math.isnan(auc[0]) and auc[1] == 0.5


def test_roc_curve_area_is_the_auc_and_averaging_identical_rows_keeps_the_curve():
    rng = np.random.default_rng(1)
    score = rng.integers(0, 5, size=50).astype(float)
    label = rng.random(50) < 0.4
    fpr, tpr = roc_curve(score, label)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(score, label))
    grid, mean_tpr = mean_roc(np.stack([score, score]), np.stack([label, label]), np.linspace(0, 1, 2001))
    assert np.trapezoid(mean_tpr, grid) == pytest.approx(roc_auc(score, label), abs=1e-3)


def test_top_fraction_leaves_out_ties_at_the_cut():
    assert top_fraction([5, 4, 3, 1], 0.5).tolist() == [True, True, False, False]
    assert top_fraction([5, 3, 3, 1], 0.5).tolist() == [True, False, False, False]
    assert top_fraction([[1, 2], [4, 3]], 0.5).tolist() == [[False, True], [True, False]]
    assert not top_fraction([1, 2, 3], 0.0).any() and top_fraction([1, 2, 3], 1.0).all()
    with pytest.raises(ValueError, match="q must lie"):
        top_fraction([1, 2], 1.5)


def test_precision_recall_and_fine_coarse_ratio_on_known_cases():
    selected = [[1, 1, 0, 0], [1, 0, 0, 0]]
    relevant = [[1, 0, 1, 0], [1, 1, 0, 0]]
    assert precision_recall(selected, relevant) == pytest.approx((2 / 3, 2 / 4))
    assert math.isnan(precision_recall([0, 0], [1, 0])[0])
    assert fine_coarse_ratio([[1, 2, 3, 6]], [[False, False, True, True]]) == pytest.approx(4.5 / 1.5)
    assert math.isnan(fine_coarse_ratio([1, 2], [True, True]))


# --------------------------------------------------------------------------- flow diagnostics


def test_velocity_from_vorticity_has_that_vorticity_and_no_divergence():
    y, x = np.meshgrid(*(2 * np.pi * np.arange(32) / 32,) * 2, indexing="ij")
    omega = np.sin(2 * x) * np.cos(3 * y) + 0.3 * np.cos(x + y) + 0.7
    u, v = velocity_from_vorticity(omega)
    assert np.allclose(physics.vorticity(u, v), omega - 0.7, atol=1e-10)
    assert np.allclose(physics.divergence(u, v), 0, atol=1e-10)


def test_region_types_follow_the_okubo_weiss_thresholds():
    u, v, _ = planted_vortices()
    w = physics.okubo_weiss(u, v)
    kinds = region_types(w[None])[0]
    assert np.array_equal(kinds == 0, physics.vortex_mask(u, v))
    assert np.array_equal(kinds == 1, w > 0.2 * w.std())
    assert set(np.unique(kinds)) == {0, 1, 2}


def test_error_split_by_region_type_averages_back_to_the_whole():
    u, v, _ = planted_vortices()
    kinds = region_types(physics.okubo_weiss(u, v)[None])
    err = np.random.default_rng(0).random(kinds.shape)
    split = error_by_region(err, kinds)
    area = [(kinds == k).mean() for k in range(3)]
    assert sum(a * split[name] for a, name in zip(area, analysis.REGION_TYPES)) == pytest.approx(split["all"])
    assert split["vortex"] == pytest.approx(err[kinds == 0].mean())
    assert error_by_region(err) == {"all": pytest.approx(err.mean())}


def test_region_means_average_the_cells_inside_the_field_only():
    d = np.arange(6 * 10, dtype=float).reshape(1, 6, 10)
    m = region_means(d, 4)
    assert m.shape == (1, 2, 3)
    assert m[0, 0, 0] == pytest.approx(d[0, :4, :4].mean())
    assert m[0, 1, 2] == pytest.approx(d[0, 4:, 8:].mean())  # a 2 x 2 corner of a 4 x 4 region


def test_planted_vortices_are_the_top_regions_of_every_vortex_indicator():
    u, v, omega = planted_vortices()
    flow = flow_diagnostics(np.stack([u, v, omega])[None], ["u", "v", "vorticity"])
    assert flow.basis == "velocity"
    for name in ("enstrophy", "palinstrophy", "vortex_fraction"):
        regions = region_means(flow.densities[name], FACTOR)
        assert np.array_equal(top_fraction(regions.reshape(1, -1), 0.25)[0], PLANTED.ravel()), name
        # a router scoring exactly the planted regions is perfect for them
        assert roc_auc(PLANTED.ravel().astype(float), top_fraction(regions.ravel(), 0.25)) == 1.0


def test_channel_roles_find_velocity_vorticity_and_the_rest():
    assert channel_roles(["Vx", "Vy", "density", "pressure"]) == {"u": 0, "v": 1, "vorticity": None, "others": [2, 3]}
    assert channel_roles(["scalar", "vorticity", "u", "v"]) == {"u": 2, "v": 3, "vorticity": 1, "others": [0]}
    # half a velocity is no velocity; it is not a scalar either
    assert channel_roles(["u", "vort", "scalar"]) == {"u": None, "v": None, "vorticity": 1, "others": [2]}


def test_vorticity_alone_recovers_the_okubo_weiss_field_on_a_periodic_domain():
    u, v, omega = planted_vortices()
    from_velocity = flow_diagnostics(np.stack([u, v])[None], ["u", "v"])
    from_vorticity = flow_diagnostics(omega[None, None], ["vorticity"])
    assert from_vorticity.basis == "vorticity"
    assert np.allclose(from_vorticity.okubo_weiss, from_velocity.okubo_weiss, atol=1e-8)
    assert set(from_vorticity.densities) == {"enstrophy", "palinstrophy", "vortex_fraction", "kinetic_energy"}
    bounded = flow_diagnostics(omega[None, None], ["vorticity"], periodic=False)
    assert bounded.okubo_weiss is None and set(bounded.densities) == {"enstrophy", "palinstrophy"}
    assert "non-periodic" in bounded.note


# --------------------------------------------------------------------------- routers and the whole analysis


@pytest.mark.parametrize("factors", [(4, 8), (2, 4, 8)])
@pytest.mark.parametrize("router", ["learned", "random", "enstrophy"])
def test_router_scores_rank_regions_as_the_exact_budget_does(factors, router):
    torch.manual_seed(0)
    model = DQVAE(in_channels=2, factors=factors, hidden=8, code_dim=8, codebook_size=16, seed=3).eval()
    x = torch.randn(3, 2, 40, 48, generator=torch.Generator().manual_seed(0))  # padded to 40 x 48: 5 x 6 regions
    score = model.region_scores(x, router)
    assert score.shape == (3, 5, 6)
    for budget in (0.25, 0.6):
        expected = model.encode(x, fine_ratio=budget, router=router).grain
        assert torch.equal(rank_assign(score, budget_ratios(budget, model.target_ratios)), expected)


def test_router_scores_refuse_what_does_not_rank():
    with pytest.raises(ValueError, match="no learned router"):
        tiny_model(2, router="random").region_scores(torch.zeros(1, 2, 16, 16), "learned")
    with pytest.raises(ValueError, match="no region scores for router 'fixed'"):
        tiny_model(2).region_scores(torch.zeros(1, 2, 16, 16), "fixed")
    fixed_grain = DQVAE(in_channels=2, factors=(8,), router="fixed", hidden=8, code_dim=8, codebook_size=16)
    unit = {"mean": 0.0, "std": 1.0}
    with pytest.raises(ValueError, match="dynamic-grain"):
        analysis.analyse(fixed_grain, torch.zeros(1, 2, 16, 16), ["u", "v"], {"u": unit, "v": unit})


def test_enstrophy_router_finds_the_planted_vortices_and_random_scores_half():
    u, v, omega = planted_vortices()
    x_phys, stats = as_batch(u, v, omega, n=64)
    names = ["u", "v", "vorticity"]
    stats = {name: stats[str(c)] for c, name in enumerate(names)}
    model = tiny_model(3, vorticity_channel=2)
    # one batch: the random router draws afresh from its seed for every batch
    result = analysis.analyse(model, normalise(x_phys, stats, names), names, stats, budgets=(0.25, 0.5),
                              quantiles=(0.25, 0.5), batch_size=64)
    s = result.summary
    assert s["indicators"] == ["enstrophy", "palinstrophy", "vortex_fraction", "kinetic_energy"]
    assert s["routers"].keys() == {"learned", "rd", "random", "enstrophy"}
    ens = s["routers"]["enstrophy"]
    assert ens["auc"]["enstrophy"]["0.25"] == 1.0 and ens["auc"]["vortex_fraction"]["0.25"] == 1.0
    at = ens["budgets"]["0.25"]
    assert at["fine_fraction"] == 0.25
    # the planted regions are exactly the top 25 %: at budget 0.25 the fine ones are they
    assert at["precision"]["enstrophy"]["0.25"] == 1.0 and at["recall"]["enstrophy"]["0.25"] == 1.0
    # at budget 0.5 half the fine regions are planted ones, and all planted ones are fine
    assert ens["budgets"]["0.5"]["precision"]["palinstrophy"]["0.25"] == 0.5
    assert ens["budgets"]["0.5"]["recall"]["palinstrophy"]["0.25"] == 1.0
    assert at["fine_coarse_ratio"]["enstrophy"] > 100
    rnd = s["routers"]["random"]
    for name in s["indicators"]:
        assert abs(rnd["auc"][name]["0.25"] - 0.5) < 0.05, name
    assert abs(rnd["budgets"]["0.5"]["fine_coarse_ratio"]["enstrophy"] - 1) < 0.2
    assert set(at["mse"]) == {"all", "vortex", "strain", "background"}
    assert sum(s["area_fraction"].values()) == pytest.approx(1.0)
    json.dumps(s, allow_nan=False)


def test_scalar_only_data_falls_back_to_gradient_energy():
    rng = np.random.default_rng(0)
    density = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    stats = {"density": {"mean": float(density.mean()), "std": float(density.std())}}
    x = normalise(torch.from_numpy(density), stats, ["density"])
    result = analysis.analyse(tiny_model(1), x, ["density"], stats)
    s = result.summary
    assert s["basis"] == "gradient_energy" and "gradient energy" in s["note"]
    assert s["indicators"] == ["gradient_energy"]
    assert s["area_fraction"] is None and s["okubo_weiss_threshold"] is None
    assert set(s["routers"]["enstrophy"]["budgets"]["0.5"]["mse"]) == {"all"}
    assert analysis.figure_okubo_weiss(result) is None
    assert result.flow.vorticity is None and result.primary == "gradient_energy"


def test_load_fields_maps_file_names_onto_the_checkpoint_channels(tmp_path):
    ds = dummy_dataset(n_sample=3, ny=16, nx=16)
    names = ["u", "v", "vorticity", "scalar"]
    stats = compute_stats(ds, names)
    renamed = tmp_path / "renamed.nc"
    ds.rename({"u": "Vx", "v": "Vy", "vorticity": "vort", "scalar": "s"}).to_netcdf(renamed)
    state = {"variables": names, "stats": stats, "periodic": True}
    x, channels, x_stats = analysis.load_fields(renamed, state, 2, variables=["Vx", "Vy", "vort", "s"])
    expected = normalise(torch.from_numpy(np.stack([ds[n].values for n in names], axis=1)[:2]), stats, names)
    assert x.shape == (2, 4, 16, 16) and torch.allclose(x, expected)
    assert channels == names and x_stats == stats
    with pytest.raises(ValueError, match="4 channels"):
        analysis.load_fields(renamed, state, 2, variables=["Vx", "Vy"])


def test_load_fields_for_a_channel_agnostic_checkpoint_normalises_each_field(tmp_path):
    ds = dummy_dataset(n_sample=3, ny=16, nx=16)
    path = tmp_path / "fields.nc"
    ds.to_netcdf(path)
    state = {"variables": ["field"], "stats": {"field": {"mean": 0.0, "std": 1.0}}, "periodic": False}
    x, channels, stats = analysis.load_fields(path, state, 2)  # the vorticity by default
    assert x.shape == (2, 1, 16, 16) and channels == ["vorticity"] and stats == {"vorticity": state["stats"]["field"]}
    w = ds["vorticity"].values[:2]
    expected = (w - w.mean(axis=(1, 2), keepdims=True)) / w.std(axis=(1, 2), keepdims=True)
    assert torch.allclose(x[:, 0], torch.from_numpy(expected).float(), atol=1e-5)
    x, channels, _ = analysis.load_fields(path, state, 2, variables=["scalar"])
    assert channels == ["scalar"] and torch.allclose(x.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-5)


def test_missing_checkpoint_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(analysis.study, "BUNDLED_TOKENIZER", tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint given"):
        analysis.resolve_checkpoint(None)
    assert analysis.resolve_checkpoint("run/tokenizer.pt").name == "tokenizer.pt"


# --------------------------------------------------------------------------- command line


def test_cli_writes_the_alignment_json_and_figures(tmp_path):
    data = write_dummy_netcdf(tmp_path / "flow.nc", n_sample=3, ny=32, nx=32)
    variables = ["u", "v", "vorticity", "scalar"]
    stats = compute_stats(dummy_dataset(n_sample=3, ny=32, nx=32), variables)
    ckpt = tmp_path / "tokenizer.pt"
    save_checkpoint(ckpt, tiny_model(4, vorticity_channel=2), kind="tokenizer", stats=stats, variables=variables,
                    periodic=True)
    from dynfield.analyze import main

    out = tmp_path / "report"
    assert main([str(data), "--checkpoint", str(ckpt), "--out", str(out), "--n", "2", "--budgets", "0.25", "0.5"]) == 0
    report = json.loads((out / "alignment.json").read_text())
    assert {"checkpoint", "data", "basis", "note", "indicators", "area_fraction", "routers", "budgets"} <= report.keys()
    assert report["n_fields"] == 2 and report["field_shape"] == [32, 32] and report["basis"] == "velocity"
    assert report["indicators"] == ["enstrophy", "palinstrophy", "vortex_fraction", "kinetic_energy", "scalar_gradient"]
    for router in ("learned", "random", "enstrophy"):
        res = report["routers"][router]
        assert res["auc"].keys() == set(report["indicators"])
        assert res["auc"]["enstrophy"].keys() == {"0.1", "0.2", "0.5"}
        assert res["budgets"].keys() == {"0.25", "0.5"}
        assert {"fine_fraction", "fine_coarse_ratio", "precision", "recall", "mse"} == res["budgets"]["0.5"].keys()
        assert res["budgets"]["0.25"]["fine_fraction"] == 0.25
    for name in ("grain_maps", "okubo_weiss", "scores", "roc", "errors"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert "AUC" in (out / "alignment.txt").read_text()
