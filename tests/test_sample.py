"""The sampling CLI on tiny, untrained models: netCDF layout and attributes, determinism, atomic output, errors."""

import numpy as np
import pytest
import torch
import xarray as xr
from omegaconf import OmegaConf

from dynfield import checkpoint, sample
from dynfield.data import open_fields
from dynfield.data.dummy import write_dummy_netcdf
from dynfield.models import DQVAE, ARPrior, MaskedPrior
from dynfield.train_prior import data_entry

VARIABLES = ["u", "v", "vorticity", "scalar"]
PRIORS = {"coarse_to_fine": ARPrior, "bidirectional": MaskedPrior}


@pytest.fixture(params=list(PRIORS))
def files(request, tmp_path):
    """A tiny tokenizer, a prior of each class over its tokens of 32 x 24 fields, and a file of real fields."""
    prior_class = PRIORS[request.param]
    torch.manual_seed(0)
    data = tmp_path / "real.nc"
    write_dummy_netcdf(data, n_sample=3, ny=32, nx=24)
    ds = open_fields(data, VARIABLES)
    stats = {v: {"mean": 1.0, "std": 2.0} for v in VARIABLES}
    tokenizer = DQVAE(in_channels=4, factors=(4, 8), hidden=8, code_dim=8, codebook_size=16)
    tokenizer.train()(torch.randn(4, 4, 32, 24))  # initialises the codebook
    checkpoint.save_checkpoint(tmp_path / "tokenizer.pt", tokenizer.eval(), kind="tokenizer", stats=stats,
                               variables=VARIABLES, periodic=True)
    entry, _ = checkpoint.tokenizer_entry(tmp_path / "tokenizer.pt")
    prior = prior_class(order=request.param, factors=(4, 8), shape=(32, 24), codebook_size=16, dim=16, depth=2, heads=2)
    extra = {"tokenizer": entry, "data": data_entry(OmegaConf.create({"source": "files", "name": "dummy"}), ds, VARIABLES)}
    checkpoint.save_checkpoint(tmp_path / "prior.pt", prior, kind="prior", stats=stats, variables=VARIABLES,
                               periodic=True, extra=extra)
    return tmp_path, entry


def test_writes_cf_netcdf_with_the_data_names_units_and_settings(files):
    tmp_path, entry = files
    out = tmp_path / "s.nc"
    argv = [str(tmp_path / "prior.pt"), "--n", "5", "--batch", "2", "--seed", "3", "--temperature", "0.8",
            "--top-k", "8", "--out", str(out), "--real", str(tmp_path / "real.nc")]
    assert sample.main(argv) == 0
    with xr.open_dataset(out) as ds, xr.open_dataset(tmp_path / "real.nc") as real:
        assert list(ds.data_vars) == VARIABLES and ds["vorticity"].dims == ("sample", "y", "x")
        assert ds["vorticity"].shape == (5, 32, 24)
        for v in VARIABLES:
            assert ds[v].attrs["units"] == real[v].attrs["units"] and np.isfinite(ds[v].values).all()
        np.testing.assert_array_equal(ds["x"].values, real["x"].values)
        assert ds.attrs["dynfield_seed"] == 3 and ds.attrs["dynfield_temperature"] == 0.8
        assert ds.attrs["dynfield_top_k"] == 8 and "dynfield_top_p" not in ds.attrs
        assert ds.attrs["dynfield_tokenizer_sha256"] == entry["sha256"] and ds.attrs["Conventions"].startswith("CF")
        first = ds["u"].values
    assert out.with_suffix(".png").stat().st_size > 0
    # the same seed and batch give the same fields; another seed others
    assert sample.main(argv[:-2] + ["--out", str(tmp_path / "again.nc"), "--png", str(tmp_path / "p.png")]) == 0
    with xr.open_dataset(tmp_path / "again.nc") as again:
        np.testing.assert_array_equal(again["u"].values, first)
    assert (tmp_path / "p.png").is_file()
    argv[6] = "4"
    assert sample.main(argv[:-2] + ["--out", str(tmp_path / "other.nc")]) == 0
    with xr.open_dataset(tmp_path / "other.nc") as other:
        assert not np.array_equal(other["u"].values, first)


def test_a_failed_write_leaves_no_file(files, monkeypatch):
    tmp_path, _ = files

    def broken(self, path, **kw):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    out = tmp_path / "out" / "s.nc"
    assert sample.main([str(tmp_path / "prior.pt"), "--n", "2", "--out", str(out)]) == 1
    assert list(out.parent.iterdir()) == []


def test_clear_errors(files, capsys):
    tmp_path, _ = files
    out = str(tmp_path / "s.nc")
    assert sample.main([str(tmp_path / "tokenizer.pt"), "--n", "2", "--out", out]) == 1
    assert "is a 'tokenizer' checkpoint, not a prior" in capsys.readouterr().err
    assert sample.main([str(tmp_path / "missing.pt"), "--n", "2", "--out", out]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    assert sample.main([str(tmp_path / "prior.pt"), "--n", "0", "--out", out]) == 1
    assert "--n" in capsys.readouterr().err
    assert not (tmp_path / "s.nc").exists()
