"""Statistics, normalisation, physically consistent augmentation and the torch Dataset."""

import numpy as np
import pytest
import torch
import xarray as xr

from dynfield.conventions import SAMPLE, TIME, X, Y
from dynfield.data.dummy import dummy_dataset, write_dummy_pdebench_hdf5, write_dummy_well_hdf5
from dynfield.data.fields import (FieldDataset, compute_stats, denormalise, load_stats, normalise,
                                  pad_to_multiple, reflection_signs, save_stats)
from dynfield.data.io import open_fields

NY, NX = 16, 24
VARS = ["u", "v", "vorticity", "scalar"]


def flow(n_sample=3, n_time=None):
    return dummy_dataset(n_sample, n_time, NY, NX).chunk({SAMPLE: 1})


def spectral_curl(u, v):
    """dv/dx - du/dy on the periodic 2 pi box, (..., H, W)."""
    ky = torch.fft.fftfreq(u.shape[-2], d=1 / u.shape[-2])[:, None]
    kx = torch.fft.fftfreq(u.shape[-1], d=1 / u.shape[-1])[None, :]
    d = lambda f, k, dim: torch.fft.ifft(1j * k * torch.fft.fft(f.double(), dim=dim), dim=dim).real
    return d(v, kx, -1) - d(u, ky, -2)


# --------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("block_bytes", [1000, 2**26])  # many blocks merged, or one
def test_streaming_stats_match_numpy(block_bytes):
    rng = np.random.default_rng(0)
    values = (1e4 + rng.standard_normal((7, 5, 12, 10))).astype(np.float32)  # large offset
    ds = xr.Dataset({"p": ((SAMPLE, TIME, Y, X), values)}).chunk({SAMPLE: 1, TIME: 1})
    stats = compute_stats(ds, block_bytes=block_bytes)["p"]
    ref = values.astype(np.float64)
    assert stats["mean"] == pytest.approx(ref.mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(ref.std(), rel=1e-6)
    assert (stats["min"], stats["max"], stats["count"]) == (ref.min(), ref.max(), ref.size)


@pytest.mark.parametrize("bad, index, n_time", [(np.nan, (1, 3, 5), None), (np.inf, (2, 1, 7, 4), 2)])
def test_nonfinite_values_are_reported_by_variable_and_index(bad, index, n_time):
    ds = flow(3, n_time).load()
    ds["v"].values[index] = bad
    where = ", ".join(f"{d}={i}" for d, i in zip(ds["v"].dims, index))
    with pytest.raises(ValueError, match=f"'v' at {where}"):
        compute_stats(ds.chunk({SAMPLE: 1}), VARS)


def test_mask_leaves_nonfinite_values_out():
    ds = flow().load()
    ds["u"].values[1, 3, 5] = np.nan
    stats = compute_stats(ds, ["u", "v"], mask=True)
    assert stats["u"]["mean"] == pytest.approx(np.nanmean(ds["u"].values.astype(np.float64)), abs=1e-12)
    assert stats["u"]["std"] == pytest.approx(np.nanstd(ds["u"].values.astype(np.float64)), rel=1e-9)
    assert (stats["u"]["masked"], stats["v"]["masked"]) == (1, 0)
    data = FieldDataset(ds, ["u", "v"], stats=stats, mask=True, flips=True, periodic=True, seed=1)
    x, valid = data[1]
    assert x.shape == valid.shape == (2, NY, NX) and valid.dtype == torch.bool
    assert (~valid).sum() == 1 and not valid[0].all() and valid[1].all()
    assert x[~valid].eq(0).all() and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="'u' at sample=1, y=3, x=5"):
        FieldDataset(ds, ["u", "v"], stats=stats)[1]


def test_stats_json_roundtrip(tmp_path):
    stats = compute_stats(flow(), VARS)
    save_stats(stats, tmp_path / "stats.json")
    assert load_stats(tmp_path / "stats.json") == stats
    (tmp_path / "bad.json").write_text('{"u": {"mean": 0.0}}')
    with pytest.raises(ValueError, match="'u'"):
        load_stats(tmp_path / "bad.json")


def test_normalise_denormalise_roundtrip_and_missing_stats():
    stats = compute_stats(flow(), VARS)
    x = torch.randn(2, 4, NY, NX)
    torch.testing.assert_close(denormalise(normalise(x, stats, VARS), stats, VARS), x)
    with pytest.raises(KeyError, match="no statistics for \\['p'\\]"):
        normalise(x[:, :1], stats, ["p"])
    with pytest.raises(KeyError, match="no statistics for \\['scalar'\\]"):
        FieldDataset(flow(), VARS, stats={v: stats[v] for v in VARS[:3]})


# --------------------------------------------------------------------------- dataset

def test_items_are_normalised_over_the_data():
    data = FieldDataset(flow(3, 2), VARS)
    assert len(data) == 6
    x = torch.stack([data[i] for i in range(len(data))])  # (N, C, H, W)
    assert x.dtype == torch.float32 and x.shape == (6, 4, NY, NX)
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-5, rtol=0)


def test_variables_without_time_are_broadcast_over_time(tmp_path):
    path = write_dummy_pdebench_hdf5(tmp_path / "p.h5", "tensor", 2, 3, NY, NX)
    shared = compute_stats(open_fields(path), ["tensor"])["tensor"]  # same units for both channels
    data = FieldDataset(path, ["tensor", "nu"], stats={"tensor": shared, "nu": shared})
    assert len(data) == 6
    for i in range(len(data)):  # nu is the solution at time 0: equal channels at t = 0 only
        x = data[i]
        assert torch.allclose(x[0], x[1], atol=1e-5) == (i % 3 == 0)


def test_reflection_signs_follow_the_tables():
    names = ["u", "v", "vorticity", "scalar", "Vx", "velocity_y", "stress_xy", "stress_xx", "data_0"]
    assert reflection_signs(names, X).tolist() == [-1, 1, -1, 1, -1, 1, -1, 1, 1]
    assert reflection_signs(names, Y).tolist() == [1, -1, -1, 1, 1, -1, -1, 1, 1]


def test_flips_transform_velocity_and_vorticity_consistently():
    ds = flow(1)
    data = FieldDataset(ds, VARS, flips=True, seed=0)
    plain = FieldDataset(ds, VARS, stats=data.stats)[0]
    # the four reflections of the plain item, with the channel signs done by hand
    u, v, w, s = plain
    candidates = {(fy, fx): torch.stack([u * (-1) ** fx, v * (-1) ** fy, w * (-1) ** (fx + fy), s]).flip(
        [d for d, f in ((-2, fy), (-1, fx)) if f]) for fy in (0, 1) for fx in (0, 1)}
    seen = set()
    for epoch in range(12):
        data.set_epoch(epoch)
        x = data[0]
        seen |= {k for k, c in candidates.items() if torch.equal(x, c)}
        phys = denormalise(x, data.stats, VARS).double()
        # the vorticity channel stays the curl of the velocity channels
        torch.testing.assert_close(spectral_curl(phys[0], phys[1]), phys[2], atol=1e-4, rtol=1e-4)
    assert seen == set(candidates)


def test_rolls_preserve_periodic_content():
    ds = flow(1)
    plain = FieldDataset(ds, VARS)[0]
    data = FieldDataset(ds, VARS, periodic=True, seed=3)
    found = set()
    for epoch in range(5):
        data.set_epoch(epoch)
        x = data[0]
        # the flow repeats with period pi in y, so two shifts can match
        shifts = frozenset((i, j) for i in range(NY) for j in range(NX)
                           if torch.allclose(x, plain.roll((i, j), (-2, -1)), atol=1e-6))
        assert shifts
        found.add(shifts)
    assert len(found) > 1


def test_crop_size_and_seeded_reproducibility():
    ds = flow(2)
    a = FieldDataset(ds, VARS, crop=8, periodic=True, flips=True, seed=5)
    b = FieldDataset(ds, VARS, crop=(8, 8), periodic=True, flips=True, seed=5)
    assert a[1].shape == (4, 8, 8)
    assert torch.equal(a[1], b[1])
    b.set_epoch(1)
    assert not torch.equal(a[1], b[1])


@pytest.mark.parametrize("periodic", [False, True])
def test_padding_to_a_multiple(periodic):
    ds = dummy_dataset(1, None, 12, 20)
    plain = FieldDataset(ds, VARS)[0]
    data = FieldDataset(ds, VARS, multiple=8, periodic=periodic, seed=0)
    assert data.pad_hw == (4, 4) and data.size_hw == (12, 20)
    x = data[0]
    assert x.shape == (4, 16, 24)
    if periodic:  # circular: the padded rows and columns repeat the first ones
        torch.testing.assert_close(x[:, 12:, :], x[:, :4, :])
        torch.testing.assert_close(x[:, :, 20:], x[:, :, :4])
    else:
        torch.testing.assert_close(x[..., :12, :20], plain)  # crop back
        torch.testing.assert_close(x[:, 12:, :20], plain[:, 7:11].flip(-2))  # reflected rows


def test_pad_to_multiple_of_a_batch():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6)
    padded, pad = pad_to_multiple(x, 4, periodic=True)
    assert pad == (3, 2) and padded.shape == (2, 3, 8, 8)
    torch.testing.assert_close(padded[..., 5:, :6], x[..., :3, :])
    assert pad_to_multiple(x, 1)[0] is x


def test_too_small_fields_and_3d_fields_are_refused():
    ds = dummy_dataset(1, None, 12, 20)
    with pytest.raises(ValueError, match=r"12x20 are smaller than one region of the coarsest grain \(16x16\)"):
        FieldDataset(ds, VARS, min_size=16)
    with pytest.raises(ValueError, match="crop"):
        FieldDataset(ds, VARS, crop=14)
    with pytest.raises(ValueError, match="3-D"):
        FieldDataset(ds.expand_dims(z=2), VARS)


def test_dataloader_workers_open_files_lazily(tmp_path):
    paths = [write_dummy_well_hdf5(tmp_path / f"w{k}.h5", 2, 2, NY, NX) for k in range(2)]
    data = FieldDataset(str(tmp_path / "w*.h5"), ["velocity_x", "velocity_y", "vorticity"])
    assert data._ds is None  # nothing open to be inherited or pickled
    serial = torch.stack([data[i] for i in range(len(data))])
    loader = torch.utils.data.DataLoader(data, batch_size=2, num_workers=2)
    parallel = torch.cat(list(loader))
    assert len(paths) * 4 == len(data) == parallel.shape[0]
    torch.testing.assert_close(parallel, serial)


def test_channel_agnostic_items_are_single_fields_normalised_on_their_own():
    ds = dummy_dataset(n_sample=3, ny=16, nx=16)
    names = ["u", "vorticity"]
    fields = FieldDataset(ds, names, channel_agnostic=True)
    assert len(fields) == 6 and fields.stats is None
    for i in range(len(fields)):
        x = fields[i]
        raw = ds[names[i % 2]].values[i // 2]
        assert x.shape == (1, 16, 16)
        assert torch.allclose(x[0], torch.from_numpy((raw - raw.mean()) / raw.std()).float(), atol=1e-5)
    # flips reflect without the velocity sign rule, and draw a sign for the whole field
    flipped = FieldDataset(ds, names, channel_agnostic=True, flips=True, seed=0)
    signs = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        x, ref = flipped[1], fields[1]
        match = [s for s in (1, -1) for dims in ((), (-2,), (-1,), (-2, -1))
                 if torch.allclose(x, s * (ref.flip(dims) if dims else ref), atol=1e-6)]
        assert match, "an item must be a reflection of the field, times +1 or -1"
        signs.add(match[0])
    assert signs == {1, -1}
