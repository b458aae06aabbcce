"""open_fields: every layout opens lazily to canonical dims with the analytic dummy values."""

import pickle
import sys

import dask.array as da
import h5py
import numpy as np
import pytest

from dynfield.conventions import SAMPLE, TIME, X, Y
from dynfield.data.dummy import (PDEBENCH_CFD_FROM_DUMMY, dummy_dataset, write_dummy_netcdf,
                                 write_dummy_pdebench_hdf5, write_dummy_well_hdf5, write_dummy_zarr)
from dynfield.data.io import detect_layout, open_fields, require_zarr

N_SAMPLE, N_TIME, NY, NX = 2, 3, 16, 24


def _zarr_usable():
    try:
        require_zarr()
        return True
    except ImportError:
        return False


def assert_values(actual, expected):
    assert actual.dims == expected.dims
    np.testing.assert_allclose(actual.values, expected.values, rtol=1e-6, atol=1e-6)


def test_netcdf_opens_lazily_with_one_chunk_per_sample_and_time(tmp_path):
    path = write_dummy_netcdf(tmp_path / "f.nc", N_SAMPLE, N_TIME, NY, NX)
    ds = open_fields(path)
    ref = dummy_dataset(N_SAMPLE, N_TIME, NY, NX)
    assert detect_layout(path) == "netcdf"
    assert list(ds.data_vars) == ["u", "v", "vorticity", "scalar"]
    for name in ds.data_vars:
        assert isinstance(ds[name].data, da.Array)
        assert ds[name].data.chunksize == (1, 1, NY, NX)
        assert_values(ds[name], ref[name])
    np.testing.assert_allclose(ds[X].values, ref[X].values)
    assert ds["u"].attrs["units"] == "1"


def test_without_chunks_a_netcdf_file_is_read_lazily_without_dask(tmp_path):
    path = write_dummy_netcdf(tmp_path / "f.nc", N_SAMPLE, N_TIME, NY, NX)
    ref = dummy_dataset(N_SAMPLE, N_TIME, NY, NX)
    with open_fields(path, chunks=None) as ds:
        assert list(ds.data_vars) == ["u", "v", "vorticity", "scalar"]
        for name in ds.data_vars:
            assert ds[name].chunks is None  # no dask
            assert_values(ds[name], ref[name])
        field = ds["u"].isel({SAMPLE: 1, TIME: 2}).values
        np.testing.assert_array_equal(field, ref["u"].isel({SAMPLE: 1, TIME: 2}).values.astype(field.dtype))


def test_well_layout_maps_vector_components_and_axis_order(tmp_path):
    path = write_dummy_well_hdf5(tmp_path / "w.h5", N_SAMPLE, N_TIME, NY, NX)
    ds = open_fields(path)
    ref = dummy_dataset(N_SAMPLE, N_TIME, NY, NX)
    assert detect_layout(path) == "well"
    assert sorted(ds.data_vars) == ["scalar", "velocity_x", "velocity_y", "vorticity"]
    assert_values(ds["velocity_x"], ref["u"])
    assert_values(ds["velocity_y"], ref["v"])
    assert_values(ds["vorticity"], ref["vorticity"])
    np.testing.assert_allclose(ds[TIME].values, ref[TIME].values)
    np.testing.assert_allclose(ds[Y].values, ref[Y].values)
    assert ds.attrs["dataset_name"] == "dummy_flow"


@pytest.mark.parametrize("kind, expected", [
    ("cfd", PDEBENCH_CFD_FROM_DUMMY),
    ("tensor", {"tensor": lambda ref: ref["scalar"], "nu": lambda ref: ref["scalar"].isel(time=0, drop=True)}),
    ("seeds", {"data_0": lambda ref: ref["scalar"], "data_1": lambda ref: ref["vorticity"]}),
])
def test_pdebench_layouts(tmp_path, kind, expected):
    path = write_dummy_pdebench_hdf5(tmp_path / f"{kind}.h5", kind, N_SAMPLE, N_TIME, NY, NX)
    ds = open_fields(path)
    ref = dummy_dataset(N_SAMPLE, N_TIME, NY, NX)
    assert detect_layout(path) == "pdebench"
    assert sorted(ds.data_vars) == sorted(expected)
    for name, make in expected.items():
        assert_values(ds[name], make(ref))
    # the CFD files store one time stamp too many; it is dropped, not misaligned
    np.testing.assert_allclose(ds[TIME].values, ref[TIME].values)


def test_generic_hdf5_with_dimension_scales_in_a_group(tmp_path):
    ref = dummy_dataset(N_SAMPLE, None, NY, NX)
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        grp = f.create_group("run")
        for name, dim in (("member", SAMPLE), ("lat", Y), ("lon", X)):
            grp.create_dataset(name, data=ref[dim].values).make_scale(name)
        dset = grp.create_dataset("u", data=ref["u"].values)
        for i, name in enumerate(("member", "lat", "lon")):
            dset.dims[i].attach_scale(grp[name])
        grp.create_dataset("nodims", data=ref["v"].values)  # no scales: read as (sample, y, x)
    ds = open_fields(path, group="run")
    assert detect_layout(path) == "hdf5"
    assert_values(ds["u"], ref["u"])
    assert_values(ds["nodims"], ref["v"])
    np.testing.assert_allclose(ds[Y].values, ref[Y].values)


def test_hdf5_is_read_one_chunk_at_a_time(tmp_path, monkeypatch):
    path = write_dummy_well_hdf5(tmp_path / "w.h5", N_SAMPLE, N_TIME, NY, NX)
    reads = []
    original = h5py.Dataset.__getitem__

    def spy(self, key):
        out = original(self, key)
        if "fields" in self.name:
            reads.append(np.size(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    ds = open_fields(path)
    assert reads == []  # opening reads no field data
    plane = ds["velocity_x"].isel(sample=1, time=2).values
    assert reads == [NY * NX]
    np.testing.assert_allclose(plane, dummy_dataset(N_SAMPLE, N_TIME, NY, NX)["u"][1, 2].values, atol=1e-6)


def test_hdf5_dataset_pickles_without_file_handles(tmp_path):
    path = write_dummy_pdebench_hdf5(tmp_path / "p.h5", "seeds", N_SAMPLE, N_TIME, NY, NX)
    ds = open_fields(path)
    restored = pickle.loads(pickle.dumps(ds))
    ds.close()
    np.testing.assert_array_equal(restored["data_1"].values, open_fields(path)["data_1"].values)


@pytest.mark.skipif(not _zarr_usable(), reason="the zarr package cannot be imported here")
def test_zarr_roundtrip(tmp_path):
    path = write_dummy_zarr(tmp_path / "f.zarr", N_SAMPLE, N_TIME, NY, NX)
    ds = open_fields(path)
    assert detect_layout(path) == "zarr"
    assert_values(ds["scalar"], dummy_dataset(N_SAMPLE, N_TIME, NY, NX)["scalar"])


def test_zarr_without_the_package_names_it(tmp_path, monkeypatch):
    store = tmp_path / "f.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr now raises ImportError
    with pytest.raises(ImportError, match="'zarr' package"):
        open_fields(store)


def test_glob_concatenates_files_along_sample_in_sorted_order(tmp_path):
    for k in (2, 0, 1):  # written out of order
        write_dummy_netcdf(tmp_path / f"part{k}.nc", 2, None, NY, NX, sample_offset=2 * k)
    ds = open_fields(str(tmp_path / "part*.nc"))
    ref = dummy_dataset(6, None, NY, NX)
    assert ds.sizes[SAMPLE] == 6
    assert_values(ds["scalar"], ref["scalar"])


def test_files_without_sample_concatenate_along_time(tmp_path):
    ref = dummy_dataset(1, 4, NY, NX).isel(sample=0, drop=True)
    paths = [tmp_path / "t0.nc", tmp_path / "t1.nc"]
    ref.isel(time=slice(0, 2)).to_netcdf(paths[0])
    ref.isel(time=slice(2, 4)).to_netcdf(paths[1])
    ds = open_fields(paths)
    assert ds["u"].dims == (TIME, Y, X)
    assert_values(ds["u"], ref["u"])


def test_variable_selection_keeps_the_requested_order(tmp_path):
    path = write_dummy_netcdf(tmp_path / "f.nc", N_SAMPLE, None, NY, NX)
    assert list(open_fields(path, ["scalar", "u"]).data_vars) == ["scalar", "u"]
    assert list(open_fields(path, "v").data_vars) == ["v"]


@pytest.mark.parametrize("writer", ["netcdf", "well"])
def test_missing_variable_lists_available_ones(tmp_path, writer):
    write = {"netcdf": write_dummy_netcdf, "well": write_dummy_well_hdf5}[writer]
    path = write(tmp_path / "file")
    with pytest.raises(KeyError, match=r"\['pressure'\].*available.*'vorticity'"):
        open_fields(path, ["vorticity", "pressure"])


def test_common_dimension_names_are_guessed(tmp_path):
    path = write_dummy_netcdf(tmp_path / "f.nc", N_SAMPLE, N_TIME, NY, NX,
                              dim_names={SAMPLE: "member", TIME: "t", Y: "lat", X: "lon"})
    ds = open_fields(path)
    assert ds["u"].dims == (SAMPLE, TIME, Y, X)
    assert_values(ds["u"], dummy_dataset(N_SAMPLE, N_TIME, NY, NX)["u"])


def test_unmappable_dimension_is_named_with_the_accepted_targets(tmp_path):
    path = write_dummy_netcdf(tmp_path / "f.nc", N_SAMPLE, None, NY, NX, dim_names={SAMPLE: "foo"})
    with pytest.raises(ValueError, match=r"'foo'.*sample, time, z, y, x"):
        open_fields(path)
    with pytest.raises(ValueError, match=r"'foo'.*mapped to 'bar'"):
        open_fields(path, dims={"foo": "bar"})
    assert open_fields(path, dims={"foo": SAMPLE})["u"].dims == (SAMPLE, Y, X)


def test_missing_files_and_unknown_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_fields(tmp_path / "absent.nc")
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_fields(str(tmp_path / "absent*.nc"))
    junk = tmp_path / "junk.dat"
    junk.write_text("not a field file")
    with pytest.raises(ValueError, match="unknown format"):
        open_fields(junk)
    with pytest.raises(ValueError, match="unknown layout 'grib'"):
        open_fields(write_dummy_netcdf(tmp_path / "f.nc"), layout="grib")


def test_forcing_a_layout_reads_hdf5_generically(tmp_path):
    path = write_dummy_pdebench_hdf5(tmp_path / "p.h5", "tensor", N_SAMPLE, N_TIME, NY, NX)
    # read as plain HDF5, (sample, time, x, y) arrays need their axes named
    ds = open_fields(path, "tensor", layout="hdf5", dims={Y: X, X: Y})
    assert_values(ds["tensor"], dummy_dataset(N_SAMPLE, N_TIME, NY, NX)["scalar"])
