"""The xarray side of the codec: a ``.dfz`` file as a lazy Dataset, and a Dataset to ``.dfz``.

    ds = dynfield.open_dfz("run.dfz")          # nothing decoded yet
    ds["vorticity"].isel(time=3).values        # decodes that one snapshot
    dynfield.to_dfz(ds, "run.dfz", rel_error=1e-2)

``open_dfz`` reads the header and the chunks' positions; each snapshot (one
chunk: every variable of its group) is decoded on access, through dask, by a
decoder made once per process. Variables, dimensions and coordinates carry
the names, dimension order and attributes of the file that was compressed,
as ``decompress_file`` writes them.
"""

import functools
import os
import struct
import threading
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

from .chunks import Coder
from .codec import compress_file, model_for
from .prior_coding import prior_for
from .container import ByteReader, ContainerReader, from_json
from .header import check_header

_CHUNK_FRAME = 1 + 8  # tag and length before each payload, CRC-32 after


def _chunk_index(reader):
    """{(group, snapshot): (offset, length)} of every chunk payload, read from the framing alone."""
    index, pos = {}, reader.chunks_start
    for _ in range(reader.header["n_chunks"]):
        reader.f.seek(pos + 1)
        (length,) = struct.unpack("<Q", reader.f.read(8))
        head = ByteReader(reader.f.read(min(length, 20)), "a chunk")
        index[(head.uvarint(), head.uvarint())] = (pos, length)
        pos += _CHUNK_FRAME + length + 4
    return index


@functools.lru_cache(maxsize=8)
def _opened(path, mtime, checkpoint, prior, pid):
    """(reader, its lock, decoder) of one file, made once per process (per file version).

    The open reader is shared by dask's threads; the lock keeps each seek and read together.
    `pid` is in the key so that a forked worker opens the file anew (a shared descriptor
    would share its position with the parent).
    """
    reader = ContainerReader(path)
    header = check_header(reader.header, path)
    return reader, threading.Lock(), Coder(model_for(header, checkpoint, path), header,
                                           prior=prior_for(header, prior, path))


def _decode(path, mtime, checkpoint, prior, offset):
    """{variable: (H, W)} of the chunk at `offset`, checksum verified."""
    reader, lock, coder = _opened(path, mtime, checkpoint, prior, os.getpid())
    with lock:
        payload = reader.chunk_at(offset)
    return coder.decode_chunk(payload)[2]


def _coordinate(name, meta):
    file_name = meta.get("source_name") or name
    dims = [dict(zip(meta["dims"], meta.get("source_dims") or meta["dims"]))[d] for d in meta["dims"]]
    var = xr.Variable(dims, from_json(meta["data"]), from_json(meta["attrs"]))
    return file_name, xr.conventions.decode_cf_variable(file_name, var)


def open_dfz(path, checkpoint=None, prior=None):
    """A ``.dfz`` file as a lazy xarray.Dataset (dask-backed, one snapshot per chunk).

    `checkpoint` and `prior` as for ``decompress_file``: by default the bundled
    tokenizer, or the one the file was made from where it still sits, and for
    a file whose tokens a prior coded, that prior where it still sits.
    """
    path = str(Path(path).resolve())
    mtime = Path(path).stat().st_mtime_ns
    with ContainerReader(path) as reader:
        header = check_header(reader.header, path)
        index = _chunk_index(reader)
    prior = None if prior is None else str(prior)
    _opened(path, mtime, checkpoint, prior, os.getpid())  # the models are checked now, not at the first access
    data_vars = {}
    for g, group in enumerate(header["groups"]):
        leading, (H, W) = group["shape"][:-2], group["shape"][-2:]
        snapshots = [dask.delayed(_decode, pure=True)(path, mtime, checkpoint, prior, index[(g, i)][0])
                     for i in range(int(np.prod(leading, dtype=np.int64)))]
        for v in group["variables"]:
            meta = header["variables"][v]
            dtype = np.dtype(meta["dtype"])
            blocks = [da.from_delayed(s[v], (H, W), dtype) for s in snapshots]
            array = da.stack(blocks).reshape(*leading, H, W) if blocks else da.zeros((*leading, H, W), dtype)
            rename = dict(zip(meta["dims"], meta.get("source_dims") or meta["dims"]))
            order = meta.get("source_order") or [rename[d] for d in meta["dims"]]
            var = xr.Variable([rename[d] for d in meta["dims"]], array, from_json(meta["attrs"]),
                              from_json(meta["encoding"]))
            data_vars[meta.get("source_name") or v] = var.transpose(*order)
    coords = dict(_coordinate(c, meta) for c, meta in header["coords"].items())
    attrs = {**from_json(header["attrs"]), "dynfield_model_sha256": header["model"]["sha256"]}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def to_dfz(ds, path, **options):
    """Compress an xarray.Dataset (its variables of at least two dims) to ``path``: ``compress_file``'s options."""
    return compress_file(ds, path, **options)

