"""Stage 2 through the real entry point: a smoke tokenizer, then a smoke prior of each order, resume, sampling."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import compose_config, read_steps, train

from dynfield import checkpoint, sample
from dynfield.codec import CodecError, compress_file, inspect_file, prior_code_length, tokenize, weights_hash
from dynfield.codec.field import normalise as normalise_field
from dynfield.data.dummy import write_dummy_netcdf
from dynfield.data import denormalise, normalise
from dynfield.models import precision

ORDERS = ["coarse_to_fine", "raster", "bidirectional"]


def test_prior_configs_compose():
    cfg = compose_config(["stage=prior"])
    assert cfg.prior.order == "coarse_to_fine" and cfg.prior._target_ == "dynfield.models.ARPrior"
    assert cfg.tokenizer is None and cfg.prior.fine_ratio is None
    assert compose_config(["prior=raster"]).prior.order == "raster"
    bi = compose_config(["prior=bidirectional", "experiment=smoke"]).prior
    assert bi._target_ == "dynfield.models.MaskedPrior" and bi.order == "bidirectional"
    assert bi.dim == 32 and bi.train.epochs == 2  # the smoke sizes apply to every order
    # the settings every order shares come from one file; the position transformer's bias only where there is one
    raster = compose_config(["prior=raster"]).prior
    assert raster.rotary and raster.position_locality
    assert raster.train == compose_config(["prior=bidirectional"]).prior.train
    assert "position_locality" not in bi


@pytest.fixture(scope="module")
def tokenizer(smoke_run):
    return smoke_run[0] / "tokenizer.pt"


@pytest.fixture(scope="module", params=ORDERS)
def prior_run(request, tmp_path_factory, env, tokenizer):
    run_dir = tmp_path_factory.mktemp("priors") / request.param
    train(run_dir, env, "stage=prior", f"prior={request.param}", f"tokenizer={tokenizer}",
          cwd=tmp_path_factory.mktemp("cwd"))
    return request.param, run_dir


def test_prior_run_writes_checkpoint_and_held_out_bits(prior_run, tokenizer):
    order, run_dir = prior_run
    for name in ["prior.pt", "last.pt", "metrics.json", "metrics.csv", "tokens.pt"]:
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "metrics.json").read_text())
    # 32 fields x 2 augmentation passes / batch 8 = 8 steps an epoch, 2 epochs, validated after each
    assert summary["steps"] == 16 and read_steps(run_dir, "val") == [8, 16]
    val = summary["val"]
    assert np.isfinite(val["bits_per_token"]) and val["bits_per_token"] > 0
    assert val["bits_per_value"] == pytest.approx(val["bits_per_token"] * val["tokens_per_field"] / (4 * 64 * 64))
    prior, tok, state = checkpoint.load_prior(run_dir / "prior.pt")
    assert state["kind"] == "prior" and prior.config["order"] == order and tuple(prior.config["shape"]) == (64, 64)
    # the prior records its tokenizer: path, weights hash, and a copy that decodes
    reference, _ = checkpoint.load_model(tokenizer)
    assert state["tokenizer"]["path"] == str(tokenizer.resolve())
    assert state["tokenizer"]["sha256"] == weights_hash(reference) == weights_hash(tok)
    assert state["variables"] == ["u", "v", "vorticity", "scalar"]


def test_sampling_a_trained_prior_gives_fields_on_the_data_scale(prior_run, tmp_path, env, monkeypatch):
    _, run_dir = prior_run
    monkeypatch.setenv("DYNFIELD_DATA_DIR", env["DYNFIELD_DATA_DIR"])  # the held-out real fields' cache
    out = tmp_path / "samples.nc"
    assert sample.main([str(run_dir / "prior.pt"), "--n", "6", "--batch", "4", "--out", str(out)]) == 0
    assert out.with_suffix(".png").stat().st_size > 0
    _, tok, state = checkpoint.load_prior(run_dir / "prior.pt")
    with xr.open_dataset(out) as ds:
        assert list(ds.data_vars) == state["variables"] and ds["u"].dims == ("sample", "y", "x")
        assert ds["u"].shape == (6, 64, 64) and ds["u"].attrs["units"] == "1"
        generated = np.stack([ds[v].values for v in state["variables"]], 1)
    assert np.isfinite(generated).all()
    # On the scale of what this tokenizer decodes from real fields, in physical units
    # (a smoke tokenizer decodes real fields at a fraction of their spread).
    real = sample.real_fields(state, None, sample.PANEL_FIELDS)  # the held-out fields of the panel
    names, stats = state["variables"], state["stats"]
    recon = denormalise(tok.decode(tok.encode(normalise(real, stats, names))), stats, names).numpy()
    ratio = generated.std((0, 2, 3)) / recon.std((0, 2, 3))
    assert ((ratio > 1 / 3) & (ratio < 3)).all(), ratio


@pytest.mark.slow
def test_resume_goes_on_without_encoding_again(tmp_path, env, tokenizer):
    run_dir = tmp_path / "run"
    args = ("stage=prior", f"tokenizer={tokenizer}")
    train(run_dir, env, *args, "prior.train.epochs=1", cwd=tmp_path)
    assert checkpoint.read_checkpoint(run_dir / "last.pt")["train_state"]["step"] == 8
    proc = train(run_dir, env, *args, f"resume={run_dir}", "prior.train.epochs=2", cwd=tmp_path)
    assert "at step 8/16" in proc.stdout and "encode train" not in proc.stderr
    assert read_steps(run_dir, "val") == [8, 16]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 16


def test_stage_prior_needs_a_tokenizer(tmp_path, env, smoke_run):
    cmd = [sys.executable, "-m", "dynfield.train", "experiment=smoke", "stage=prior", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "stage=prior needs tokenizer=" in proc.stderr
    prior_as_tokenizer = torch.load(smoke_run[0] / "tokenizer.pt", weights_only=True)
    prior_as_tokenizer["kind"] = "prior"
    torch.save(prior_as_tokenizer, tmp_path / "p.pt")
    proc = subprocess.run(cmd + [f"tokenizer={tmp_path / 'p.pt'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "expected a stage-1 tokenizer" in proc.stderr


def test_code_length_of_a_compressed_file_under_the_prior(prior_run, tokenizer, tmp_path, monkeypatch):
    _, run_dir = prior_run
    # float32 throughout: in bfloat16 the file's codes and those made here may differ where the processor has it
    monkeypatch.setenv(precision.ENV, "0")
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=2, ny=64, nx=64)
    compress_file(src, tmp_path / "f.dfz", checkpoint=tokenizer, progress=False)
    result = prior_code_length(tmp_path / "f.dfz", run_dir / "prior.pt")
    assert result["token_bits"] == inspect_file(tmp_path / "f.dfz")["tokens"]["bits"]
    assert result["values"] == 2 * 4 * 64 * 64
    # the same tokens, made here from the fields, cost the same under the prior
    prior, tok, state = checkpoint.load_prior(run_dir / "prior.pt")
    with xr.open_dataset(src) as ds:
        x = np.stack([normalise_field(ds[v].values, s["mean"], s["std"])
                      for v, s in ((v, state["stats"][v]) for v in state["variables"])], 1)
    expected = prior.bits(tokenize(tok, torch.from_numpy(x))).sum().item()
    # a float32 network in batches of another size: equal to rounding (2e-9 of the total seen)
    assert result["prior_bits"] == pytest.approx(expected, rel=1e-7)
    src32 = write_dummy_netcdf(tmp_path / "small.nc", n_sample=1, ny=32, nx=32)
    compress_file(src32, tmp_path / "small.dfz", checkpoint=tokenizer, progress=False)
    with pytest.raises(CodecError, match="models 64x64 fields"):
        prior_code_length(tmp_path / "small.dfz", run_dir / "prior.pt")
    other, state = checkpoint.load_model(tokenizer)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)  # another tokenizer: other weights, other hash
    checkpoint.save_checkpoint(tmp_path / "other.pt", other, kind="tokenizer", stats=state["stats"],
                               variables=state["variables"], periodic=state["periodic"])
    compress_file(src, tmp_path / "other.dfz", checkpoint=tmp_path / "other.pt", progress=False)
    with pytest.raises(CodecError, match="another tokenizer"):
        prior_code_length(tmp_path / "other.dfz", run_dir / "prior.pt")


def test_an_order_that_does_not_fit_the_prior_class_says_which_config_to_use():
    from dynfield.models import DQVAE
    from dynfield.train_prior import build_prior

    tokenizer = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=16)
    with pytest.raises(ValueError, match="prior=bidirectional"):
        build_prior(compose_config(["stage=prior", "prior.order=bidirectional"]).prior, tokenizer, (16, 16))
    for order in ORDERS:
        cfg = compose_config(["stage=prior", f"prior={order}", "prior.dim=16", "prior.depth=2", "prior.heads=1"])
        assert build_prior(cfg.prior, tokenizer, (16, 16)).config["order"] == order
        # with code features the prior holds the tokenizer's 16 code vectors of size 8, one per code
        cfg.prior.code_features = True
        prior = build_prior(cfg.prior, tokenizer, (16, 16), periodic=True)
        vectors = (prior.tok_emb if order == "bidirectional" else prior.code_emb).vectors
        assert prior.config["code_dim"] == 8 and vectors.shape == (16, 8) and torch.unique(vectors, dim=0).shape[0] == 16
        if order == "bidirectional":  # it takes the fields' periodicity (the autoregressive orders have none)
            assert prior.config["periodic"] is True
            assert build_prior(cfg.prior, tokenizer, (16, 16)).config["periodic"] is False


def test_a_nested_tokenizer_takes_every_order_without_code_vectors():
    from dynfield.models import DQVAE
    from dynfield.train_prior import build_prior

    tokenizer = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=16, nested=True)
    tokens = tokenizer.encode(torch.randn(2, 1, 16, 16), fine_ratio=0.5)
    for order in ORDERS:
        cfg = compose_config(["stage=prior", f"prior={order}", "prior.dim=16", "prior.depth=2", "prior.heads=1"])
        with pytest.raises(ValueError, match="prior.code_features=false"):
            build_prior(cfg.prior, tokenizer, (16, 16))
        cfg.prior.code_features = False
        prior = build_prior(cfg.prior, tokenizer, (16, 16))
        assert prior.config["nested"] and prior.bits(tokens).shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("order, nested", [("raster", False), ("coarse_to_fine", True)])
def test_a_prior_over_a_channel_agnostic_tokenizer_codes_its_files(tmp_path, env, order, nested):
    """stage=prior takes every variable as a field of its own for a one-channel tokenizer, and compress --prior
    then codes the tokens of a file of such fields under it, decoding to what the histograms give; nested
    tokens too. (A prior of 16 steps may cost more than the file's own histograms; compress then declines
    it, and the two files are the same.)"""
    from conftest import tiny_tokenizer

    from dynfield.codec import decompress_file

    agnostic = tiny_tokenizer(tmp_path / "agnostic.pt", nested=nested)
    run_dir = tmp_path / "prior"
    train(run_dir, env, "stage=prior", f"prior={order}", f"tokenizer={agnostic}", "prior.augment_passes=1",
          "prior.train.epochs=1", f"prior.code_features={not nested}", cwd=tmp_path)
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["steps"] == 32 * 4 // 8  # 32 samples x 4 variables, one field each
    val = summary["val"]
    assert val["bits_per_value"] == pytest.approx(val["bits_per_token"] * val["tokens_per_field"] / (64 * 64))
    src = tmp_path / "in.nc"
    write_dummy_netcdf(src, n_sample=2, ny=64, nx=64)
    compress_file(src, tmp_path / "plain.dfz", agnostic, variables=["u", "scalar"], progress=False)
    compress_file(src, tmp_path / "prior.dfz", agnostic, variables=["u", "scalar"], prior=run_dir / "prior.pt",
                  progress=False)
    used = inspect_file(tmp_path / "prior.dfz")["token_prior"]
    if used is None:
        assert (tmp_path / "prior.dfz").read_bytes() == (tmp_path / "plain.dfz").read_bytes()
    else:
        assert used["order"] == order
    a = decompress_file(tmp_path / "plain.dfz", tmp_path / "plain.nc", agnostic, progress=False)
    b = decompress_file(tmp_path / "prior.dfz", tmp_path / "prior.nc", agnostic, progress=False)
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        assert all(np.array_equal(x[v].values, y[v].values) for v in ("u", "scalar"))
