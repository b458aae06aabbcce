"""The header of a ``.dfz`` file: what is coded, how, and with which model.

``plan`` groups a data set's variables (same dims and shape) under a
checkpoint, ``bounds`` turns the error-bound arguments into one absolute
bound per variable, and ``make_header`` gathers it all, with the
variables' attributes, encodings and coordinates kept exactly.
"""


import dask
import dask.array as da
import numpy as np
import xarray as xr

from dynfield.checkpoint import weights_hash
from dynfield.conventions import SAMPLE, TIME, X, Y, Z

from . import residual
from .container import CodecError, to_json

FORMAT = "dynfield-dfz"
# The first PLAN_CHUNKS snapshots of a group are coded every way and make the plan the later ones follow;
# the first CALIBRATION_CHUNKS (those included) fit the token histograms.
PLAN_CHUNKS, CALIBRATION_CHUNKS = 4, 16
PER_VARIABLE, JOINT = "per-variable", "joint"
SNAPSHOT_CHUNKS = {SAMPLE: 1, TIME: 1, Z: 1}  # reading one 2D field reads nothing else
RATE_SETTINGS = ("fine_ratio", "bits_per_value", "psnr")  # how the tokens of a field are chosen
KEPT_ENCODING = ("_FillValue", "missing_value")  # masking, kept in every output (a .dfz file's and zarr's)
PACKING = ("scale_factor", "add_offset")  # with the integer dtype: a .dfz file's variables are packed again


def plan(ds, state):
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


def _block_range(block):
    """(min, max) of the finite values of a numpy block; (inf, -inf) where it has none."""
    if block.dtype.kind == "f" and not np.isfinite(block.min(initial=0) + block.max(initial=0)):
        block = block[np.isfinite(block)]  # NaN or Inf in the block: the rest
    return (float(block.min()), float(block.max())) if block.size else (np.inf, -np.inf)


def _finite_ranges(ds, names):
    """(min, max) of the finite values of each variable ((inf, -inf) where there are none), in one pass over
    the data: one task per chunk, each reducing its block at once (three times faster than xarray's
    where/min/max graph on 2 cores)."""
    tasks = {v: [dask.delayed(_block_range)(b) for b in da.asarray(ds[v].data).to_delayed().ravel()] for v in names}
    blocks = dask.compute(tasks)[0]
    return {v: (min(lo for lo, _ in blocks[v]), max(hi for _, hi in blocks[v])) for v in names}


def check_bound(what, e):
    """Refuse anything but a positive finite number as an error bound."""
    if isinstance(e, (bool, str)) or not np.isscalar(e) or not (0 < float(e) < np.inf):
        raise CodecError(f"{what} must be a positive finite number, got {e!r}")


def check_bound_arguments(max_abs_error, rel_error):
    """The one bound argument given (or None); both at once is an error."""
    if max_abs_error is not None and rel_error is not None:
        raise CodecError("give max_abs_error or rel_error, not both")
    return max_abs_error if max_abs_error is not None else rel_error


def bounds(ds, names, max_abs_error, rel_error):
    """{variable: absolute error bound or None}.

    Each of `max_abs_error`, `rel_error` is a number for every variable or a
    {variable: number} mapping (unlisted variables get no bound). A relative
    bound is a fraction of the variable's range of finite values in the file.
    """
    given = check_bound_arguments(max_abs_error, rel_error)
    if given is None:
        return dict.fromkeys(names)
    per = dict(given) if isinstance(given, dict) else dict.fromkeys(names, given)
    unknown = sorted(set(per) - set(names))
    if unknown:
        raise CodecError(f"error bound given for {unknown}, which are not among the coded variables {names}")
    for v, e in per.items():
        check_bound(f"the error bound of {v!r}", e)
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


def packing(encoding):
    """The encoding that packs a variable stored as integers (their dtype, scale_factor and add_offset), and
    the step between two of its values; ({}, None) for a variable stored as floats."""
    stored = encoding.get("dtype")
    if stored is None or np.dtype(stored).kind not in "iu":
        return {}, None
    packed = {"dtype": np.dtype(stored).newbyteorder("<").str, **{k: encoding[k] for k in PACKING if k in encoding}}
    return packed, abs(float(packed.get("scale_factor", 1.0)))


def coding_bound(bound, step):
    """The bound the coder keeps so that its values, packed again to integers `step` apart, stay within `bound`.

    Under half a step the packed integers must come back exact; above it,
    half a step goes to the rounding. A hundredth of a step is left to the
    float arithmetic of unpacking and packing.
    """
    return max(bound - 0.51 * step, min(bound, 0.49 * step))


def _variable_meta(ds, v, mode, state, bound):
    da = ds[v]
    encoding = {k: da.encoding[k] for k in KEPT_ENCODING if k in da.encoding}
    if len(encoding) == 2 and not np.array_equal(*encoding.values(), equal_nan=True):
        del encoding["missing_value"]  # both were read as NaN; CF writers refuse two different markers
    packed, step = packing(da.encoding)
    meta = {"dims": list(da.dims), "shape": list(da.shape), "dtype": np.dtype(da.dtype).newbyteorder("<").str,
            **_source_names(da),
            "attrs": to_json(dict(da.attrs)), "encoding": to_json({**encoding, **packed}), "max_abs_error": bound}
    if packed and bound is not None:
        meta["coding_error"] = coding_bound(bound, step)
    if mode == JOINT:
        stats = state["stats"].get(v) or {}
        mean, std = float(stats.get("mean", np.nan)), float(stats.get("std", np.nan))
        if not (np.isfinite(mean) and 0 < std < np.inf):
            raise CodecError(f"the checkpoint has no usable normalisation for {v!r} (mean {mean}, std {std})")
        meta["normalisation"] = {"mean": mean, "std": std}
    return meta


def _source_names(var):
    """The file's names of a variable (or coordinate) and its dims, and its dims' order in the file."""
    dims = list(var.encoding.get("source_dims", var.dims))
    order = list(var.encoding.get("source_order", dims))
    if sorted(order) != sorted(dims):  # not a reordering of these dims: keep ours
        order = dims
    return {"source_name": var.encoding.get("source_name"), "source_dims": dims, "source_order": order}


def _coords_meta(ds):
    """Coordinates in their CF-encoded form (datetimes as numbers with units), stored exactly."""
    out = {}
    for name, coord in ds.coords.items():
        enc = xr.conventions.encode_cf_variable(coord.variable, name=name)
        out[name] = {"dims": list(enc.dims), "shape": list(enc.shape), "data": to_json(np.asarray(enc.values)),
                     "attrs": to_json(dict(enc.attrs)), **_source_names(coord.variable)}
    return out


def snapshots(group):
    return int(np.prod(group["shape"][:-2], dtype=np.int64))


def job_phases(groups, plan, calibration):
    """Three runs of (group, snapshot) pairs: the first `plan` snapshots of every group, then those up to
    `calibration`, then the rest."""
    def span(start, stop):
        return [(g, i) for g, grp in enumerate(groups) for i in range(start, min(stop, snapshots(grp)))]

    rest = ((g, i) for g, grp in enumerate(groups) for i in range(calibration, snapshots(grp)))
    return span(0, plan), span(plan, calibration), rest


def check_header(header, path):
    if header.get("format") != FORMAT:
        raise CodecError(f"{path} is a .dfz container but not a dynfield field file (format {header.get('format')!r})")
    return header




def check_rate(model, **rate):
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


def make_header(ds, model, state, rate, max_abs_error, rel_error, sha256=None):
    """The header of a file, all but its entropy models (which need the first chunks).

    `sha256` is the model's ``weights_hash`` where the caller has it already.
    """
    mode, groups = plan(ds, state)
    names = [v for grp in groups for v in grp["variables"]]
    per_variable = bounds(ds, names, max_abs_error, rel_error)
    return {
        "format": FORMAT,
        "model": {"sha256": sha256 or weights_hash(model), "class": state["model_class"],
                  "config": state["model_config"],
                  "variables": list(state["variables"])},
        "mode": mode,
        "settings": {**rate,
                     "max_abs_error": _bound_json(max_abs_error), "rel_error": _bound_json(rel_error),
                     "plan_chunks": PLAN_CHUNKS, "calibration_chunks": CALIBRATION_CHUNKS},
        "variables": {v: _variable_meta(ds, v, mode, state, per_variable[v]) for v in names},
        "groups": groups,
        "coords": _coords_meta(ds),
        "attrs": to_json(dict(ds.attrs)),
        "n_chunks": sum(snapshots(grp) for grp in groups),
    }
