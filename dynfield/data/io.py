"""Open field files (netCDF, HDF5, The Well, PDEBench, zarr) as one lazy xarray.Dataset.

Every layout ends in the same shape: data variables with dimensions among
``sample, time, z, y, x`` (in that order), backed by dask arrays with one chunk
per sample and time step, so files larger than memory are streamed and a
training item reads only its own plane.

HDF5 datasets are read through a small picklable proxy that opens the file on
first access in each process: a dataset can be sent to DataLoader workers and
no open file handle is ever pickled or shared across a fork.
"""

import glob
import os
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import xarray as xr
from dask.base import tokenize

from dynfield.conventions import DIMS, SAMPLE, TIME, X, Y, Z

from .hdf5_layouts import PDEBENCH_CFD, pdebench_seeds, read_hdf5, read_pdebench, read_well

LAYOUTS = ("netcdf", "zarr", "well", "pdebench", "hdf5")

# File dimension names we recognise without being told (compared lower-case).
DIM_ALIASES = {
    SAMPLE: ("sample", "samples", "member", "ensemble", "realization", "realisation", "batch",
             "trajectory", "trajectories", "traj", "run", "seed", "case"),
    TIME: ("time", "t", "times", "step", "steps", "nt", "time_counter", "timestep", "frame"),
    Z: ("z", "depth", "lev", "level", "height", "altitude", "nz", "zc"),
    Y: ("y", "lat", "latitude", "ny", "yc", "nlat", "rlat"),
    X: ("x", "lon", "longitude", "nx", "xc", "nlon", "rlon"),
}
_ALIAS_TO_DIM = {alias: dim for dim, aliases in DIM_ALIASES.items() for alias in aliases}

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def open_fields(paths, variables=None, dims=None, *, layout=None, engine=None, chunks="auto", group=None):
    """Open one or several field files as a lazy xarray.Dataset.

    Parameters
    ----------
    paths : str, Path or list of them, or an xarray.Dataset
        A file, a glob pattern, or a list (or a data set already open, whose
        field variables are taken as a file's would be). Several files are concatenated along
        ``sample`` when they have it, else along ``time``, else along a new
        ``sample`` dimension (files in sorted order for a pattern).
    variables : str or list of str, optional
        Variables to keep, in this order; default all field variables.
    dims : dict, optional
        File dimension name -> one of ``sample, time, z, y, x``, e.g.
        ``{"lat": "y", "lon": "x", "member": "sample"}``. Common names are
        guessed; a dimension that is neither given nor guessed is an error.
    layout : str, optional
        Force the layout, one of ``LAYOUTS``; detected from the content otherwise:
        ``"well"`` (``t{0,1,2}_fields/`` + ``dimensions/``; vector and tensor
        fields become ``<name>_x``, ``<name>_xy``, ...), ``"pdebench"``
        (top-level ``Vx, density, tensor, ...`` shaped (sample, time, x, y),
        or groups ``0000/data`` whose channels become ``data_0, data_1, ...``),
        ``"hdf5"`` (datasets of 2 or more dims in one group, axes named by
        dimension scales or labels, else read as (..., y, x)), ``"netcdf"``,
        ``"zarr"``.
    engine : str, optional
        xarray engine for netCDF files (default ``"netcdf4"``).
    chunks : "auto", dict or None
        ``"auto"``: one chunk per sample and time step, whole in space. A dict
        of our dimension names to chunk sizes overrides it (-1 = whole).
        None: no dask where xarray reads the file itself (netCDF, zarr, an
        open data set): each selection reads just its part of the file, a
        tenth of the time dask takes for one 2D field; other layouts are
        chunked as ``"auto"``.
    group : str, optional
        Group inside a netCDF or generic HDF5 file.

    Returns
    -------
    xarray.Dataset
        Lazy (dask-backed, unless ``chunks=None``) variables with dims in
        ``sample, time, z, y, x`` order.
    """
    variables = [variables] if isinstance(variables, str) else variables
    if isinstance(paths, xr.Dataset):
        return _fields_view(paths, variables, dims or {}, chunks, "the dataset")
    files = _expand_paths(paths)
    parts = [_open_one(f, variables, dims or {}, layout, engine, chunks, group) for f in files]
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    concat_dim = SAMPLE if SAMPLE in first.dims else TIME if TIME in first.dims else SAMPLE
    ds = xr.concat(parts, dim=concat_dim, data_vars="all", coords="minimal", compat="override", join="exact")
    ds.set_close(lambda: [p.close() for p in parts])
    return ds


def detect_layout(path):
    """Name the layout of a file from its content: one of ``LAYOUTS``."""
    path = Path(path)
    if path.is_dir():
        if any((path / marker).exists() for marker in (".zgroup", ".zattrs", "zarr.json")):
            return "zarr"
        raise ValueError(f"{path} is a directory but not a zarr store (no .zgroup or zarr.json)")
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:3] == b"CDF":  # netCDF classic and 64-bit offset
        return "netcdf"
    if head != _HDF5_SIGNATURE:
        raise ValueError(f"unknown format for {path} (starts with {head!r}); "
                         f"accepted: netCDF, HDF5 (generic, The Well, PDEBench), zarr")
    with h5py.File(path, "r") as f:
        if "t0_fields" in f and "dimensions" in f:
            return "well"
        keys = set(f.keys())
        if ("x-coordinate" in keys and ("tensor" in keys or keys & set(PDEBENCH_CFD))) or pdebench_seeds(f):
            return "pdebench"
        if "_NCProperties" in f.attrs:
            return "netcdf"
    return "hdf5"


def _expand_paths(paths):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for p in map(str, paths):
        if glob.has_magic(p):
            matches = sorted(glob.glob(p))
            if not matches:
                raise FileNotFoundError(f"no files match the pattern {p!r}")
            files += matches
        elif not os.path.exists(p):
            raise FileNotFoundError(f"no such file: {p!r}")
        else:
            files.append(p)
    if not files:
        raise ValueError("no paths given")
    return files


def _open_one(path, variables, dims, layout, engine, chunks, group):
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; accepted: {', '.join(LAYOUTS)}")
    if layout in ("netcdf", "zarr"):
        return _open_xarray(path, layout, variables, dims, engine, chunks, group)
    reader = {"well": read_well, "pdebench": read_pdebench, "hdf5": read_hdf5}[layout]
    fields, coords, attrs = reader(path, group)
    return _build_dataset(path, fields, coords, attrs, variables, dims, chunks)


# --------------------------------------------------------------------------- dims and chunks

def _map_dims(file_dims, dims, where):
    """Our dimension names for a variable's file dimension names."""
    mapped = []
    for name in file_dims:
        target = dims.get(name, name if name in DIMS else _ALIAS_TO_DIM.get(str(name).lower()))
        if target not in DIMS:
            given = f"it is mapped to {target!r}, which" if name in dims else "it"
            raise ValueError(f"cannot map dimension {name!r} of {where}: {given} is not one of "
                             f"{', '.join(DIMS)}; pass dims={{{name!r}: <one of those>}}")
        mapped.append(target)
    if len(set(mapped)) != len(mapped):
        raise ValueError(f"dimensions {tuple(file_dims)} of {where} map to repeated names {tuple(mapped)}; "
                         f"fix it with the dims argument")
    return tuple(mapped)


def _chunk_sizes(our_dims, shape, chunks):
    """One chunk per sample and time step, whole in space, unless overridden."""
    wanted = {SAMPLE: 1, TIME: 1} if chunks in ("auto", None) else dict(chunks)
    sizes = [wanted.get(d, -1) for d in our_dims]
    return tuple(n if size <= 0 else min(size, n) for size, n in zip(sizes, shape))


def _select(available, variables, path):
    if variables is None:
        return list(available)
    missing = [v for v in variables if v not in available]
    if missing:
        raise KeyError(f"variable(s) {missing} not in {path}; available: {sorted(available)}")
    return list(variables)


def _canonical(ds):
    return ds.transpose(*[d for d in DIMS if d in ds.dims])


# --------------------------------------------------------------------------- netCDF and zarr

def require_zarr():
    """Import zarr or say clearly that it is needed."""
    try:
        import zarr
    except Exception as err:  # a broken install fails with errors other than ImportError
        raise ImportError(f"reading or writing zarr stores needs the 'zarr' package, which could "
                          f"not be imported ({type(err).__name__}: {err})") from err
    return zarr


def _open_xarray(path, layout, variables, dims, engine, chunks, group):
    if layout == "zarr":
        require_zarr()
        engine = "zarr"
    ds = xr.open_dataset(path, engine=engine or "netcdf4", chunks=None, decode_coords="all", group=group)
    out = _fields_view(ds, variables, dims, chunks, path)
    out.set_close(ds.close)
    return out


def _fields_view(ds, variables, dims, chunks, where):
    """The field variables of an xarray.Dataset under our dim names, in our order, chunked lazily (unless
    `chunks` is None)."""
    fields = [v for v, arr in ds.data_vars.items() if arr.ndim >= 2]
    keep = _select(fields, variables, where)
    renames = {}
    for v in keep:
        renames.update(zip(ds[v].dims, _map_dims(ds[v].dims, dims, f"variable {v!r} in {where}")))
    # selecting the variables keeps only the coordinates on their dimensions
    out = ds[keep].rename(renames)
    if chunks is not None:
        out = out.chunk({d: _chunk_sizes((d,), (n,), chunks)[0] for d, n in out.sizes.items()})
    out = _canonical(out)
    _remember_source_names(out, ds, renames)
    return out


def _remember_source_names(out, source, renames):
    """Record the file's own names in each variable's encoding, so a writer can give them back.

    ``source_dims``: the file's name of each of the variable's dims (in our
    order); ``source_order``: the file's dims in the file's order;
    ``source_name`` (coordinates): the coordinate's name in the file.
    """
    theirs = {ours: file_dim for file_dim, ours in renames.items()}
    for name, var in out.variables.items():
        var.encoding["source_dims"] = tuple(theirs.get(d, d) for d in var.dims)
        var.encoding["source_name"] = theirs.get(name, name)
        original = source.variables.get(var.encoding["source_name"])
        var.encoding["source_order"] = tuple(original.dims) if original is not None else var.encoding["source_dims"]


# --------------------------------------------------------------------------- HDF5 through h5py

def _build_dataset(path, fields, coords, attrs, variables, dims, chunks):
    """fields: name -> (file dims, H5Array, attrs); coords: file dim -> 1-D values."""
    keep = _select(fields, variables, path)
    data_vars, used = {}, set()
    for v in keep:
        file_dims, array, var_attrs = fields[v]
        ours = _map_dims(file_dims, dims, f"variable {v!r} in {path}")
        used |= set(zip(file_dims, ours))
        chunk = _chunk_sizes(ours, array.shape, chunks)
        name = "h5-" + tokenize(path, os.path.getmtime(path), v, chunk)
        data = da.from_array(array, chunks=chunk, name=name, meta=np.empty((0,) * array.ndim, array.dtype))
        data_vars[v] = xr.Variable(ours, data, var_attrs)
    renames = dict(used)
    coord_vars = {renames[d]: xr.Variable(renames[d], values) for d, values in coords.items() if d in renames}
    ds = xr.Dataset(data_vars, coords=coord_vars, attrs=attrs)
    # a coordinate whose length disagrees with its dimension (PDEBench stores
    # time edges in some files) is dropped rather than guessed
    ds = ds.drop_vars([c for c, var in coord_vars.items() if var.size != ds.sizes[c]])
    files = {id(a.file): a.file for _, a, _ in fields.values()}
    ds.set_close(lambda: [f.close() for f in files.values()])
    return _canonical(ds)
