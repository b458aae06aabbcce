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
  exactly as the decoder will and checks |x - x_hat| <= E' for every value;
  a value that misses (float rounding in the cast, overflow, a residual too
  large to code) is an *escape*, stored raw. So every decoded value is within
  E' of the original, given the decoder's prediction is the encoder's.

The margin E - E' absorbs a prediction that differs by less than E / 1024
between the encoding and the decoding machine (float64 rounding on another
device), at a cost of 0.0014 bits per value.

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
"""

import zlib

import numpy as np

from .container import CodecError
from .entropy import SymbolReader, SymbolWriter

MARGIN = 2.0**-10
PLAIN, DIFF_X, DIFF_XY = 0, 1, 2  # the transforms of q (see the module docstring)
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


def _unpack_mask(data, n, what):
    mask = np.unpackbits(np.frombuffer(zlib.decompress(data), dtype=np.uint8))
    if len(mask) != -(-n // 8) * 8 or mask[n:].any():
        raise CodecError(f"{what} mask does not match the field (corrupt file)")
    return mask[:n].astype(bool)


def _raw(values, dtype):
    return zlib.compress(np.ascontiguousarray(values, dtype=dtype.newbyteorder("<")).tobytes())


def _unraw(data, dtype, n, what):
    arr = np.frombuffer(zlib.decompress(data), dtype=dtype.newbyteorder("<"))
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
    with np.errstate(over="ignore", invalid="ignore"):
        escape |= ~(np.abs(x - reconstruct(pred, q, step, dtype).astype(np.float64)) <= inner)
    if dtype.kind in "iu":
        escape |= np.abs(x) > 2.0**53  # beyond this float64 no longer holds every integer
    q[escape] = 0
    return q, escape


def reconstruct(pred, q, step, dtype):
    """The decoded values p + step * q in `dtype` (the same function on both sides)."""
    with np.errstate(over="ignore", invalid="ignore"):
        # q = 0 keeps the prediction even when the step overflowed to inf (0 * inf is NaN)
        return cast(np.where(q == 0, pred, pred + step * q), dtype)


def encode_values(writer, x, pred, bound=None):
    """Append one field's section to `writer` (a ``ByteWriter``).

    Parameters
    ----------
    x : (H, W) array, integer or floating dtype.
    pred : (H, W) float64, finite: the prediction the decoder will also have.
    bound : maximum absolute error E >= 0, or None for the prediction alone
        (only non-finite values are then exact).

    Returns
    -------
    dict : counts of non-finite values and escapes.
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
    xf = x[finite].astype(np.float64)
    q, escape = _quantise(xf, pred[finite], bound * (1 - MARGIN), dtype)
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
    writer.uvarint(kind)
    if kind != PLAIN:
        writer.blob(zlib.compress(np.packbits(escape).tobytes()))
    counts = np.bincount(symbols, minlength=1)
    writer.uvarint(len(counts))
    for c in counts:
        writer.uvarint(c)
    stream = SymbolWriter()
    stream.add(symbols, counts)
    writer.blob(stream.bytes())
    writer.blob(_pack_planes(low, nbits))
    writer.blob(_raw(x[finite][escape], dtype))
    return {"nonfinite": n_nonfinite, "escapes": int(escape.sum()), "transform": kind}


def decode_values(reader, pred, bound, dtype):
    """Read one field's section from `reader` (a ``ByteReader``): the (H, W) field in `dtype`."""
    dtype = check_dtype(dtype)
    finite = np.ones(pred.shape, dtype=bool)
    out = np.empty(pred.shape, dtype=dtype)
    n_nonfinite = reader.uvarint()
    if n_nonfinite:
        mask = np.unpackbits(np.frombuffer(zlib.decompress(reader.blob()), dtype=np.uint8), count=pred.size)
        if mask.size != pred.size or int(mask.sum()) != n_nonfinite:
            raise CodecError("non-finite mask does not match its count (corrupt file)")
        finite = ~mask.reshape(pred.shape).astype(bool)
        out[~finite] = _unraw(reader.blob(), dtype, n_nonfinite, "non-finite values")
    p = pred[finite]
    if bound is None:
        out[finite] = cast(p, dtype)
        return out
    kind = reader.uvarint()
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
        escape_mask = reader.blob() if kind != PLAIN else None
        counts = [reader.uvarint() for _ in range(reader.uvarint())]
        if escape_mask is None:
            stats["escapes"] = counts[ESCAPE] if len(counts) > ESCAPE else 0
        else:
            stats["escapes"] = int(np.unpackbits(np.frombuffer(zlib.decompress(escape_mask), dtype=np.uint8)).sum())
        stats["transform"] = kind
        for _ in range(3):
            reader.blob()
        stats["residual_bytes"] = reader.pos - residual_start
    stats["bytes"] = reader.pos - start
    return stats
