"""Compress a field file to a zarr store with the dynfield codec, chunk by chunk, on dask.

    compress_to_zarr("big.nc", "big.zarr", rel_error=1e-2, client=Client(...))

The input (netCDF or zarr, read by xarray) is opened lazily, one 2D field
(the last two dimensions, whatever their names) per dask chunk, and keeps
its names, dimension order, coordinates and attributes; each variable gets
its own ``Dynfield`` codec (a relative bound becomes the variable's absolute
bound over the whole file, as in the ``.dfz`` codec), and
``Dataset.to_zarr`` writes the store, every chunk compressed where dask runs
it: on the workers of a ``dask.distributed`` client when one is given, in
this process otherwise. Each worker loads the model once (the codec caches it
per process), reads netCDF without a chunk cache (``reading``) and holds a
few snapshots at a time, so its memory does not grow with the data. The store is zarr format 2 (the format whose
compressors see the chunk's shape), written under a temporary name and
renamed when complete.
"""

import shutil
import time
from pathlib import Path

import numpy as np

import xarray as xr

from . import residual
from .container import CodecError
from .header import KEPT_ENCODING, bounds
from .numcodecs_codec import BUNDLED, Dynfield
from .reading import no_chunk_cache


def _progress(futures, enabled):
    if enabled:
        from distributed import progress

        progress(futures)


def _open(path, variables):
    """The variables to compress (default: every one of at least two dimensions), lazily, one field per chunk."""
    path = Path(path)
    ds = xr.open_zarr(path) if path.suffix == ".zarr" or (path / ".zgroup").exists() else \
        xr.open_dataset(path, chunks={})
    fields = [v for v in ds.data_vars if ds[v].ndim >= 2]
    if variables is None:
        variables = fields
    unknown = [v for v in variables if v not in fields]
    if unknown:
        raise CodecError(f"{path} has no 2D field variables {unknown}; it has {fields}")
    ds = ds[list(variables)]
    for v in variables:
        residual.check_dtype(ds[v].dtype, f"variable {v!r}")
        ds[v] = ds[v].chunk({d: (1 if i < ds[v].ndim - 2 else -1) for i, d in enumerate(ds[v].dims)})
    return ds


def compress_to_zarr(in_path, out_path, checkpoint=None, variables=None, max_abs_error=None, rel_error=None,
                     client=None, progress=True, **rate):
    """Write `in_path`'s variables to the zarr store `out_path`, compressed by dynfield.

    Parameters as for ``compress_file`` (``rate``: fine_ratio, bits_per_value
    or psnr); `client` is a ``distributed.Client`` to compress on, or None.

    Returns
    -------
    dict : bytes of the store, values, input bytes, compression ratio, seconds.
    """
    start = time.perf_counter()
    out_path = Path(out_path)
    if out_path.exists():
        raise CodecError(f"{out_path} exists; remove it or choose another store")
    model = BUNDLED if checkpoint is None else str(checkpoint)
    with no_chunk_cache(), _open(in_path, variables) as ds:
        names = list(ds.data_vars)
        per_variable = bounds(ds, names, max_abs_error, rel_error)
        encoding = {}
        for v in names:
            codec = Dynfield(max_abs_error=per_variable[v], model=model, **rate)
            chunks = (1,) * (ds[v].ndim - 2) + ds[v].shape[-2:]
            kept = {k: ds[v].encoding[k] for k in KEPT_ENCODING if k in ds[v].encoding}
            ds[v].encoding = {}
            encoding[v] = {"compressors": [codec], "chunks": chunks, **kept}
        for c in ds.coords:
            ds[c].encoding = {}
        tmp = out_path.with_name(out_path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            delayed = ds.to_zarr(tmp, zarr_format=2, encoding=encoding, mode="w", compute=False, consolidated=True)
            if client is None:
                delayed.compute()
            else:
                from .workers import prepare

                prepare(client)
                future = client.compute(delayed)
                _progress(future, progress)
                future.result()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        tmp.rename(out_path)
        n_values = sum(int(np.prod(ds[v].shape)) for v in names)
        input_bytes = sum(int(np.prod(ds[v].shape)) * ds[v].dtype.itemsize for v in names)
    size = sum(f.stat().st_size for f in out_path.rglob("*") if f.is_file())
    seconds = time.perf_counter() - start
    return {"path": str(out_path), "bytes": size, "values": n_values, "input_bytes": input_bytes,
            "bits_per_value": 8 * size / n_values, "compression_ratio": input_bytes / size, "seconds": seconds,
            "input_mb_per_s": input_bytes / 1e6 / seconds}
