"""The dynfield codec: fields -> tokens -> bytes, with an optional guaranteed error bound.

Field level, in CompressAI's style: ``compress_field(model, x)`` gives
``{"strings", "shape"}`` and ``decompress_field(model, strings, shape)`` the
reconstruction. File level: ``compress_file``, ``decompress_file`` and
``inspect_file`` stream a data set snapshot by snapshot through the
``.dfz`` container (see ``container``).

How a file is coded
-------------------
- Channels. A tokenizer with one input channel is channel-agnostic: every
  variable is coded on its own, each 2D field normalised by its own mean and
  standard deviation (stored per field, float64). A tokenizer with C > 1
  channels codes its own variables jointly, normalised with the statistics
  of its checkpoint.
- Chunks. Variables with the same dimensions and shape form a group; one
  chunk holds one snapshot (one index of the leading sample/time/z
  dimensions) of one group. Fields smaller than two coarsest regions are
  padded by replication before tokenizing and cropped after decoding.
- Tokens are range coded under per-file count models (per variable, or per
  joint group), estimated on the first ``CALIBRATION_CHUNKS`` snapshots of
  each group plus one count per symbol, and stored in the header.
- Values. Non-finite values are kept exactly and replaced by the field mean
  before the tokenizer sees them. With an error bound E, the residual
  against the token reconstruction is coded so that every decoded value is
  within E of the original (see ``residual``).

Determinism of the error bound
------------------------------
The residual is taken against a reconstruction that the decoder must
reproduce. The tokenizer's usual float32 decode differs between devices and
CPU kernels by ~1e-7 relative, far more than a small bound allows, so
fields with an error bound are reconstructed by a float64 copy of the
model, on both sides. Float64 reconstructions agree across devices and
machines to ~1e-13 relative, and the residual layer's margin (E / 1024)
absorbs that: the bound holds wherever the file is decoded, for any bound
above ~1e-10 of the field's spread. The price is a float64 decode of every
bounded field (a GPU with fast float64 helps). Fields without a bound are
decoded in float32.
"""

import concurrent.futures
import copy
import hashlib
import itertools
import multiprocessing
import time
from collections import deque
from contextlib import closing
from pathlib import Path

import dask
import netCDF4
import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm.auto import tqdm

from dynfield import checkpoint as ckpt
from dynfield import paths
from dynfield.conventions import SAMPLE, TIME, X, Y, Z
from dynfield.data import field_stats, open_fields
from dynfield.models import Tokens
from dynfield.models.allocation import rd_allocate

from . import residual
from .container import (
    ByteReader,
    ByteWriter,
    CodecError,
    ContainerReader,
    ContainerWriter,
    atomic_output,
    from_json,
    to_json,
)
from .entropy import FieldTokens, TokenCounts, TokenModel, decode_tokens, encode_tokens, token_information_bits

FORMAT = "dynfield-dfz"
CALIBRATION_CHUNKS = 16
CLIP = 1e4  # normalised values are clipped here before the tokenizer; the residual carries the rest
PER_VARIABLE, JOINT = "per-variable", "joint"
SNAPSHOT_CHUNKS = {SAMPLE: 1, TIME: 1, Z: 1}  # reading one 2D field reads nothing else
RATE_SETTINGS = ("fine_ratio", "bits_per_value", "psnr")  # how the tokens of a field are chosen
KEPT_ENCODING = ("_FillValue", "missing_value")  # masking survives; packing (scale_factor, ...) does not


def weights_hash(model):
    """SHA-256 (hex) of a model's state dict: names, dtypes, shapes and bytes of every tensor.

    A single-stage quantizer's buffers are named as before residual stages
    existed (``quantizer.embed``, not ``quantizer.stages.0.embed``), so files
    made with such a model still find it.
    """
    state = model.state_dict()
    if len(getattr(model.quantizer, "stages", ())) == 1:
        state = {k.replace("quantizer.stages.0.", "quantizer.", 1): v for k, v in state.items()}
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_checkpoint():
    """Path of the bundled default tokenizer, ``dynfield/pretrained/tokenizer.pt``."""
    path = paths.BUNDLED_TOKENIZER
    if not path.is_file():
        raise CodecError(f"no checkpoint given and the bundled default tokenizer is not installed ({path}); "
                         f"pass a tokenizer checkpoint")
    return path


# --------------------------------------------------------------------------- field level

def _token_shape(shape, factors):
    """Shape the tokenizer sees for an (H, W) field: at least two coarsest regions each way.

    One region would do for the padding, but then the coarsest feature map is
    1 x 1, where a group norm with one channel per group has a single value.
    """
    return max(shape[0], 2 * factors[-1]), max(shape[1], 2 * factors[-1])


def _grid(shape, factors):
    """(Hc, Wc): the coarsest grid of an (H, W) field."""
    H, W = _token_shape(shape, factors)
    return -(-H // factors[-1]), -(-W // factors[-1])


@torch.no_grad()
def tokenize(model, x_BCHW, fine_ratio=None, bits_per_value=None, psnr=None):
    """Tokens of normalised fields (B, C, H, W); fields under two coarsest regions are padded by replication.

    The router chooses the grains (at `fine_ratio` if given) and every region
    gets the full depth, unless `bits_per_value` or `psnr` asks for the
    rate-distortion allocation of grains and depths (``rd_allocate``).
    """
    H, W = x_BCHW.shape[-2:]
    Ht, Wt = _token_shape((H, W), model.factors)
    if (Ht, Wt) != (H, W):
        x_BCHW = F.pad(x_BCHW, (0, Wt - W, 0, Ht - H), mode="replicate")
    if bits_per_value is not None or psnr is not None:
        return rd_allocate(model, x_BCHW, bits_per_value=bits_per_value, psnr=psnr)
    return model.encode(x_BCHW, fine_ratio=fine_ratio)


def _tokens_to_numpy(tokens):
    """One ``FieldTokens`` (int64 numpy) per sample of a batch of ``Tokens``."""
    grain, depth = tokens.grain.cpu().numpy(), tokens.depth.cpu().numpy()
    codes = [c.cpu().numpy() for c in tokens.stage_codes()]  # (B, S, Hk, Wk) per level
    return [FieldTokens(grain[b], depth[b], [c[b] for c in codes]) for b in range(len(grain))]


def _tokens_from_numpy(fields, factors, shape, codebook_size, device="cpu"):
    """``Tokens`` of a batch of ``FieldTokens`` of (H, W) fields (the inverse of ``_tokens_to_numpy``)."""
    def stack(arrays):
        return torch.from_numpy(np.stack(arrays)).to(device)

    codes = [stack([f.codes[k] for f in fields]) for k in range(len(factors))]  # (B, S, Hk, Wk)
    residual = [c[:, 1:] for c in codes] if codes[0].shape[1] > 1 else ()
    return Tokens(stack([f.grain for f in fields]), [c[:, 0] for c in codes], factors, shape, codebook_size,
                  depth=stack([f.depth for f in fields]), residual=residual)


@torch.no_grad()
def _reconstruct(model, fields, shape):
    """Decode ``FieldTokens`` of (H, W) fields with `model` (on its device and dtype): (B, C, H, W)."""
    device = next(model.decoder.parameters()).device
    tokens = _tokens_from_numpy(fields, model.factors, _token_shape(shape, model.factors),
                                model.quantizer.codebook_size, device)
    return model.decode(tokens)[..., : shape[0], : shape[1]]


def compress_field(model, x_BCHW, fine_ratio=None, entropy=None):
    """Compress normalised fields to token strings.

    Parameters
    ----------
    model : DQVAE in eval mode.
    x_BCHW : (B, C, H, W) float tensor, normalised as the model expects.
    fine_ratio : exact fraction of fine regions (see ``DQVAE.encode``).
    entropy : ``TokenModel``; default ``TokenModel.from_quantizer(model)``.

    Returns
    -------
    {"strings": [[bytes per sample]], "shape": (H, W)}
    """
    entropy = entropy or TokenModel.from_quantizer(model)
    tokens = tokenize(model, x_BCHW, fine_ratio)
    strings = [encode_tokens(t, model.factors, entropy) for t in _tokens_to_numpy(tokens)]
    return {"strings": [strings], "shape": tuple(int(s) for s in x_BCHW.shape[-2:])}


def decompress_field(model, strings, shape, entropy=None):
    """Reconstruction (B, C, H, W) from ``compress_field``'s strings and shape (same model and entropy)."""
    entropy = entropy or TokenModel.from_quantizer(model)
    grid = _grid(shape, model.factors)
    fields = [decode_tokens(s, grid, model.factors, entropy) for s in strings[0]]
    return _reconstruct(model, fields, shape)


# --------------------------------------------------------------------------- normalisation and prediction

def _normalise(x, mean, std):
    """float32 model input: (x - mean) / std, clipped, with non-finite values at 0 (the mean)."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.clip((x - mean) / std, -CLIP, CLIP)
    return np.where(np.isfinite(x), z, 0.0).astype(np.float32)


def _prediction(recon, mean, std):
    """Reconstruction in physical units, float64; anything non-finite becomes the mean."""
    with np.errstate(over="ignore", invalid="ignore"):
        p = recon.astype(np.float64) * std + mean
    return np.where(np.isfinite(p), p, mean)


# --------------------------------------------------------------------------- planning a file

def _plan(ds, state):
    """Coding mode and groups of variables (same dims and shape) for `ds` under a checkpoint."""
    names = list(ds.data_vars)
    channels = state["model_config"]["in_channels"]
    mode = PER_VARIABLE if channels == 1 else JOINT
    if mode == JOINT:
        need = list(state["variables"])
        missing, extra = [v for v in need if v not in names], [v for v in names if v not in need]
        if missing:
            raise CodecError(f"this tokenizer codes {need} jointly ({channels} channels); the data lacks {missing}")
        if extra:
            raise CodecError(f"this tokenizer codes {need} jointly and cannot code {extra}; select its variables "
                             f"only, or use a one-channel (channel-agnostic) tokenizer")
        names = need
    groups = {}
    for v in names:
        da = ds[v]
        residual.check_dtype(da.dtype, f"variable {v!r}")
        if da.dims[-2:] != (Y, X):
            raise CodecError(f"variable {v!r} has dims {da.dims}; the codec codes 2D fields, dims ending in ({Y}, {X})")
        if da.size == 0:
            raise CodecError(f"variable {v!r} holds no values (shape {da.shape})")
        groups.setdefault((da.dims, da.shape), []).append(v)
    if mode == JOINT and len(groups) > 1:
        raise CodecError(f"jointly coded variables must share dims and shape; got {[list(k) for k in groups]}")
    return mode, [{"variables": vs, "dims": list(d), "shape": list(s)} for (d, s), vs in groups.items()]


def _finite_ranges(ds, names):
    """(min, max) of the finite values of each variable, in one pass over the data."""
    lazy = []
    for v in names:
        finite = ds[v].where(np.isfinite(ds[v]))
        lazy += [finite.min(), finite.max()]
    values = [float(r) for r in dask.compute(*lazy)]
    return {v: (lo, hi) for v, lo, hi in zip(names, values[::2], values[1::2])}


def _bounds(ds, names, max_abs_error, rel_error):
    """{variable: absolute error bound or None}.

    Each of `max_abs_error`, `rel_error` is a number for every variable or a
    {variable: number} mapping (unlisted variables get no bound). A relative
    bound is a fraction of the variable's range of finite values in the file.
    """
    if max_abs_error is not None and rel_error is not None:
        raise CodecError("give max_abs_error or rel_error, not both")
    given = max_abs_error if max_abs_error is not None else rel_error
    if given is None:
        return dict.fromkeys(names)
    per = dict(given) if isinstance(given, dict) else dict.fromkeys(names, given)
    unknown = sorted(set(per) - set(names))
    if unknown:
        raise CodecError(f"error bound given for {unknown}, which are not among the coded variables {names}")
    for v, e in per.items():
        if isinstance(e, (bool, str)) or not np.isscalar(e) or not (0 < float(e) < np.inf):
            raise CodecError(f"the error bound of {v!r} must be a positive finite number, got {e!r}")
    if rel_error is not None:
        ranges = _finite_ranges(ds, list(per))
        # rel * hi - rel * lo does not overflow where rel * (hi - lo) might
        per = {v: float(rel) * ranges[v][1] - float(rel) * ranges[v][0] for v, rel in per.items()}
        per = {v: (e if np.isfinite(e) else 0.0) for v, e in per.items()}  # no finite values: keep all exact
    return {v: (float(per[v]) if v in per else None) for v in names}


def _bound_json(given):
    """An error-bound argument (number or mapping, already checked) as plain JSON."""
    if isinstance(given, dict):
        return {str(v): float(e) for v, e in given.items()}
    return None if given is None else float(given)


def _variable_meta(ds, v, mode, state, bound):
    da = ds[v]
    encoding = {k: da.encoding[k] for k in KEPT_ENCODING if k in da.encoding}
    if len(encoding) == 2 and not np.array_equal(*encoding.values(), equal_nan=True):
        del encoding["missing_value"]  # both were read as NaN; CF writers refuse two different markers
    meta = {"dims": list(da.dims), "shape": list(da.shape), "dtype": np.dtype(da.dtype).newbyteorder("<").str,
            "attrs": to_json(dict(da.attrs)), "encoding": to_json(encoding), "max_abs_error": bound}
    if mode == JOINT:
        stats = state["stats"].get(v) or {}
        mean, std = float(stats.get("mean", np.nan)), float(stats.get("std", np.nan))
        if not (np.isfinite(mean) and 0 < std < np.inf):
            raise CodecError(f"the checkpoint has no usable normalisation for {v!r} (mean {mean}, std {std})")
        meta["normalisation"] = {"mean": mean, "std": std}
    return meta


def _coords_meta(ds):
    """Coordinates in their CF-encoded form (datetimes as numbers with units), stored exactly."""
    out = {}
    for name, coord in ds.coords.items():
        enc = xr.conventions.encode_cf_variable(coord.variable, name=name)
        out[name] = {"dims": list(enc.dims), "shape": list(enc.shape), "data": to_json(np.asarray(enc.values)),
                     "attrs": to_json(dict(enc.attrs))}
    return out


def _snapshots(group):
    return int(np.prod(group["shape"][:-2], dtype=np.int64))


def _job_order(groups, calibration):
    """(group, snapshot) pairs: the first `calibration` snapshots of every group, then the rest."""
    first = ((g, i) for g, grp in enumerate(groups) for i in range(min(calibration, _snapshots(grp))))
    rest = ((g, i) for g, grp in enumerate(groups) for i in range(calibration, _snapshots(grp)))
    return itertools.chain(first, rest)


def _check_header(header, path):
    if header.get("format") != FORMAT:
        raise CodecError(f"{path} is a .dfz container but not a dynfield field file (format {header.get('format')!r})")
    return header


# --------------------------------------------------------------------------- chunks

def _unit_key(unit):
    return "+".join(unit)


class _Layout:
    """What a header says about the chunks: groups, units (what one token stream codes), entropy models."""

    def __init__(self, header):
        self.header, self.meta = header, header["variables"]
        config = header["model"]["config"]
        self.factors, self.codebook_size = tuple(config["factors"]), int(config["codebook_size"])
        self.stages = int(config.get("stages", 1))
        self.entropy = {k: TokenModel.from_json(m) for k, m in header.get("entropy", {}).items()}

    def units(self, g):
        """The variables of each token stream of group g: one each, or all jointly."""
        names = self.header["groups"][g]["variables"]
        return [[v] for v in names] if self.header["mode"] == PER_VARIABLE else [names]

    def bound(self, v):
        return self.meta[v]["max_abs_error"]

    def index(self, g, i):
        """{leading dim: index} of snapshot i of group g."""
        group = self.header["groups"][g]
        return {d: int(j) for d, j in zip(group["dims"][:-2], np.unravel_index(i, group["shape"][:-2]))}

    def parse(self, payload):
        """(group, snapshot, token streams per unit, value sections per variable) of a chunk."""
        r = ByteReader(payload)
        g, i = r.uvarint(), r.uvarint()
        groups = self.header["groups"]
        if g >= len(groups) or i >= _snapshots(groups[g]):
            raise CodecError(f"a chunk names snapshot {i} of group {g}, which does not exist (corrupt file)")
        streams = [r.blob() for _ in self.units(g)]
        sections = [r.blob() for _ in groups[g]["variables"]]
        r.done()
        return g, i, streams, sections

    def section(self, v, data):
        """Reader over a variable's section, and its (mean, std)."""
        r = ByteReader(data, f"the section of {v!r}")
        if self.header["mode"] == PER_VARIABLE:
            return r, (r.f64(), r.f64())
        n = self.meta[v]["normalisation"]
        return r, (n["mean"], n["std"])

    def tokens(self, g, unit, stream):
        shape = self.header["groups"][g]["shape"][-2:]
        return decode_tokens(stream, _grid(shape, self.factors), self.factors, self.entropy[_unit_key(unit)])


class _Coder(_Layout):
    """Encodes and decodes the chunks of one file with the tokenizer and its float64 copy."""

    def __init__(self, model, header, device="cpu"):
        super().__init__(header)
        if (tuple(model.factors) != self.factors or model.quantizer.codebook_size != self.codebook_size
                or model.quantizer.num_stages != self.stages):
            raise CodecError("the model does not have the factors, codebook size and stages the file was made with")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.rate = {k: header["settings"].get(k) for k in RATE_SETTINGS}
        self._reference = None

    def decoder(self, unit):
        """The model that reconstructs `unit`: its float64 copy when any of its variables has a bound."""
        if all(self.bound(v) is None for v in unit):
            return self.model
        if self._reference is None:
            self._reference = copy.deepcopy(self.model).to(torch.float64)
        return self._reference

    def normalisation(self, v, x):
        if self.header["mode"] == PER_VARIABLE:
            return field_stats(x)
        n = self.meta[v]["normalisation"]
        return n["mean"], n["std"]

    def encode_snapshot(self, ds, g, i):
        """Tokens per unit and value sections per variable of snapshot i of group g (before entropy coding)."""
        units = self.units(g)
        names = [v for unit in units for v in unit]
        # One synchronous read of the whole snapshot: starting dask's thread pool
        # costs more than reading a 2D field.
        planes = ds[names].isel(self.index(g, i)).compute(scheduler="synchronous")
        xs = {v: np.asarray(planes[v].values) for v in names}  # (H, W) each
        norms = {v: self.normalisation(v, xs[v]) for v in names}
        # every unit of the snapshot in one batch (per-variable coding: the variables side by side)
        x_UCHW = torch.from_numpy(np.stack([np.stack([_normalise(xs[v], *norms[v]) for v in unit]) for unit in units]))
        fields = _tokens_to_numpy(tokenize(self.model, x_UCHW.to(self.device), **self.rate))
        sections = []
        for unit, unit_tokens in zip(units, fields):
            if any(self.bound(v) is not None for v in unit):
                recon = _reconstruct(self.decoder(unit), [unit_tokens], xs[unit[0]].shape)[0].cpu().numpy()
                preds = [_prediction(r, *norms[v]) for r, v in zip(recon, unit)]
            else:
                preds = [None] * len(unit)  # no residual: the decoder's reconstruction is not needed here
            for v, pred in zip(unit, preds):
                w = ByteWriter()
                if self.header["mode"] == PER_VARIABLE:
                    w.f64(norms[v][0])
                    w.f64(norms[v][1])
                residual.encode_values(w, xs[v], pred, self.bound(v))
                sections.append(w.bytes())
        return g, i, fields, sections

    def calibrate(self, results):
        """Set the token models from the tokens of `results` (plus one count per symbol); return them as JSON."""
        hists = {_unit_key(u): TokenCounts(len(self.factors), self.codebook_size, self.stages)
                 for g in range(len(self.header["groups"])) for u in self.units(g)}
        for g, _, tokens, _ in results:
            for unit, field_tokens in zip(self.units(g), tokens):
                hists[_unit_key(unit)].add(field_tokens, self.factors)
        self.entropy = {k: TokenModel.from_histograms(h.grain, h.codes, h.depth) for k, h in hists.items()}
        return {k: m.to_json() for k, m in self.entropy.items()}

    def chunk(self, g, i, tokens, sections):
        """Chunk payload of an encoded snapshot."""
        w = ByteWriter()
        w.uvarint(g)
        w.uvarint(i)
        for unit, field_tokens in zip(self.units(g), tokens):
            w.blob(encode_tokens(field_tokens, self.factors, self.entropy[_unit_key(unit)]))
        for s in sections:
            w.blob(s)
        return w.bytes()

    def decode_chunk(self, payload):
        """(group, snapshot, {variable: (H, W) array}) of a chunk."""
        g, i, streams, sections = self.parse(payload)
        shape = tuple(self.header["groups"][g]["shape"][-2:])
        sections, out = iter(sections), {}
        for unit, stream in zip(self.units(g), streams):
            recon = _reconstruct(self.decoder(unit), [self.tokens(g, unit, stream)], shape)[0].cpu().numpy()
            for v, rec in zip(unit, recon):
                r, norm = self.section(v, next(sections))
                dtype = np.dtype(self.meta[v]["dtype"])
                out[v] = residual.decode_values(r, _prediction(rec, *norm), self.bound(v), dtype)
                r.done()
        return g, i, out


# --------------------------------------------------------------------------- parallel encoding

_WORKER = {}


def _start_worker(spec, threads):
    torch.set_num_threads(threads)
    model, _ = ckpt.load_model(spec["checkpoint"])
    if weights_hash(model) != spec["header"]["model"]["sha256"]:
        raise CodecError(f"{spec['checkpoint']} changed while compressing")
    _WORKER["coder"] = _Coder(model, spec["header"], spec["device"])
    _WORKER["ds"] = open_fields(spec["in_path"], spec["variables"], spec["dims"], chunks=SNAPSHOT_CHUNKS)


def _encode_in_worker(job):
    return _WORKER["coder"].encode_snapshot(_WORKER["ds"], *job)


def _encode_all(coder, ds, jobs, workers, spec):
    """Encoded snapshots in job order; with workers > 1, from a pool of processes."""
    if workers <= 1:
        for job in jobs:
            yield coder.encode_snapshot(ds, *job)
        return
    # torch's threads split between the workers; spawned (not forked) so that no
    # OpenMP state or open file handle is inherited
    threads = max(1, torch.get_num_threads() // workers)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_worker, initargs=(spec, threads))
    try:
        pending = deque()
        for job in jobs:
            pending.append(pool.submit(_encode_in_worker, job))
            if len(pending) >= 2 * workers:  # bounded look-ahead keeps memory flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- files

def _load_tokenizer(checkpoint):
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    model, state = ckpt.load_model(path)
    if state.get("kind") != "tokenizer":
        raise CodecError(f"{path} is a {state.get('kind')!r} checkpoint, not a tokenizer")
    return path, model, state


def compress_file(in_path, out_path, checkpoint=None, variables=None, fine_ratio=None, max_abs_error=None,
                  rel_error=None, workers=1, progress=True, dims=None, device="cpu", bits_per_value=None, psnr=None):
    """Compress a field file (anything ``open_fields`` reads) to a ``.dfz`` file.

    Parameters
    ----------
    checkpoint : tokenizer checkpoint; default the bundled ``dynfield/pretrained/tokenizer.pt``.
    variables : variables to compress (default: all; for a multi-channel
        tokenizer, exactly its own).
    fine_ratio : exact fraction of fine regions per field; None lets the router decide.
    bits_per_value, psnr : instead, the rate-distortion allocation of grains and
        depths: a token budget per field value (log2(codebook size) bits a code,
        before entropy coding, which only lowers it) or the fewest tokens that
        reach this PSNR (dB, by each field's range, averaged over a unit's
        channels). At most one of fine_ratio, bits_per_value and psnr.
    max_abs_error, rel_error : optional error bound, a number for every variable
        or a {variable: number} mapping; relative to each variable's range of
        finite values in the file (which costs one extra pass over the data).
    workers : processes encoding snapshots in parallel (chunk order is kept).
    dims : file dimension name -> dynfield name, as for ``open_fields``.
    device : torch device of the tokenizer (bounded fields are reconstructed there in float64).

    Returns
    -------
    dict : ``inspect_file`` of the output, plus ``seconds`` and ``input_mb_per_s``.

    The output is written to a temporary file and renamed at the end: an error
    or an interruption leaves no output file.
    """
    start = time.perf_counter()
    checkpoint, model, state = _load_tokenizer(checkpoint)
    rate = _check_rate(model, fine_ratio=fine_ratio, bits_per_value=bits_per_value, psnr=psnr)
    with open_fields(in_path, variables, dims, chunks=SNAPSHOT_CHUNKS) as ds:
        header = _header(ds, model, state, rate, max_abs_error, rel_error)
        coder = _Coder(model, header, device)
        spec = {"checkpoint": str(checkpoint), "in_path": in_path, "variables": list(header["variables"]),
                "dims": dims, "header": header, "device": device}
        jobs = _job_order(header["groups"], CALIBRATION_CHUNKS)
        _write(coder, _encode_all(coder, ds, jobs, workers, spec), out_path, progress)
    seconds = time.perf_counter() - start
    summary = inspect_file(out_path)
    summary["seconds"] = seconds
    summary["input_mb_per_s"] = summary["input_bytes"] / 1e6 / seconds
    return summary


def _check_rate(model, **rate):
    """The rate settings {fine_ratio, bits_per_value, psnr} (floats or None), checked: at most one is set."""
    given = [k for k, v in rate.items() if v is not None]
    if len(given) > 1:
        raise CodecError(f"give at most one of the fine ratio, bits per value and PSNR; got {', '.join(given)}")
    fine_ratio, bits, psnr = rate["fine_ratio"], rate["bits_per_value"], rate["psnr"]
    if fine_ratio is not None and len(model.factors) == 1:
        raise CodecError("this tokenizer has a single grain level: a fine ratio does not apply")
    if fine_ratio is not None and not 0 <= fine_ratio <= 1:
        raise CodecError(f"the fine ratio is a fraction of regions, in [0, 1]; got {fine_ratio}")
    if bits is not None and not bits > 0:
        raise CodecError(f"bits per value must be positive; got {bits}")
    if psnr is not None and not np.isfinite(psnr):
        raise CodecError(f"the PSNR target must be a finite number of dB; got {psnr}")
    return {k: None if v is None else float(v) for k, v in rate.items()}


def _header(ds, model, state, rate, max_abs_error, rel_error):
    """The header of a file, all but its entropy models (which need the first chunks)."""
    mode, groups = _plan(ds, state)
    names = [v for grp in groups for v in grp["variables"]]
    bounds = _bounds(ds, names, max_abs_error, rel_error)
    return {
        "format": FORMAT,
        "model": {"sha256": weights_hash(model), "class": state["model_class"], "config": state["model_config"],
                  "variables": list(state["variables"])},
        "mode": mode,
        "settings": {**rate,
                     "max_abs_error": _bound_json(max_abs_error), "rel_error": _bound_json(rel_error),
                     "calibration_chunks": CALIBRATION_CHUNKS},
        "variables": {v: _variable_meta(ds, v, mode, state, bounds[v]) for v in names},
        "groups": groups,
        "coords": _coords_meta(ds),
        "attrs": to_json(dict(ds.attrs)),
        "n_chunks": sum(_snapshots(grp) for grp in groups),
    }


def _write(coder, results, out_path, progress):
    """Write the encoded snapshots `results` (calibration chunks first) as a .dfz file, atomically."""
    header = coder.header
    n_calibration = sum(min(CALIBRATION_CHUNKS, _snapshots(grp)) for grp in header["groups"])
    with atomic_output(out_path) as tmp, open(tmp, "wb") as f, closing(results), \
            tqdm(total=header["n_chunks"], desc="compress", unit="snapshot", disable=not progress) as bar:
        writer = ContainerWriter(f)
        calibration = []
        for result in itertools.islice(results, n_calibration):
            calibration.append(result)
            bar.update()
        header["entropy"] = coder.calibrate(calibration)
        writer.write_header(header)
        for result in calibration:
            writer.write_chunk(coder.chunk(*result))
        del calibration
        for result in results:
            writer.write_chunk(coder.chunk(*result))
            bar.update()
        writer.finish()


def _netcdf_attrs(attrs):
    """Attributes netCDF can store: booleans become int8 (netCDF has no boolean type)."""
    return {k: (np.asarray(v, dtype=np.int8) if np.asarray(v).dtype == bool else v) for k, v in attrs.items()}


class _NetCDFWriter:
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


def decompress_file(in_path, out_path, checkpoint=None, progress=True, device="cpu"):
    """Decode a ``.dfz`` file to netCDF, snapshot by snapshot.

    The netCDF file has the compressed variables with their dims, coordinates,
    attributes and dtype, plus attributes naming the codec, the model's
    SHA-256 and the error bound. `checkpoint` must hold the very model the
    file was made with (default: the bundled tokenizer); `device` is the
    torch device that decodes (in float64 for bounded fields).
    Written atomically, like ``compress_file``. Returns the output path.
    """
    with ContainerReader(in_path) as reader:
        header = _check_header(reader.header, in_path)
        checkpoint, model, _ = _load_tokenizer(checkpoint)
        expected, found = header["model"]["sha256"], weights_hash(model)
        if found != expected:
            raise CodecError(f"{in_path} was compressed with the model of SHA-256 {expected[:16]}..., but {checkpoint} "
                             f"holds {found[:16]}...; decode with the checkpoint it was made with")
        coder = _Coder(model, header, device)
        seen = set()
        with atomic_output(out_path) as tmp:
            out = _NetCDFWriter(tmp, header)
            try:
                for payload in tqdm(reader.chunks(), total=header["n_chunks"], desc="decompress", unit="snapshot",
                                    disable=not progress):
                    g, i, fields = coder.decode_chunk(payload)
                    if (g, i) in seen:
                        raise CodecError(f"{in_path} holds snapshot {i} of group {g} twice (corrupt file)")
                    seen.add((g, i))
                    index = tuple(coder.index(g, i).values())
                    for v, values in fields.items():
                        out.write(v, index, values)
            finally:
                out.close()
    return Path(out_path)


def inspect_file(path):
    """Figures of a ``.dfz`` file, read without the model.

    Returns a dict: sizes and bits per value overall and per variable (a
    joint token stream is shared evenly among its variables), compression
    ratio against the decoded dtypes, the model's identity, the settings,
    the fraction of fine regions, token bits spent against their ideal code
    length under the stored model and their empirical entropy, non-finite
    values and escapes per variable.
    """
    with ContainerReader(path) as reader:
        header = _check_header(reader.header, path)
        layout = _Layout(header)
        K = len(layout.factors)
        per_var = {v: {"bytes": 0.0, "nonfinite": 0, "escapes": 0, "residual_bytes": 0} for v in header["variables"]}
        tokens = {"codes": 0, "bits": 0.0, "ideal_bits": 0.0, "entropy_bits": 0.0}
        hists = {}
        for payload in reader.chunks():
            g, _, streams, sections = layout.parse(payload)
            for unit, stream in zip(layout.units(g), streams):
                field_tokens = layout.tokens(g, unit, stream)
                key = _unit_key(unit)
                tokens["bits"] += 8 * len(stream)
                tokens["ideal_bits"] += token_information_bits(field_tokens, layout.factors, layout.entropy[key])
                tokens["codes"] += int(sum((c >= 0).sum() for c in field_tokens.codes))
                hists.setdefault(key, TokenCounts(K, layout.codebook_size, layout.stages)).add(field_tokens, layout.factors)
                for v in unit:
                    per_var[v]["bytes"] += len(stream) / len(unit)
            for v, data in zip(header["groups"][g]["variables"], sections):
                r, _ = layout.section(v, data)
                stats = residual.section_stats(r, layout.bound(v))
                per_var[v]["bytes"] += len(data)
                for k in ("nonfinite", "escapes", "residual_bytes"):
                    per_var[v][k] += stats[k]
        tokens["entropy_bits"] = sum(h.entropy_bits() for h in hists.values())
        levels = sum((h.grain for h in hists.values()), np.zeros(K, np.int64))
        size, version, header_bytes = reader.size, reader.version, reader.chunks_start
    variables, n_values, input_bytes = {}, 0, 0
    for v, meta in header["variables"].items():
        n = int(np.prod(meta["shape"], dtype=np.int64))
        n_values += n
        input_bytes += n * np.dtype(meta["dtype"]).itemsize
        variables[v] = {"dims": meta["dims"], "shape": meta["shape"], "dtype": np.dtype(meta["dtype"]).name,
                        "values": n, "bits_per_value": 8 * per_var[v]["bytes"] / n,
                        "max_abs_error": meta["max_abs_error"], **per_var[v]}
    config = header["model"]["config"]
    return {
        "path": str(path), "format_version": version, "bytes": size, "header_bytes": header_bytes, "values": n_values,
        "input_bytes": input_bytes,
        "bits_per_value": 8 * size / n_values, "compression_ratio": input_bytes / size,
        "model": {"sha256": header["model"]["sha256"], "class": header["model"]["class"],
                  "in_channels": config["in_channels"], "factors": list(layout.factors),
                  "codebook_size": layout.codebook_size},
        "mode": header["mode"], "settings": header["settings"], "chunks": header["n_chunks"],
        "fine_fraction": float(levels[:-1].sum() / max(levels.sum(), 1)),
        "level_fractions": (levels / max(levels.sum(), 1)).tolist(),
        "tokens": tokens, "variables": variables,
    }


def prior_code_length(path, prior_checkpoint, device="cpu"):
    """Ideal code length of a ``.dfz`` file's tokens under a stage-2 prior, beside what the file spends on them.

    The prior must model this file's tokenizer (the same weights' SHA-256)
    and fields of its shape. Nothing is decoded but the tokens.

    Returns
    -------
    dict : ``prior_bits`` (the sum of -log2 p of every token under the
    prior), ``token_bits`` (what the file's range-coded token streams take),
    ``values`` covered, and both per value.
    """
    try:
        prior, _, state = ckpt.load_prior(prior_checkpoint, map_location=device)
    except ValueError as e:
        raise CodecError(str(e)) from None
    with ContainerReader(path) as reader:
        header = _check_header(reader.header, path)
        if state["tokenizer"]["sha256"] != header["model"]["sha256"]:
            raise CodecError(f"{prior_checkpoint} is a prior over the tokens of another tokenizer (sha256 "
                             f"{state['tokenizer']['sha256'][:12]}...) than the one {path} was made with "
                             f"({header['model']['sha256'][:12]}...)")
        layout, shape = _Layout(header), tuple(prior.config["shape"])
        prior_bits = token_bits = 0.0
        values = 0
        for payload in reader.chunks():
            g, _, streams, _ = layout.parse(payload)
            field_shape = tuple(header["groups"][g]["shape"][-2:])
            if field_shape != shape:
                raise CodecError(f"the prior models {shape[0]}x{shape[1]} fields; {path} holds {field_shape}")
            for unit, stream in zip(layout.units(g), streams):
                tokens = _tokens_from_numpy([layout.tokens(g, unit, stream)], layout.factors, shape,
                                            layout.codebook_size)
                prior_bits += float(prior.bits(tokens.to(device)).sum())
                token_bits += 8 * len(stream)
                values += len(unit) * shape[0] * shape[1]
    return {"prior_bits": prior_bits, "token_bits": token_bits, "values": values,
            "prior_bits_per_value": prior_bits / max(values, 1), "token_bits_per_value": token_bits / max(values, 1)}
