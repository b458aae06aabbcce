"""netCDF output of a decoded ``.dfz`` file, laid out from its header and filled snapshot by snapshot."""

import netCDF4
import numpy as np
import xarray as xr

from dynfield.conventions import X, Y

from .container import from_json
from .header import FORMAT


def _netcdf_attrs(attrs):
    """Attributes netCDF can store: booleans become int8 (netCDF has no boolean type)."""
    return {k: (np.asarray(v, dtype=np.int8) if np.asarray(v).dtype == bool else v) for k, v in attrs.items()}


def _file_names(name, meta):
    """(file name, {our dim: file dim}, the file's dim order) of a header entry; headers before 3: ours."""
    dims = meta["dims"]
    source = meta.get("source_dims") or dims
    return meta.get("source_name") or name, dict(zip(dims, source)), list(meta.get("source_order") or source)


class NetCDFWriter:
    """A netCDF file laid out from a ``.dfz`` header, filled snapshot by snapshot.

    Variables, coordinates and dimensions get the names and the dimension
    order they had in the file that was compressed.
    """

    def __init__(self, path, header):
        self.nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        self.vars = {}
        entries = {**header["coords"], **header["variables"]}
        names = {n: _file_names(n, meta) for n, meta in entries.items()}
        sizes = {}
        for n, meta in entries.items():
            sizes.update((names[n][1][d], size) for d, size in zip(meta["dims"], meta["shape"]))
        for d, size in sizes.items():
            self.nc.createDimension(d, size)
        for c, meta in header["coords"].items():
            file_name, rename, order = names[c]
            data, attrs = from_json(meta["data"]), from_json(meta["attrs"])
            data = data.transpose([[rename[d] for d in meta["dims"]].index(o) for o in order])
            strings = data.dtype.kind in "OUS"
            var = self.nc.createVariable(file_name, str if strings else data.dtype, order,
                                         fill_value=attrs.pop("_FillValue", None))
            var.set_auto_maskandscale(False)
            var.setncatts(_netcdf_attrs(attrs))
            var[...] = data.astype(object) if strings else data
        auxiliary = [c for c, meta in header["coords"].items() if meta["dims"] != [c]]
        for v, meta in header["variables"].items():
            file_name, rename, order = names[v]
            attrs, encoding = from_json(meta["attrs"]), from_json(meta["encoding"])
            # CF links non-dimension coordinates to the variables they describe by name
            linked = [names[c][0] for c in auxiliary if set(header["coords"][c]["dims"]) <= set(meta["dims"])]
            if linked:
                attrs["coordinates"] = " ".join(linked)
            if meta["max_abs_error"] is not None:
                attrs["dynfield_max_abs_error"] = meta["max_abs_error"]
            shape, dtype = meta["shape"], np.dtype(meta["dtype"])
            # xarray's CF encoder gives the stored dtype, fill value and attributes
            probe = xr.Variable((Y, X), np.zeros(shape[-2:], dtype), attrs, encoding)
            probe = xr.conventions.encode_cf_variable(probe, name=v)
            spatial = {rename[Y], rename[X]}
            var = self.nc.createVariable(file_name, probe.dtype, order, fill_value=probe.attrs.pop("_FillValue", None),
                                         chunksizes=[sizes[d] if d in spatial else 1 for d in order])
            var.set_auto_maskandscale(False)
            var.setncatts(_netcdf_attrs(probe.attrs))
            ours = {file_dim: d for d, file_dim in rename.items()}
            self.vars[v] = (var, encoding, [ours[o] for o in order], meta["dims"][:-2])
        codec_attrs = {"dynfield_codec": f"{FORMAT} (.dfz)", "dynfield_model_sha256": header["model"]["sha256"]}
        if header["settings"]["fine_ratio"] is not None:
            codec_attrs["dynfield_fine_ratio"] = header["settings"]["fine_ratio"]
        self.nc.setncatts(_netcdf_attrs({**from_json(header["attrs"]), **codec_attrs}))

    def write(self, v, index, values):
        """Write the (H, W) field `values` of variable v at the leading `index` (a tuple, in our dim order)."""
        var, encoding, order, leading = self.vars[v]
        encoded = xr.conventions.encode_cf_variable(xr.Variable((Y, X), values, encoding=encoding), name=v).values
        at = dict(zip(leading, index))
        key = tuple(slice(None) if d in (Y, X) else at[d] for d in order)
        var[key] = encoded if order.index(Y) < order.index(X) else encoded.T

    def close(self):
        self.nc.close()
