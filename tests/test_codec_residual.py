"""The value layer: the error bound holds for every value, non-finite values come back bit for bit."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from dynfield.codec import filters
from dynfield.codec.container import ByteReader, ByteWriter, CodecError
from dynfield.codec.residual import FILTER_KINDS, MARGIN, decode_values, encode_values, section_stats


def roundtrip(x, pred, bound, decode_pred=None):
    w = ByteWriter()
    stats = encode_values(w, x, pred, bound)
    r = ByteReader(w.bytes())
    out = decode_values(r, pred if decode_pred is None else decode_pred, bound, x.dtype)
    r.done()
    return out, stats, w.bytes()


def check_bound(x, out, bound):
    finite = np.isfinite(x)
    assert out.dtype == x.dtype
    err = np.abs(x[finite].astype(np.float64) - out[finite].astype(np.float64))
    assert (err <= bound).all(), f"max error {err.max()} > {bound}"
    # non-finite values bit for bit (NaN payloads included)
    assert out[~finite].tobytes() == x[~finite].tobytes()


def fields(dtype):
    """Small fields of any values: subnormal to the largest finite, NaN and +-Inf."""
    elements = st.floats(width=np.dtype(dtype).itemsize * 8)
    return hnp.arrays(dtype, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=elements)


@settings(max_examples=30, deadline=None)
@given(x=st.one_of(fields(np.float32), fields(np.float64)),
       bound=st.one_of(st.floats(1e-12, 1e-6), st.floats(1e-6, 1e3)),
       offset=st.floats(-1e6, 1e6), seed=st.integers(0, 2**16))
def test_bound_holds_for_every_value(x, bound, offset, seed):
    noise = np.random.default_rng(seed).normal(size=x.shape) * 10 ** np.random.default_rng(seed).uniform(-8, 8)
    pred = np.where(np.isfinite(x), x.astype(np.float64), 0.0) + offset + noise
    pred = np.where(np.isfinite(pred), pred, 0.0)
    out, _, _ = roundtrip(x, pred, bound)
    check_bound(x, out, bound)


@settings(max_examples=20, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.int8, np.uint16, np.int32, np.int64]),
                    st.tuples(st.integers(1, 6), st.integers(1, 6))),
       bound=st.floats(0.3, 1e4), seed=st.integers(0, 2**16))
def test_bound_holds_for_integer_fields(x, bound, seed):
    pred = x.astype(np.float64) + np.random.default_rng(seed).normal(scale=100.0, size=x.shape)
    out, _, _ = roundtrip(x, pred, bound)
    check_bound(x, out, bound)


def test_non_finite_values_come_back_bit_for_bit():
    x = np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)
    payload_nan = np.frombuffer(np.uint32(0x7FC01234).tobytes(), dtype=np.float32)[0]
    x[0, 0], x[1, 2], x[4, 5], x[3, 3] = payload_nan, np.inf, -np.inf, np.nan
    for bound in (None, 0.01):
        out, stats, _ = roundtrip(x, np.zeros(x.shape), bound)
        assert stats["nonfinite"] == 4
        mask = ~np.isfinite(x)
        assert out[mask].view(np.uint32).tolist() == x[mask].view(np.uint32).tolist()
        if bound is None:  # without a bound the finite values are the prediction
            assert (out[~mask] == 0).all()


def test_zero_bound_is_lossless():
    x = np.random.default_rng(0).normal(size=(7, 5))
    out, stats, _ = roundtrip(x, x + 0.3, 0.0)
    assert np.array_equal(out, x)
    assert stats["escapes"] == x.size  # every value stored raw


def test_huge_residuals_use_the_bit_planes():
    x = np.random.default_rng(1).normal(size=(8, 8)) * 1e12
    out, stats, data = roundtrip(x, np.zeros(x.shape), 1e-3)  # |q| up to ~1e15, ~50 raw bits each
    check_bound(x, out, 1e-3)
    assert stats["escapes"] < 8  # values above ~2e12, whose ulp (~4e-4) leaves no room: stored raw
    assert len(data) > 64 * 40 / 8


def test_prediction_off_by_less_than_the_margin_keeps_the_bound():
    """The margin absorbs a decoder-side prediction that differs slightly (another CPU's rounding)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 32)).astype(np.float32)
    pred = x + rng.normal(scale=0.05, size=x.shape)
    bound = 1e-3
    shifted = pred + rng.uniform(-1, 1, size=x.shape) * bound * MARGIN * 0.9
    out, _, _ = roundtrip(x, pred, bound, decode_pred=shifted)
    check_bound(x, out, bound)


def test_a_good_prediction_costs_few_bits():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 64))
    bound = 0.01
    _, _, good = roundtrip(x, x + rng.normal(scale=bound, size=x.shape), bound)
    _, _, poor = roundtrip(x, np.zeros(x.shape), bound)
    assert 8 * len(good) / x.size < 2.5  # ~log2(sqrt(2 pi e) sigma / 2E) + side costs
    assert len(poor) > 2 * len(good)


@pytest.mark.parametrize("bound", [None, 0.1])
def test_section_stats_skims_the_section(bound):
    x = np.arange(12, dtype=np.float64).reshape(3, 4)
    x[0, 1] = np.nan
    pred = np.zeros(x.shape)
    pred[2, 3] = 1e300  # overflows the residual range: an escape
    w = ByteWriter()
    w.f64(1.0)  # something before the section, as in a chunk
    encode_values(w, x, pred, bound)
    r = ByteReader(w.bytes())
    r.f64()
    stats = section_stats(r, bound)
    r.done()
    assert stats["nonfinite"] == 1
    assert stats["escapes"] == (1 if bound else 0)
    assert stats["bytes"] == len(w.bytes()) - 8


def test_a_smooth_residual_is_coded_as_differences():
    """Tight bound, smooth prediction error: the 2D difference is chosen, far cheaper, and exact."""
    yy, xx = np.mgrid[0:64, 0:64] / 64.0
    pred = np.sin(6 * xx) * np.cos(4 * yy)
    error = 0.3 * np.sin(2 * np.pi * (xx + 0.5 * yy))  # smooth on the grid, 300 steps deep
    x = pred + error
    x[5, 7] = np.nan  # a hole in the grid
    x[9, 9] = 1e300  # a value whose residual is too large to code: an escape
    bound = 1e-3
    out, stats, data = roundtrip(x, pred, bound)
    check_bound(x, out, bound)
    assert stats["transform"] != 0 and stats["escapes"] == 1
    skim = section_stats(ByteReader(data), bound)
    assert skim["transform"] == stats["transform"] and skim["escapes"] == 1
    plain_bits = np.log2(2 * 0.3 / (2 * bound))  # about what coding q itself would need per value
    assert 8 * len(data) / x.size < plain_bits / 2


def turbulent_field(n=96, seed=0, slope=-3.0):
    """A periodic random field with a power-law spectrum, like a vorticity snapshot."""
    rng = np.random.default_rng(seed)
    k = np.hypot(*np.meshgrid(np.fft.fftfreq(n, 1 / n), np.fft.fftfreq(n, 1 / n)))
    amplitude = np.where(k > 0, np.maximum(k, 1) ** (slope / 2), 0.0)
    return np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.uniform(size=(n, n)))).real * n


@pytest.mark.parametrize("rel", [1e-2, 1e-3, 1e-4])
def test_a_field_costs_no_more_than_sperr_or_sz3_alone(rel):
    """The value layer keeps the shortest coder: never more than SPERR or SZ3 on the same residual, plus framing."""
    x = turbulent_field().astype(np.float32)
    x[10:14, 20:30] = np.nan  # land
    bound = rel * float(np.nanmax(x) - np.nanmin(x))
    pred = np.full(x.shape, float(np.nanmean(x)))
    out, stats, data = roundtrip(x, pred, bound)
    check_bound(x, out, bound)
    r = np.where(np.isfinite(x), x - pred, 0.0)
    tolerance = bound * (1 - MARGIN) * (1 - 2.0**-8)
    alone = min(len(filters.encode(r, name, tolerance)) for name in filters.FILTERS)
    assert len(data) <= alone + 40  # the kind, blob lengths, the NaN mask and the escape mask
    skim = section_stats(ByteReader(data), bound)
    assert skim["transform"] == stats["transform"] and skim["escapes"] == stats["escapes"] < 4


def test_a_filter_coded_residual_keeps_the_bound_under_a_shifted_prediction():
    x = turbulent_field(seed=1)
    pred = x + 0.1 * turbulent_field(seed=2)
    bound = 1e-2 * float(x.max() - x.min())
    shifted = pred + np.random.default_rng(3).uniform(-1, 1, size=x.shape) * bound * MARGIN * 0.9
    out, stats, _ = roundtrip(x, pred, bound, decode_pred=shifted)
    assert stats["transform"] in FILTER_KINDS
    check_bound(x, out, bound)


def test_a_damaged_filter_section_is_refused():
    x = turbulent_field()
    bound = 1e-2 * float(x.max() - x.min())
    w = ByteWriter()
    encode_values(w, x, np.zeros(x.shape), bound)
    data = bytearray(w.bytes())
    data[8:40] = bytes(32)  # inside the filter's bytes
    with pytest.raises(CodecError):
        decode_values(ByteReader(bytes(data)), np.zeros(x.shape), bound, x.dtype)


def test_a_float32_value_one_ulp_away_stays_within_the_bound():
    """Where the bound is a few float32 ulps, a decoder landing on the neighbouring float still keeps it."""
    x = (1000.0 + np.random.default_rng(4).uniform(size=(16, 16))).astype(np.float32)
    bound = 1.5 * float(np.spacing(np.float32(1000.0)))  # one and a half ulps
    out, stats, _ = roundtrip(x, x.astype(np.float64) + 0.8 * bound, bound)  # rounds to x + 1 ulp
    up = np.nextafter(out, np.float32(np.inf))
    down = np.nextafter(out, np.float32(-np.inf))
    for neighbour in (out, up, down):  # what another machine's rounding could give
        assert (np.abs(neighbour.astype(np.float64) - x) <= bound).all()
