"""dynfield as a numcodecs codec: error-bounded compression of zarr chunks.

    import numcodecs
    codec = numcodecs.get_codec({"id": "dynfield", "rel_error": 1e-2})
    ds.to_zarr(store, zarr_format=2, encoding={"vorticity": {"compressors": [codec], "chunks": (1, 256, 256)}})

A chunk of any shape with at least two dimensions is coded as its 2D fields
(the last two axes; leading axes are iterated), each exactly as the ``.dfz``
codec codes a variable with a one-channel tokenizer: the same ``Coder``
builds the tokens, chooses between the tokens' reconstruction and none as the
prediction, and codes the residual within the bound with the shortest of the
integer, SPERR and SZ3 coders. Non-finite values (NaN land, fill values read
as NaN) come back bit for bit. Token streams are range coded under the
codebook's usage (there is no file to calibrate on).

Chunk layout: magic ``DFZC``, format version, the first 8 bytes of the
model's SHA-256, dtype, shape, the absolute bound used (NaN: none), one
``.dfz`` chunk payload per 2D field, CRC-32 of all that. A chunk made by
another model is refused, as is a damaged one.

Bounds: ``max_abs_error`` holds everywhere. ``rel_error`` is relative to each
chunk's own range of finite values (a chunk sees nothing else); chunks of
one 2D field each, or ``max_abs_error`` from the data set's range, give
every field its own bound as the ``.dfz`` codec does.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import xarray as xr
from numcodecs.abc import Codec
from numcodecs.compat import ensure_ndarray_like, ndarray_copy

from dynfield import checkpoint as ckpt
from dynfield import paths
from dynfield.checkpoint import weights_hash
from dynfield.conventions import SAMPLE, X, Y

from .chunks import Coder
from .container import ByteReader, ByteWriter, CodecError
from .field import default_checkpoint
from .header import check_bound, check_bound_arguments, check_rate, make_header

MAGIC = b"DFZC"
VERSION = 1
HASH_BYTES = 8  # of the model's SHA-256 in every chunk: enough to tell models apart, the config has it whole
BUNDLED = "bundled"
VARIABLE = "field"
_MODELS = {}  # resolved checkpoint path -> (model, state, sha256): loaded once per process
_DERIVED = {}  # sha256 -> what every chunk's coder derives from the model (its float64 copy, usage model)


def load(model):
    """(model, state, sha256) of a tokenizer checkpoint path or ``"bundled"``, cached per process."""
    path = str(Path(default_checkpoint() if model == BUNDLED else model).resolve())
    if path not in _MODELS:
        tokenizer, state = ckpt.load_model(path)
        if state.get("kind") != "tokenizer":
            raise CodecError(f"{path} is a {state.get('kind')!r} checkpoint, not a tokenizer")
        if state["model_config"]["in_channels"] != 1:
            raise CodecError(f"{path} codes {state['model_config']['in_channels']} channels jointly; the zarr codec "
                             f"codes one array at a time and needs a one-channel (channel-agnostic) tokenizer")
        _MODELS[path] = tokenizer, state, weights_hash(tokenizer)
    return _MODELS[path]


def _source(model, sha256):
    """The checkpoint `model` stands for: a store made with a formerly bundled tokenizer names ``"bundled"``
    and that tokenizer's hash, and decodes with it."""
    retired = paths.retired_tokenizer(sha256) if model == BUNDLED and sha256 is not None else None
    return str(retired) if retired is not None and retired.is_file() else model


def _fields(shape, dtype, values=None):
    """The (n, H, W) fields of a chunk as the one-variable data set the ``.dfz`` coder reads."""
    n = int(np.prod(shape[:-2], dtype=np.int64))
    data = np.zeros((n, *shape[-2:]), dtype) if values is None else values.reshape(n, *shape[-2:])
    return xr.Dataset({VARIABLE: ((SAMPLE, Y, X), data)})


class Dynfield(Codec):
    """Error-bounded (or token-only) compression of array chunks with a dynfield tokenizer.

    Parameters
    ----------
    max_abs_error, rel_error : the bound, absolute or relative to each
        chunk's range of finite values; neither: tokens only (lossy, no bound).
    model : ``"bundled"`` (the tokenizer shipped with dynfield) or the path of
        a one-channel tokenizer checkpoint.
    fine_ratio, bits_per_value, psnr : how tokens are chosen, as for
        ``compress_file`` (at most one).
    model_sha256 : the model's weights hash; filled in from `model`, and
        checked against it when the codec is rebuilt from its config, so a
        store is never decoded with other weights.
    """

    codec_id = "dynfield"

    def __init__(self, max_abs_error=None, rel_error=None, model=BUNDLED, fine_ratio=None, bits_per_value=None,
                 psnr=None, model_sha256=None):
        given = check_bound_arguments(max_abs_error, rel_error)
        if given is not None:
            check_bound("max_abs_error" if rel_error is None else "rel_error", given)
        self.model = str(model)
        self._source = _source(self.model, model_sha256)
        tokenizer, _, sha = load(self._source)
        if model_sha256 is not None and model_sha256 != sha:
            raise CodecError(f"the codec's config names the model of SHA-256 {model_sha256[:16]}..., but {self.model} "
                             f"holds {sha[:16]}...; give the checkpoint the data were compressed with")
        self.model_sha256 = sha
        self.rate = check_rate(tokenizer, fine_ratio=fine_ratio, bits_per_value=bits_per_value, psnr=psnr)
        self.max_abs_error = None if max_abs_error is None else float(max_abs_error)
        self.rel_error = None if rel_error is None else float(rel_error)

    def get_config(self):
        return {"id": self.codec_id, "max_abs_error": self.max_abs_error, "rel_error": self.rel_error,
                "model": self.model, **self.rate, "model_sha256": self.model_sha256}

    def _coder(self, ds, max_abs_error, rel_error):
        tokenizer, state, sha = load(self._source)
        coder = Coder(tokenizer, make_header(ds, tokenizer, state, self.rate, max_abs_error, rel_error, sha),
                      shared=_DERIVED.setdefault(sha, {}))
        coder.entropy = {VARIABLE: coder.usage_model()}
        return coder

    def encode(self, buf):
        x = np.ascontiguousarray(ensure_ndarray_like(buf))
        if x.ndim < 2 or 0 in x.shape:
            raise CodecError(f"the dynfield codec codes chunks of 2D fields (at least two dimensions, no empty "
                             f"axis); got shape {x.shape}")
        ds = _fields(x.shape, x.dtype, x)
        coder = self._coder(ds, self.max_abs_error, self.rel_error)
        bound = coder.bound(VARIABLE)
        w = ByteWriter()
        w.extend(MAGIC)
        w.uvarint(VERSION)
        w.extend(bytes.fromhex(self.model_sha256)[:HASH_BYTES])
        w.blob(np.dtype(x.dtype).newbyteorder("<").str.encode())
        w.uvarint(x.ndim)
        for s in x.shape:
            w.uvarint(s)
        w.f64(np.nan if bound is None else bound)
        for i in range(len(ds[SAMPLE])):
            w.blob(coder.chunk(coder.encode_snapshot(ds, 0, i)))
        w.extend(struct.pack("<I", zlib.crc32(w.buf)))
        return w.bytes()

    def decode(self, buf, out=None):
        data = bytes(memoryview(ensure_ndarray_like(buf)).cast("B"))
        if len(data) < len(MAGIC) + HASH_BYTES + 4 or data[:4] != MAGIC:
            raise CodecError("not a dynfield chunk (bad magic bytes)")
        if struct.unpack("<I", data[-4:])[0] != zlib.crc32(data[:-4]):
            raise CodecError("a dynfield chunk fails its checksum (damaged data)")
        r = ByteReader(data[4:-4], "the dynfield chunk")
        version = r.uvarint()
        if version != VERSION:
            raise CodecError(f"dynfield chunk format {version}; this dynfield reads {VERSION}")
        sha = r.raw(HASH_BYTES).hex()
        if not self.model_sha256.startswith(sha):
            raise CodecError(f"this chunk was coded by the model of SHA-256 {sha[:16]}..., but the codec holds "
                             f"{self.model_sha256[:16]}... ({self.model}); decode with the checkpoint it was made with")
        dtype = np.dtype(r.blob().decode())
        shape = tuple(r.uvarint() for _ in range(r.uvarint()))
        bound = r.f64()
        ds = _fields(shape, dtype)
        coder = self._coder(ds, None if np.isnan(bound) else bound, None)
        fields = np.empty((len(ds[SAMPLE]), *shape[-2:]), dtype)
        seen = set()
        for _ in range(len(fields)):
            _, i, values = coder.decode_chunk(r.blob())
            if i in seen:
                raise CodecError(f"a dynfield chunk holds field {i} twice (damaged data)")
            seen.add(i)
            fields[i] = values[VARIABLE]
        r.done()
        return ndarray_copy(fields.reshape(shape), out)
