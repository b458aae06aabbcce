"""The value layer: exact non-finite values, and the error-bounded residual.

Given a field x (any integer or floating dtype) and a finite float64
prediction p of it (the tokenizer's reconstruction in physical units), one
field's section holds:

- the positions of the non-finite values (NaN, +-Inf, masked values read as
  NaN) as a zlib-compressed bitmask, and their raw bytes, so they come back
  bit for bit;
- with an error bound E, the residual of the finite values quantised on a
  grid of step 2E', E' = E (1 - MARGIN): q = rint((x - p) / 2E'), decoded as
  x_hat = p + 2E' q cast to the field's dtype. The encoder computes x_hat
  exactly as the decoder will and checks |x - x_hat| <= E' for every value,
  with one ulp of the output dtype to spare (see below); a value that misses
  (float rounding in the cast, overflow, a residual too large to code) is an
  *escape*, stored raw. So every decoded value is within E' of the original,
  given the decoder's prediction is the encoder's.

The margin E - E' absorbs a prediction that differs by less than E / 1024
between the encoding and the decoding machine (float64 rounding on another
device), at a cost of 0.0014 bits per value. Such a prediction can still
round to the neighbouring value of a float32 output, so the check asks
|x - x_hat| + ulp(x_hat) <= E'.

q is coded as a symbol (0; or the bit length c of |q| and its sign; or escape)
under a histogram stored with the section, followed by the c - 1 bits of |q|
below its leading one, stored raw as bit planes.

Where the residual is smooth on the grid (tight bounds: many steps across
a smooth tokenizer error), neighbouring q are alike and their differences
are cheaper to code than q itself. The encoder lays q out on the (H, W)
grid (0 at non-finite values and escapes) and codes whichever of three
integer transforms its histograms price lowest: q itself, the difference
along x, or the 2D (Lorenzo) difference q[i, j] - q[i-1, j] - q[i, j-1] +
q[i-1, j-1]. Differences of integers are exact, and cumulative sums undo
them, so the choice costs no accuracy; escapes are then sent as a bitmask.

Where the residual is better described by a wavelet or a prediction than by
its values (smooth fields, loose bounds), SPERR or SZ3 code the float64
residual x - p instead, asked for E' (1 - 2^-8) (see ``filters``); the
decoded x_hat = p + r_hat is checked against E' exactly as above, the misses
escaped. Every section is coded each way and the shortest is kept, so a
field costs at most what the best of these coders takes on its residual.
"""

import zlib

import numpy as np

from . import filters
from .container import ByteWriter, CodecError
from .entropy import SymbolReader, SymbolWriter

MARGIN = 2.0**-10
PLAIN, DIFF_X, DIFF_XY = 0, 1, 2  # the transforms of q (see the module docstring)
SPERR, SZ3 = 3, 4  # the residual coded by an HDF5 filter instead
FILTER_KINDS = {SPERR: "sperr", SZ3: "sz3"}
CODER_NAMES = {PLAIN: "integer", DIFF_X: "integer-diff-x", DIFF_XY: "integer-lorenzo", **FILTER_KINDS}
FAMILIES = {PLAIN: "integer", DIFF_X: "integer", DIFF_XY: "integer", **FILTER_KINDS}  # what `coders` names
MAX_BITS = 52  # |q| < 2**52: exact in float64
ESCAPE = 2 * MAX_BITS + 1  # symbols: 0, then 2c - 1 (q > 0) and 2c (q < 0) for c = 1..MAX_BITS, then escape


def check_dtype(dtype, name="field"):
    """Return `dtype` if the codec can store it (integers and floats), else raise."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf" or dtype.itemsize > 8:  # the residual is computed in float64
        raise CodecError(f"{name} has dtype {dtype}; the codec stores integer and floating-point fields "
                         f"of at most 64 bits")
    return dtype


def cast(values, dtype):
    """float64 values -> `dtype`: floats by IEEE rounding, integers rounded and clipped to their range."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            return values.astype(dtype)
    info = np.iinfo(dtype)
    # clip in float64 first; the top of a 64-bit range is not exact in float64, so stay below it
    hi = float(info.max) if info.bits < 64 else float(np.nextafter(float(info.max), 0.0))
    return np.clip(np.rint(values), float(info.min), hi).astype(dtype)


def _inflate(data, what):
    try:
        return zlib.decompress(data)
    except zlib.error:
        raise CodecError(f"the {what} do not decompress (corrupt file)") from None


def _unpack_mask(data, n, what):
    mask = np.unpackbits(np.frombuffer(_inflate(data, f"{what} mask bits"), dtype=np.uint8))
    if len(mask) != -(-n // 8) * 8 or mask[n:].any():
        raise CodecError(f"{what} mask does not match the field (corrupt file)")
    return mask[:n].astype(bool)


def _raw(values, dtype):
    return zlib.compress(np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tobytes())


def _unraw(data, dtype, n, what):
    arr = np.frombuffer(_inflate(data, what), dtype=dtype.newbyteorder("<"))
    if len(arr) != n:
        raise CodecError(f"expected {n} raw {what}, found {len(arr)} (corrupt file)")
    return arr.astype(dtype)


def _symbols(q, escape):
    """Symbols, bit counts and low bits of the integers q (escapes excluded)."""
    mag = np.abs(q)
    c = np.frexp(mag.astype(np.float64))[1].astype(np.int64)  # bit length, exact below 2**53
    symbols = np.where(q == 0, 0, 2 * c - 1 + (q < 0))
    symbols[escape] = ESCAPE
    nbits = np.where(escape, 0, np.maximum(c - 1, 0))
    low = mag - np.where(c > 0, np.left_shift(1, np.maximum(c - 1, 0)), 0)
    return symbols, nbits, low


def _pack_planes(low, nbits):
    """Bit j of every value with more than j low bits, plane by plane, each plane byte-padded."""
    planes = [np.packbits(((low[nbits > j] >> j) & 1).astype(np.uint8)) for j in range(int(nbits.max(initial=0)))]
    return b"".join(p.tobytes() for p in planes)


def _unpack_planes(data, nbits):
    low = np.zeros(len(nbits), dtype=np.int64)
    pos = 0
    for j in range(int(nbits.max(initial=0))):
        sel = nbits > j
        n = int(sel.sum())
        nbytes = -(-n // 8)
        if pos + nbytes > len(data):
            raise CodecError("residual bit planes end early (corrupt file)")
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=pos))[:n]
        low[sel] |= bits.astype(np.int64) << j
        pos += nbytes
    if pos != len(data):
        raise CodecError("residual bit planes have trailing bytes (corrupt file)")
    return low


def _transform(q_HW, kind):
    """The integer differences of q on the grid: none, along x, or along x then y."""
    d = q_HW
    if kind in (DIFF_X, DIFF_XY):
        d = np.diff(d, axis=1, prepend=0)
    if kind == DIFF_XY:
        d = np.diff(d, axis=0, prepend=0)
    return d


def _untransform(d_HW, kind):
    q = d_HW
    if kind == DIFF_XY:
        q = np.cumsum(q, axis=0)
    if kind in (DIFF_X, DIFF_XY):
        q = np.cumsum(q, axis=1)
    return q


def _cost_bits(symbols, nbits):
    """Ideal size of symbols under their own histogram, plus the raw low bits."""
    counts = np.bincount(symbols)
    p = counts[counts > 0] / len(symbols)
    return float(-(counts[counts > 0] * np.log2(p)).sum()) + float(nbits.sum())


def _quantise(x, pred, inner, dtype):
    """q (int64) and escape mask for finite values x (float64) against the prediction."""
    step = 2 * inner
    if step > 0:
        with np.errstate(over="ignore", invalid="ignore"):
            qf = np.rint((x - pred) / step)
        escape = ~(np.abs(qf) < 2.0**MAX_BITS)  # also catches inf and NaN
        q = np.where(escape, 0, qf).astype(np.int64)
    else:  # E = 0: the prediction itself, and every value it misses stored raw
        escape, q = np.zeros(len(x), dtype=bool), np.zeros(len(x), dtype=np.int64)
    escape |= _misses(x, reconstruct(pred, q, step, dtype), inner, dtype)
    q[escape] = 0
    return q, escape


def _misses(x, values, inner, dtype):
    """Where the decoded `values` (in `dtype`) of the finite float64 `x` may miss E'.

    A float value must stay within E' even one ulp away: a decoder whose
    prediction differs by rounding (within the margin) can land on the
    neighbouring float after the cast.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.abs(x - values.astype(np.float64))
        if dtype.kind == "f":
            err = err + np.abs(np.spacing(values)).astype(np.float64)
    miss = ~(err <= inner)
    if dtype.kind in "iu":
        miss |= np.abs(x) > 2.0**53  # beyond this float64 no longer holds every integer
    return miss


def reconstruct(pred, q, step, dtype):
    """The decoded values p + step * q in `dtype` (the same function on both sides)."""
    with np.errstate(over="ignore", invalid="ignore"):
        # q = 0 keeps the prediction even when the step overflowed to inf (0 * inf is NaN)
        return cast(np.where(q == 0, pred, pred + step * q), dtype)


def encode_values(writer, x, pred, bound=None, coders=None):
    """Append one field's section to `writer` (a ``ByteWriter``).

    Parameters
    ----------
    x : (H, W) array, integer or floating dtype.
    pred : (H, W) float64, finite: the prediction the decoder will also have.
    bound : maximum absolute error E >= 0, or None for the prediction alone
        (only non-finite values are then exact).
    coders : the residual coders to try ("integer", "sperr", "sz3"); None for
        all. The integer coder also codes what the filters cannot.

    Returns
    -------
    dict : counts of non-finite values and escapes, the residual coder chosen
        (its kind as ``transform``, its name in ``coders`` as ``family``).
    """
    dtype = check_dtype(x.dtype)
    finite = np.isfinite(x) if dtype.kind == "f" else np.ones(x.shape, dtype=bool)
    n_nonfinite = int(x.size - finite.sum())
    writer.uvarint(n_nonfinite)
    if n_nonfinite:
        writer.blob(zlib.compress(np.packbits(~finite).tobytes()))
        writer.blob(_raw(x[~finite], dtype))
    if bound is None:
        return {"nonfinite": n_nonfinite, "escapes": 0}
    inner = bound * (1 - MARGIN)
    tried = set(FAMILIES.values()) if coders is None else set(coders)
    options = [_filter_residual(x, pred, finite, inner, dtype, kind)
               for kind, name in FILTER_KINDS.items() if name in tried and inner > 0]
    if "integer" in tried or not any(options):  # first, so that it wins a tie
        options.insert(0, _integer_residual(x, pred, finite, inner, dtype))
    kind, data, escapes = min((o for o in options if o is not None), key=lambda o: len(o[1]))
    writer.extend(data)
    return {"nonfinite": n_nonfinite, "escapes": escapes, "transform": kind, "family": FAMILIES[kind]}


def _integer_residual(x, pred, finite, inner, dtype):
    """(kind, bytes, escapes) of the quantised residual, under its cheapest integer transform."""
    xf = x[finite].astype(np.float64)
    q, escape = _quantise(xf, pred[finite], inner, dtype)
    kind, (symbols, nbits, low) = PLAIN, _symbols(q, escape)
    # differences at most quadruple |q|: only where that still fits the symbol alphabet
    if q.size and np.abs(q).max() < 2.0 ** (MAX_BITS - 2):
        q_HW = np.zeros(x.shape, dtype=np.int64)
        q_HW[finite] = q
        best = _cost_bits(symbols, nbits)
        for candidate in (DIFF_X, DIFF_XY):
            coded = _symbols(_transform(q_HW, candidate).ravel(), np.zeros(x.size, dtype=bool))
            cost = _cost_bits(coded[0], coded[1]) + 8 * len(zlib.compress(np.packbits(escape).tobytes()))
            if cost < best:
                kind, best, (symbols, nbits, low) = candidate, cost, coded
    w = ByteWriter()
    w.uvarint(kind)
    if kind != PLAIN:
        w.blob(zlib.compress(np.packbits(escape).tobytes()))
    counts = np.bincount(symbols, minlength=1)
    w.uvarint(len(counts))
    for c in counts:
        w.uvarint(c)
    stream = SymbolWriter()
    stream.add(symbols, counts)
    w.blob(stream.bytes())
    w.blob(_pack_planes(low, nbits))
    w.blob(_raw(x[finite][escape], dtype))
    return kind, w.bytes(), int(escape.sum())


def _filter_tolerance(inner):
    """The bound a filter is asked for: inside E', so that the cast to the field's dtype rarely escapes."""
    return inner * (1 - 2.0**-8)


def _filter_values(pred, r_hat, finite, dtype):
    """The decoded finite values p + r_hat in `dtype` (the same function on both sides)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return cast(pred[finite] + r_hat[finite], dtype)


def _filter_residual(x, pred, finite, inner, dtype, kind):
    """(kind, bytes, escapes) of the residual coded by an HDF5 filter; None where the filter cannot code it."""
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.where(finite, x.astype(np.float64) - pred, 0.0)
    name, tolerance = FILTER_KINDS[kind], _filter_tolerance(inner)
    if not (np.isfinite(r).all() and filters.fits(r, tolerance)):
        return None  # huge residuals, tiny fields: the integer coder takes them
    data = filters.encode(r, name, tolerance)
    xf = x[finite].astype(np.float64)
    values = _filter_values(pred, filters.decode(data, name, r.shape, tolerance), finite, dtype)
    escape = _misses(xf, values, inner, dtype)
    w = ByteWriter()
    w.uvarint(kind)
    w.blob(data)
    w.uvarint(int(escape.sum()))
    if escape.any():
        w.blob(zlib.compress(np.packbits(escape).tobytes()))
        w.blob(_raw(x[finite][escape], dtype))
    return kind, w.bytes(), int(escape.sum())


def decode_values(reader, pred, bound, dtype):
    """Read one field's section from `reader` (a ``ByteReader``): the (H, W) field in `dtype`."""
    dtype = check_dtype(dtype)
    finite = np.ones(pred.shape, dtype=bool)
    out = np.empty(pred.shape, dtype=dtype)
    n_nonfinite = reader.uvarint()
    if n_nonfinite:
        mask = np.unpackbits(np.frombuffer(_inflate(reader.blob(), "non-finite mask bits"), dtype=np.uint8),
                             count=pred.size)
        if mask.size != pred.size or int(mask.sum()) != n_nonfinite:
            raise CodecError("non-finite mask does not match its count (corrupt file)")
        finite = ~mask.reshape(pred.shape).astype(bool)
        out[~finite] = _unraw(reader.blob(), dtype, n_nonfinite, "non-finite values")
    p = pred[finite]
    if bound is None:
        out[finite] = cast(p, dtype)
        return out
    kind = reader.uvarint()
    if kind in FILTER_KINDS:
        inner = bound * (1 - MARGIN)
        tolerance = _filter_tolerance(inner)
        r_hat = filters.decode(reader.blob(), FILTER_KINDS[kind], pred.shape, tolerance)
        values = _filter_values(pred, r_hat, finite, dtype)
        n_escapes = reader.uvarint()
        if n_escapes:
            escape = _unpack_mask(reader.blob(), len(p), "escape")
            if int(escape.sum()) != n_escapes:
                raise CodecError("escape mask does not match its count (corrupt file)")
            values[escape] = _unraw(reader.blob(), dtype, n_escapes, "escaped values")
        out[finite] = values
        return out
    if kind not in (PLAIN, DIFF_X, DIFF_XY):
        raise CodecError(f"unknown residual transform {kind} (corrupt file)")
    n = len(p) if kind == PLAIN else pred.size  # differences are coded on the whole grid
    if kind != PLAIN:
        escape = _unpack_mask(reader.blob(), len(p), "escape")
    counts = np.array([reader.uvarint() for _ in range(reader.uvarint())], dtype=np.int64)
    if len(counts) > ESCAPE + (kind == PLAIN) or counts.sum() != n:
        raise CodecError("residual histogram does not match the field (corrupt file)")
    symbols = SymbolReader(reader.blob()).take(counts, n)
    if kind == PLAIN:
        escape = symbols == ESCAPE
    c = np.where(symbols == ESCAPE, 0, (symbols + 1) // 2)
    nbits = np.maximum(c - 1, 0)
    mag = np.where(c > 0, np.left_shift(1, nbits), 0) + _unpack_planes(reader.blob(), nbits)
    q = np.where(symbols % 2 == 0, -mag, mag)
    if kind != PLAIN:
        q = _untransform(q.reshape(pred.shape), kind)[finite]
    values = reconstruct(p, q, 2 * bound * (1 - MARGIN), dtype)
    values[escape] = _unraw(reader.blob(), dtype, int(escape.sum()), "escaped values")
    out[finite] = values
    return out


def section_stats(reader, bound):
    """Skim one field's section without decoding it: byte sizes and counts."""
    start = reader.pos
    n_nonfinite = reader.uvarint()
    if n_nonfinite:
        reader.blob()  # mask
        reader.blob()  # raw values
    stats = {"nonfinite": n_nonfinite, "escapes": 0, "residual_bytes": 0}
    if bound is not None:
        residual_start = reader.pos
        kind = reader.uvarint()
        if kind in FILTER_KINDS:
            reader.blob()  # the filter's bytes
            stats["escapes"] = reader.uvarint()
            for _ in range(2 if stats["escapes"] else 0):
                reader.blob()  # mask and raw values
        else:
            escape_mask = reader.blob() if kind != PLAIN else None
            counts = [reader.uvarint() for _ in range(reader.uvarint())]
            if escape_mask is None:
                stats["escapes"] = counts[ESCAPE] if len(counts) > ESCAPE else 0
            else:
                bits = np.frombuffer(_inflate(escape_mask, "escape mask bits"), dtype=np.uint8)
                stats["escapes"] = int(np.unpackbits(bits).sum())
            for _ in range(3):
                reader.blob()  # symbols, bit planes, raw escapes
        stats["transform"] = kind
        stats["residual_bytes"] = reader.pos - residual_start
    stats["bytes"] = reader.pos - start
    return stats
