"""open_dfz and to_dfz: a .dfz file as a lazy xarray.Dataset, a Dataset to .dfz, and the model found from the file."""

import shutil

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_tokenizer

import dynfield
from dynfield.codec import CodecError, decompress_file, lazy


@pytest.fixture
def user_file(tmp_path):
    rng = np.random.default_rng(0)
    t2m = (280 + rng.normal(size=(3, 16, 24))).astype(np.float32)
    t2m[:, 4:8, 10:15] = np.nan
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), t2m, {"units": "K"}),
                     "sst": (("lat", "lon", "time"), np.moveaxis(t2m, 0, -1) - 273.15, {"units": "degC"})},
                    coords={"time": np.array(["2020-01-01", "2020-01-02", "2020-01-03"], dtype="datetime64[ns]"),
                            "lat": ("lat", np.linspace(-30, 30, 16), {"units": "degrees_north"}),
                            "lon": ("lon", np.linspace(0, 345, 24), {"units": "degrees_east"})})
    return ds


def test_to_dfz_then_open_dfz_is_the_users_data_set_lazily(tmp_path, user_file, monkeypatch):
    ckpt = tiny_tokenizer(tmp_path / "tokenizer.pt")
    dynfield.to_dfz(user_file, tmp_path / "run.dfz", checkpoint=ckpt, rel_error=0.01, progress=False)
    calls = []
    decode = lazy._decode
    monkeypatch.setattr(lazy, "_decode", lambda *a: calls.append(a) or decode(*a))
    ds = dynfield.open_dfz(tmp_path / "run.dfz", checkpoint=ckpt)
    assert calls == []  # nothing decoded yet
    assert ds["sst"].dims == ("lat", "lon", "time") and ds["t2m"].dims == ("time", "lat", "lon")
    assert ds["lat"].attrs["units"] == "degrees_north" and np.array_equal(ds["time"], user_file["time"])
    one = ds["t2m"].isel(time=1).values
    assert len(calls) == 1  # one snapshot of the group: both variables
    decompress_file(tmp_path / "run.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(tmp_path / "back.nc") as back:
        assert np.array_equal(one, back["t2m"].isel(time=1).values, equal_nan=True)
        for v in ("t2m", "sst"):
            assert np.array_equal(ds[v].values, back[v].values, equal_nan=True)
            bound = 0.01 * float(user_file[v].max() - user_file[v].min())
            assert float(np.abs(ds[v] - user_file[v]).max()) <= bound


def test_the_file_finds_the_model_it_was_made_with(tmp_path, user_file):
    ckpt = tiny_tokenizer(tmp_path / "mine.pt")
    dynfield.to_dfz(user_file[["t2m"]], tmp_path / "run.dfz", checkpoint=ckpt, max_abs_error=0.1, progress=False)
    decompress_file(tmp_path / "run.dfz", tmp_path / "back.nc", progress=False)  # no checkpoint given
    assert dynfield.open_dfz(tmp_path / "run.dfz")["t2m"].shape == (3, 16, 24)
    shutil.move(ckpt, tmp_path / "moved.pt")
    with pytest.raises(CodecError, match="made from .*mine.pt"):
        decompress_file(tmp_path / "run.dfz", tmp_path / "again.nc", progress=False)


def test_parallel_workers_need_a_file(tmp_path, user_file):
    with pytest.raises(CodecError, match="file path"):
        dynfield.to_dfz(user_file, tmp_path / "run.dfz", workers=2, progress=False)
