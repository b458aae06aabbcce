"""Variables stored as packed integers (scale_factor, add_offset) come back packed, within the bound."""

import netCDF4
import numpy as np
import pytest
import xarray as xr
from conftest import tiny_tokenizer

from dynfield.codec import compress_file, decompress_file
from dynfield.codec.header import coding_bound

STEP, OFFSET = 0.01, 5000.0


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("ckpt") / "tokenizer.pt")


def packed_file(path):
    """A (time, lat, lon) geopotential-like field in int16 steps of 0.01 around 5000, with NaN land."""
    y, x = np.meshgrid(np.linspace(0, 2 * np.pi, 16), np.linspace(0, 2 * np.pi, 24), indexing="ij")
    z = np.stack([OFFSET + 40 * np.sin(x + t) * np.cos(y) + 3 * np.cos(5 * x) for t in range(3)])
    z = np.round((z - OFFSET) / STEP) * STEP + OFFSET  # values a packed file can hold
    z[:, 4:8, 10:15] = np.nan
    ds = xr.Dataset({"z": (("time", "lat", "lon"), z, {"units": "m", "long_name": "height"})},
                    coords={"lat": np.linspace(-30, 30, 16), "lon": np.linspace(0, 345, 24)})
    ds.to_netcdf(path, encoding={"z": {"dtype": "int16", "scale_factor": STEP, "add_offset": OFFSET,
                                       "_FillValue": np.int16(-32767)}})


@pytest.mark.parametrize("bound", [0.023, 0.003])  # above half a step, and under it (integers exact)
def test_packed_integers_come_back_packed_within_the_bound(tmp_path, ckpt, bound):
    src, out = tmp_path / "in.nc", tmp_path / "back.nc"
    packed_file(src)
    compress_file(src, tmp_path / "z.dfz", checkpoint=ckpt, max_abs_error=bound, progress=False)
    decompress_file(tmp_path / "z.dfz", out, checkpoint=ckpt, progress=False)
    with netCDF4.Dataset(src) as ref, netCDF4.Dataset(out) as back:
        ref.set_auto_maskandscale(False), back.set_auto_maskandscale(False)
        stored, kept = ref["z"], back["z"]
        assert kept.dtype == np.int16 and kept.dimensions == stored.dimensions
        assert (kept.scale_factor, kept.add_offset, kept._FillValue) == (STEP, OFFSET, -32767)
        k_ref, k_back = stored[:].astype(np.int64), kept[:].astype(np.int64)
    land = k_ref == -32767
    assert np.array_equal(k_back == -32767, land)
    worst = int(np.abs(k_back - k_ref)[~land].max())
    if bound < STEP / 2:
        assert worst == 0
    else:
        assert worst * STEP <= bound and worst >= 1  # the bound is used, not thrown away
    with xr.open_dataset(src) as ref, xr.open_dataset(out) as back:
        assert float(np.abs(back["z"] - ref["z"]).max()) <= bound


@pytest.mark.parametrize("bound, step", [(0.023, 0.01), (0.003, 0.01), (0.0051, 0.01), (7.0, 2.0), (0.9, 2.0)])
def test_the_coding_bound_leaves_room_for_the_rounding_to_packed_integers(bound, step):
    e = coding_bound(bound, step)
    assert 0 < e <= bound
    # the worst value the coder may return, rounded to the packing grid, lands within the bound:
    # a value x = k step, decoded anywhere within e of it, packs to k' with |k' - k| step <= bound
    offsets = np.linspace(-e, e, 2001)
    k_back = np.round(offsets / step)
    assert np.abs(k_back).max() * step <= bound
    if bound < step / 2:
        assert np.abs(k_back).max() == 0
