"""HDF5 layouts that xarray does not read: The Well, PDEBench and plain HDF5 files.

Each reader returns (fields, coords, attrs): fields maps a name to (dims,
lazy array, attributes), for ``io`` to build the data set from.
"""

import os
import re
from pathlib import Path

import h5py
import numpy as np

from dynfield.conventions import SAMPLE, TIME, X, Y, Z

# HDF5 arrays without dimension scales or labels are read as (..., y, x) with
# leading sample, time and z axes, by number of dimensions.
POSITIONAL_DIMS = {2: (Y, X), 3: (SAMPLE, Y, X), 4: (SAMPLE, TIME, Y, X), 5: (SAMPLE, TIME, Z, Y, X)}

# HDF5 attributes that describe storage, not the variable.
H5_INTERNAL_ATTRS = {"DIMENSION_LIST", "DIMENSION_LABELS", "REFERENCE_LIST", "CLASS", "NAME",
                     "_Netcdf4Dimid", "_Netcdf4Coordinates"}
# PDEBench's compressible-flow variables and its coordinate names
PDEBENCH_CFD = ("density", "pressure", "Vx", "Vy", "Vz")
PDEBENCH_COORDS = {"x-coordinate": X, "y-coordinate": Y, "z-coordinate": Z, "t-coordinate": TIME}


class H5File:
    """An HDF5 file opened on first use in each process; pickles as its path."""

    def __init__(self, path):
        self.path = str(path)
        self._handle, self._pid = None, None

    def get(self):
        # a handle inherited through fork belongs to the parent: open our own
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._handle

    def close(self):
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])


class H5Array:
    """Lazy array over HDF5 datasets, read only where indexed (for dask.array.from_array).

    ``names`` is one dataset, or several equally shaped ones stacked along a new
    leading axis (PDEBench's one group per sample); ``component`` fixes the
    trailing axes (a vector or tensor component, a channel).
    """

    def __init__(self, file, names, component=()):
        self.file, self.names, self.component = file, list(names), tuple(component)
        dset = file.get()[self.names[0]]
        shape = dset.shape[:dset.ndim - len(self.component)]
        self.shape = (len(self.names), *shape) if len(self.names) > 1 else shape
        self.dtype, self.ndim = dset.dtype, len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        f = self.file.get()
        if len(self.names) == 1:
            return f[self.names[0]][key + self.component]
        rows = range(*key[0].indices(len(self.names)))
        return np.stack([f[self.names[i]][key[1:] + self.component] for i in rows])


def h5_attrs(obj):
    """Plain (string and number) attributes of an HDF5 object."""
    out = {}
    for k, v in obj.attrs.items():
        if k in H5_INTERNAL_ATTRS:
            continue
        v = v.decode() if isinstance(v, bytes) else v
        if isinstance(v, (str, int, float, np.number, np.bool_)):
            out[k] = v.item() if isinstance(v, (np.number, np.bool_)) else v
    return out


def read_well(path, group=None):
    """The Well: t{0,1,2}_fields/<name> shaped ([traj], [time], *space, *tensor) and dimensions/."""
    file = H5File(path)
    f = file.get()
    spatial = [s.decode() if isinstance(s, bytes) else str(s) for s in f["dimensions"].attrs["spatial_dims"]]
    fields = {}
    for order in range(3):
        grp = f.get(f"t{order}_fields")
        if grp is None:
            continue
        for name in grp.attrs.get("field_names", list(grp.keys())):
            name = name.decode() if isinstance(name, bytes) else str(name)
            dset = grp[name]
            varying = dset.attrs.get("dim_varying", [True] * len(spatial))
            file_dims = ((SAMPLE,) if dset.attrs.get("sample_varying", True) else ()) + \
                        ((TIME,) if dset.attrs.get("time_varying", True) else ()) + \
                        tuple(s for s, v in zip(spatial, varying) if v)
            attrs = h5_attrs(dset)
            # vector and tensor components are named name_x, name_xy, ... as The Well does
            for component in np.ndindex(*dset.shape[dset.ndim - order:]):
                suffix = "".join(spatial[i] for i in component)
                key = f"{name}_{suffix}" if suffix else name
                fields[key] = (file_dims, H5Array(file, [dset.name], component), attrs)
    # sample-varying coordinates (2-D) are left out
    coords = {ours: f["dimensions"][name][()] for name, ours in [*zip(spatial, spatial), ("time", TIME)]
              if name in f["dimensions"] and f["dimensions"][name].ndim == 1}
    return fields, coords, h5_attrs(f)


def pdebench_seeds(f):
    """Group names of PDEBench's one-group-per-sample layout ('0000/data', '0000/grid/x')."""
    seeds = sorted(k for k in f.keys() if re.fullmatch(r"\d+", k))
    return seeds if seeds and "data" in f[seeds[0]] and "grid" in f[seeds[0]] else []


def read_pdebench(path, group=None):
    """PDEBench: top-level arrays (sample, time, x, y[, z]) or per-sample groups (time, x, y[, z], channel)."""
    file = H5File(path)
    f = file.get()
    seeds = pdebench_seeds(f)
    if seeds:
        grid = f[seeds[0]]["grid"]
        spatial = [d for d in (X, Y, Z) if d in grid]
        coords = {d: grid[d][()] for d in spatial}
        if "t" in grid:
            coords[TIME] = grid["t"][()]
        names = [f"{s}/data" for s in seeds]
        shape = f[names[0]].shape
        file_dims = (SAMPLE, TIME, *spatial)
        if len(shape) == len(spatial) + 1:  # no channel axis
            return {"data": (file_dims, H5Array(file, names), {})}, coords, {}
        n_channels = shape[-1]
        fields = {("data" if n_channels == 1 else f"data_{c}"): (file_dims, H5Array(file, names, (c,)), {})
                  for c in range(n_channels)}
        return fields, coords, {}
    coords = {d: f[name][()] for name, d in PDEBENCH_COORDS.items() if name in f}
    spatial = tuple(d for d in (X, Y, Z) if d in coords)
    fields = {}
    for name, dset in f.items():
        if name in PDEBENCH_COORDS or not isinstance(dset, h5py.Dataset) or dset.ndim < 2:
            continue
        # (sample, time, *space) for solutions, (sample, *space) for static inputs such as Darcy's nu
        lead = (SAMPLE, TIME) if dset.ndim == len(spatial) + 2 else (SAMPLE,)
        fields[name] = ((*lead, *spatial)[-dset.ndim:], H5Array(file, [dset.name]), h5_attrs(dset))
        if TIME in coords and lead == (SAMPLE, TIME) and len(coords[TIME]) == dset.shape[1] + 1:
            coords[TIME] = coords[TIME][:-1]  # PDEBench stores the end time too; its readers drop it
    return fields, coords, h5_attrs(f)


def read_hdf5(path, group=None):
    """Generic HDF5: field datasets (2-D or more) in one group; dimension scales or labels name the axes."""
    file = H5File(path)
    grp = file.get()[group or "/"]
    fields, coords = {}, {}
    for name, dset in grp.items():
        if not isinstance(dset, h5py.Dataset):
            continue
        if dset.is_scale:
            if dset.ndim == 1:
                coords[name] = dset[()]
            continue
        if dset.ndim < 2:
            continue
        positional = POSITIONAL_DIMS.get(dset.ndim, tuple(f"dim_{i}" for i in range(dset.ndim)))
        file_dims = tuple(
            Path(axis[0].name).name if len(axis) else axis.label or positional[i]
            for i, axis in enumerate(dset.dims))
        fields[name] = (file_dims, H5Array(file, [dset.name]), h5_attrs(dset))
    return fields, coords, h5_attrs(grp)
