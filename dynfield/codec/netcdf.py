"""netCDF output of a decoded ``.dfz`` file, laid out from its header and filled snapshot by snapshot."""

import itertools

import netCDF4
import numpy as np
import xarray as xr

from dynfield.conventions import X, Y

from .container import from_json
from .header import FORMAT


def _netcdf_attrs(attrs):
    """Attributes netCDF can store: booleans become int8 (netCDF has no boolean type)."""
    return {k: (np.asarray(v, dtype=np.int8) if np.asarray(v).dtype == bool else v) for k, v in attrs.items()}


class NetCDFWriter:
    """A netCDF file laid out from a ``.dfz`` header, filled snapshot by snapshot."""

    def __init__(self, path, header):
        self.nc = netCDF4.Dataset(path, "w", format="NETCDF4")
        self.vars = {}
        sizes = {}
        for meta in itertools.chain(header["coords"].values(), header["variables"].values()):
            sizes.update(zip(meta["dims"], meta["shape"]))
        for d, n in sizes.items():
            self.nc.createDimension(d, n)
        for name, meta in header["coords"].items():
            data, attrs = from_json(meta["data"]), from_json(meta["attrs"])
            strings = data.dtype.kind in "OUS"
            var = self.nc.createVariable(name, str if strings else data.dtype, meta["dims"],
                                         fill_value=attrs.pop("_FillValue", None))
            var.set_auto_maskandscale(False)
            var.setncatts(_netcdf_attrs(attrs))
            var[...] = data.astype(object) if strings else data
        auxiliary = [c for c, meta in header["coords"].items() if meta["dims"] != [c]]
        for v, meta in header["variables"].items():
            attrs, encoding = from_json(meta["attrs"]), from_json(meta["encoding"])
            # CF links non-dimension coordinates to the variables they describe by name
            linked = [c for c in auxiliary if set(header["coords"][c]["dims"]) <= set(meta["dims"])]
            if linked:
                attrs["coordinates"] = " ".join(linked)
            if meta["max_abs_error"] is not None:
                attrs["dynfield_max_abs_error"] = meta["max_abs_error"]
            shape, dtype = meta["shape"], np.dtype(meta["dtype"])
            # xarray's CF encoder gives the stored dtype, fill value and attributes
            probe = xr.Variable((Y, X), np.zeros(shape[-2:], dtype), attrs, encoding)
            probe = xr.conventions.encode_cf_variable(probe, name=v)
            var = self.nc.createVariable(v, probe.dtype, meta["dims"], fill_value=probe.attrs.pop("_FillValue", None),
                                         chunksizes=[1] * (len(shape) - 2) + shape[-2:])
            var.set_auto_maskandscale(False)
            var.setncatts(_netcdf_attrs(probe.attrs))
            self.vars[v] = (var, encoding)
        codec_attrs = {"dynfield_codec": f"{FORMAT} (.dfz)", "dynfield_model_sha256": header["model"]["sha256"]}
        if header["settings"]["fine_ratio"] is not None:
            codec_attrs["dynfield_fine_ratio"] = header["settings"]["fine_ratio"]
        self.nc.setncatts(_netcdf_attrs({**from_json(header["attrs"]), **codec_attrs}))

    def write(self, v, index, values):
        """Write the (H, W) field `values` of variable v at the leading `index` (a tuple)."""
        var, encoding = self.vars[v]
        encoded = xr.conventions.encode_cf_variable(xr.Variable((Y, X), values, encoding=encoding), name=v)
        var[tuple(index) + (slice(None), slice(None))] = encoded.values

    def close(self):
        self.nc.close()
