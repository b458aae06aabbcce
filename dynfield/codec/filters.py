"""SPERR and SZ3, the error-bounded compressors of the HDF5 filter world, as residual coders.

Both come as HDF5 filters in ``hdf5plugin``. A 2D float64 array is written as
one chunk of a dataset in an in-memory HDF5 file (HDF5's own memory driver,
without a chunk cache, so that the chunk goes through the filter at once)
and the chunk's compressed bytes are read back raw (``read_direct_chunk``);
decoding writes those bytes as the chunk of a dataset with the same filter
(``write_direct_chunk``) and reads the array. Only the chunk's bytes are
kept, none of HDF5's own metadata, so a field costs what the compressor
produces.

Each guarantees an absolute error bound on what it codes; the value layer
(``residual``) still checks every decoded value, so a compressor that misses
its bound costs escapes, never accuracy.
"""

import uuid

import h5py
import hdf5plugin
import numpy as np

from .container import CodecError

FILTERS = ("sperr", "sz3")
MIN_SIDE = 4  # SPERR refuses a field one value wide
MAX_STEPS = 2.0**32  # largest |r| / bound: beyond it the integer coder does as well, and SPERR can crash
MAX_MAGNITUDE = 1e100  # SPERR overflows (and can crash the process) on values near the float64 limit


def _filter(name, bound):
    make = {"sperr": hdf5plugin.Sperr, "sz3": hdf5plugin.SZ3}[name]
    return make(absolute=float(bound))


def _memory_file():
    """A new HDF5 file in memory, never written to disk, without a chunk cache (so a chunk written is filtered
    at once, and a chunk read comes through the filter)."""
    return h5py.File(uuid.uuid4().hex, "w", driver="core", backing_store=False, rdcc_nbytes=0)


def fits(r_HW, bound):
    """Whether the filters may be asked to code `r_HW` at `bound`: the range where they are safe.

    Outside it the compressors fail or crash the process (which no exception
    catches), so the value layer does not call them there.
    """
    if min(r_HW.shape) < MIN_SIDE or not MAX_MAGNITUDE**-1 <= bound <= MAX_MAGNITUDE:
        return False
    top = float(np.abs(r_HW).max())
    return top <= MAX_MAGNITUDE and top / bound <= MAX_STEPS


def encode(r_HW, name, bound):
    """Bytes of the float64 array `r_HW` under filter `name` with absolute error `bound` (> 0)."""
    r_HW = np.ascontiguousarray(r_HW, dtype=np.float64)
    with _memory_file() as f:
        d = f.create_dataset("r", data=r_HW, chunks=r_HW.shape, **_filter(name, bound))
        mask, data = d.id.read_direct_chunk((0,) * r_HW.ndim)
    if mask:
        raise CodecError(f"the {name} filter left the chunk uncompressed")
    return bytes(data)


def decode(data, name, shape, bound):
    """The float64 array of `shape` that ``encode`` coded as `data`."""
    shape = tuple(int(s) for s in shape)
    try:
        with _memory_file() as f:
            d = f.create_dataset("r", shape=shape, dtype=np.float64, chunks=shape, **_filter(name, bound))
            d.id.write_direct_chunk((0,) * len(shape), data, 0)
            return d[()]
    except (OSError, ValueError) as e:
        raise CodecError(f"the {name} section does not decode ({e}; corrupt file)") from None
