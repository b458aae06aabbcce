"""Tiny files in every layout the loaders accept, with known analytic content.

All writers store the same smooth periodic flow, so a test can open any
layout and compare against ``dummy_dataset``. With the stream function
psi = A sin(x + p) sin(2y), amplitude A = 1 + 0.5 s + 0.25 t and phase
p = 0.7 s + 0.3 t for sample s and time step t:

    u = dpsi/dy = 2 A sin(x + p) cos(2y)
    v = -dpsi/dx = -A cos(x + p) sin(2y)
    vorticity = dv/dx - du/dy = 5 psi
    scalar = A cos(x + 2y - p) + s

on the grid x_j = 2 pi j / nx, y_i = 2 pi i / ny (periodic, box 2 pi).
"""

import h5py
import numpy as np
import xarray as xr

from dynfield.conventions import CF_CONVENTIONS, COORD_ATTRS, SAMPLE, TIME, VARIABLE_ATTRS, X, Y
from dynfield.data.io import require_zarr

# PDEBench 2D CFD variables written by write_dummy_pdebench_hdf5, from the dummy flow.
PDEBENCH_CFD_FROM_DUMMY = {
    "Vx": lambda ds: ds["u"],
    "Vy": lambda ds: ds["v"],
    "density": lambda ds: 2.0 + 0.1 * ds["scalar"],
    "pressure": lambda ds: 1.0 + 0.1 * ds["vorticity"],
}


def dummy_dataset(n_sample=2, n_time=None, ny=16, nx=24, sample_offset=0):
    """The analytic flow of this module as an in-memory xarray.Dataset.

    Parameters
    ----------
    n_sample, ny, nx : int
        Sizes of the sample and spatial dimensions.
    n_time : int, optional
        Size of a time dimension; without it the dataset has none.
    sample_offset : int
        Index of the first sample (files of one collection get disjoint samples).

    Returns
    -------
    xarray.Dataset
        float32 ``u, v, vorticity, scalar`` with dims ``(sample, [time,] y, x)``
        and CF attributes.
    """
    s = np.arange(sample_offset, sample_offset + n_sample, dtype=np.float64)
    t = np.arange(n_time or 1, dtype=np.float64)
    x = 2 * np.pi * np.arange(nx) / nx
    y = 2 * np.pi * np.arange(ny) / ny
    S, T, Yg, Xg = np.meshgrid(s, t, y, x, indexing="ij")  # (S, T, Y, X)
    amp, phase = 1 + 0.5 * S + 0.25 * T, 0.7 * S + 0.3 * T
    psi = amp * np.sin(Xg + phase) * np.sin(2 * Yg)
    values = {
        "u": 2 * amp * np.sin(Xg + phase) * np.cos(2 * Yg),
        "v": -amp * np.cos(Xg + phase) * np.sin(2 * Yg),
        "vorticity": 5 * psi,
        "scalar": amp * np.cos(Xg + 2 * Yg - phase) + S,
    }
    dims = (SAMPLE, TIME, Y, X) if n_time else (SAMPLE, Y, X)
    data_vars = {k: (dims, (v if n_time else v[:, 0]).astype(np.float32), VARIABLE_ATTRS[k])
                 for k, v in values.items()}
    coords = {SAMPLE: (SAMPLE, s.astype(np.int64), COORD_ATTRS[SAMPLE]),
              Y: (Y, y, COORD_ATTRS[Y]), X: (X, x, COORD_ATTRS[X])}
    if n_time:
        coords[TIME] = (TIME, 0.1 * t, COORD_ATTRS[TIME])
    attrs = {"Conventions": CF_CONVENTIONS, "title": "dynfield dummy flow (analytic)"}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def write_dummy_netcdf(path, n_sample=2, n_time=None, ny=16, nx=24, sample_offset=0, dim_names=None):
    """Write ``dummy_dataset`` to a netCDF4 file; ``dim_names`` renames dims (e.g. {"y": "lat"})."""
    ds = dummy_dataset(n_sample, n_time, ny, nx, sample_offset)
    ds.rename(dim_names or {}).to_netcdf(path, engine="netcdf4")
    return path


def write_dummy_zarr(path, n_sample=2, n_time=None, ny=16, nx=24, sample_offset=0):
    """Write ``dummy_dataset`` to a zarr store (needs the zarr package)."""
    require_zarr()
    # format 2: consolidated metadata, readable by every zarr version, no format-3 warnings
    dummy_dataset(n_sample, n_time, ny, nx, sample_offset).to_zarr(path, mode="w", zarr_format=2)
    return path


def write_dummy_well_hdf5(path, n_trajectories=2, n_time=3, ny=16, nx=24):
    """Write the dummy flow in The Well's layout.

    ``t0_fields/vorticity`` and ``t0_fields/scalar`` are (trajectory, time, x, y),
    ``t1_fields/velocity`` is (trajectory, time, x, y, 2) with (u, v), and
    ``dimensions/`` holds ``time``, ``x``, ``y``; attributes follow The Well.
    """
    ds = dummy_dataset(n_trajectories, n_time, ny, nx)

    def xy(name):  # (S, T, Y, X) -> (S, T, X, Y), The Well's axis order
        return ds[name].values.transpose(0, 1, 3, 2)

    with h5py.File(path, "w") as f:
        f.attrs.update({"dataset_name": "dummy_flow", "grid_type": "cartesian", "n_spatial_dims": 2,
                        "n_trajectories": n_trajectories, "simulation_parameters": [],
                        "Conventions": CF_CONVENTIONS})
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = [X, Y]
        for name in (TIME, X, Y):
            dims.create_dataset(name, data=ds[name].values)
            dims[name].attrs.update({"sample_varying": False, "time_varying": name == TIME, **COORD_ATTRS[name]})
        bcs = f.create_group("boundary_conditions")
        for axis in (X, Y):
            bc = bcs.create_group(f"{axis}_periodic")
            bc.attrs.update({"associated_dims": [axis], "associated_fields": [], "bc_type": "PERIODIC",
                             "sample_varying": False, "time_varying": False})
            mask = np.zeros(ds.sizes[axis], dtype=bool)
            mask[[0, -1]] = True
            bc.create_dataset("mask", data=mask)
        f.create_group("scalars").attrs["field_names"] = []
        fields = {"t0_fields": {"vorticity": xy("vorticity"), "scalar": xy("scalar")},
                  "t1_fields": {"velocity": np.stack([xy("u"), xy("v")], axis=-1)},
                  "t2_fields": {}}
        for group_name, arrays in fields.items():
            group = f.create_group(group_name)
            group.attrs["field_names"] = list(arrays)
            for name, values in arrays.items():
                dset = group.create_dataset(name, data=values)
                dset.attrs.update({"dim_varying": [True, True], "sample_varying": True, "time_varying": True,
                                   "units": "1"})
    return path


def write_dummy_pdebench_hdf5(path, kind="cfd", n_sample=2, n_time=3, ny=16, nx=24):
    """Write the dummy flow in one of PDEBench's HDF5 layouts.

    kind ``"cfd"``: ``Vx, Vy, density, pressure`` (sample, time, x, y) from
    ``PDEBENCH_CFD_FROM_DUMMY``, with ``x-, y-, t-coordinate`` (the time
    coordinate one longer than the data: PDEBench also stores the end time).
    kind ``"tensor"``: ``tensor`` = scalar (sample, time, x, y) and ``nu`` =
    scalar at time 0 (sample, x, y).
    kind ``"seeds"``: groups ``0000, 0001, ...`` with ``data`` (time, x, y, 2)
    holding (scalar, vorticity) and ``grid/{x, y, t}``.
    """
    ds = dummy_dataset(n_sample, n_time, ny, nx)

    def xy(da):  # (S, T, Y, X) -> (S, T, X, Y), PDEBench's axis order
        return np.asarray(da.values, dtype=np.float32).transpose(0, 1, 3, 2)

    x, y, t = ds[X].values, ds[Y].values, ds[TIME].values
    with h5py.File(path, "w") as f:
        if kind == "cfd":
            for name, make in PDEBENCH_CFD_FROM_DUMMY.items():
                f.create_dataset(name, data=xy(make(ds)))
            f.create_dataset("t-coordinate", data=np.append(t, t[-1] + 0.1))
        elif kind == "tensor":
            f.create_dataset("tensor", data=xy(ds["scalar"]))
            f.create_dataset("nu", data=xy(ds["scalar"])[:, 0])
            f.create_dataset("t-coordinate", data=t)
        elif kind == "seeds":
            data = np.stack([xy(ds["scalar"]), xy(ds["vorticity"])], axis=-1)  # (S, T, X, Y, 2)
            for s in range(n_sample):
                group = f.create_group(f"{s:04d}")
                group.create_dataset("data", data=data[s])
                for name, values in ((X, x), (Y, y), ("t", t)):
                    group.create_dataset(f"grid/{name}", data=values)
            return path
        else:
            raise ValueError(f"unknown PDEBench kind {kind!r}; accepted: cfd, tensor, seeds")
        f.create_dataset("x-coordinate", data=x)
        f.create_dataset("y-coordinate", data=y)
    return path
