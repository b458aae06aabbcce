"""The prior as the codec's entropy model: integer counts, round trips, code length, damage."""

import math

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import make_tokens, tiny_prior, tiny_tokenizer
from test_prior import SHAPE, tiny

from dynfield import compress, decompress, inspect
from dynfield.codec import CodecError, inspect_file
from dynfield.codec.lazy import open_dfz
from dynfield.codec.field import tokens_to_numpy
from dynfield.codec.prior_coding import GRID, OFFSETS, SPAN, PriorCoder, counts, margin
from dynfield.data.dummy import dummy_dataset


def test_counts_follow_the_rounded_logits_by_integers_alone():
    logits = np.array([[3.0, 3.0 - 1 / GRID, 3.0 - 1.0, -100.0]])
    c = counts(logits, 0)[0]
    assert c[0] == 2**20 + 1 and c[-1] == 1  # the top, and the floor of one count
    assert c[1] == math.floor(2**20 * math.exp(-1 / GRID)) + 1
    assert abs(c[2] / c[0] - math.exp(-1)) < 1e-5
    # a shift of the whole row changes nothing; counts never reach zero
    assert np.array_equal(counts(logits + 7.25, 3), counts(logits, 3))
    assert counts(np.array([[0.0, -SPAN / GRID - 5]]), 0)[0, 1] == 1


def test_margin_is_the_distance_to_the_nearest_rounding_edge():
    edge = np.array([[0.0, -2 / GRID + 1e-12]])  # just above an edge at offset 0
    assert margin(edge, 0) < 1e-9
    assert margin(edge, OFFSETS // 2) > 0.4  # half a step away at the middle offset


@pytest.mark.parametrize("order, extra", [("raster", {}), ("coarse_to_fine", {}),
                                          ("coarse_to_fine", {"locality": True, "code_dim": 4}),
                                          ("raster", {"locality": True, "position_locality": True, "rotary": True,
                                                      "code_dim": 4}),
                                          ("raster", {"nested": True}), ("coarse_to_fine", {"nested": True})])
def test_tokens_round_trip_and_cost_what_the_prior_says(order, extra):
    prior = tiny(order, **extra)
    if "code_dim" in extra:
        prior.code_emb.set_vectors(torch.randn(32, 4))
    coder = PriorCoder(prior)
    tokens = make_tokens("random", B=3, seed=1, nested=extra.get("nested", False))
    bits = prior.bits(tokens)
    fields = tokens_to_numpy(tokens)
    streams = coder.encode(fields, SHAPE)
    assert [coder.encode([f], SHAPE)[0] for f in fields] == streams  # a field's stream is its own
    for b, (field_tokens, stream, back) in enumerate(zip(fields, streams, coder.decode(streams, SHAPE))):
        assert np.array_equal(back.grain, field_tokens.grain)
        assert all(np.array_equal(x, y) for x, y in zip(back.codes, field_tokens.codes))
        # the stream costs the prior's own code length, plus the grid's rounding and the range coder's words
        payload_bits = 8 * (len(stream) - 5)
        assert bits[b] - 1 <= payload_bits <= 1.02 * bits[b] + 64


def test_a_damaged_or_foreign_stream_is_refused():
    prior = tiny("raster")
    coder = PriorCoder(prior)
    fields = tokens_to_numpy(make_tokens("random", B=1, seed=2))
    stream = coder.encode(fields, SHAPE)[0]
    damaged = bytearray(stream)
    damaged[9] ^= 0x40
    with pytest.raises(CodecError, match="checksum|does not decode"):
        coder.decode([bytes(damaged)], SHAPE)
    with pytest.raises(CodecError, match="damaged"):
        coder.decode([stream[:-2]], SHAPE)
    other = PriorCoder(tiny("raster", dim=48))  # other weights: other probabilities
    with pytest.raises(CodecError, match="checksum|does not decode"):
        other.decode([stream], SHAPE)


def test_a_masked_prior_is_refused_with_a_clear_error():
    from dynfield.models.masked_prior import MaskedPrior

    masked = MaskedPrior(order="bidirectional", factors=(4, 8), shape=SHAPE, codebook_size=32, dim=32, depth=1,
                         heads=2)
    with pytest.raises(CodecError, match="autoregressive"):
        PriorCoder(masked)


# -- the codec with --prior -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    tokenizer = tiny_tokenizer(d / "tokenizer.pt")
    return {"tokenizer": tokenizer, "prior": tiny_prior(d / "prior.pt", tokenizer, (16, 24)),
            "other": tiny_prior(d / "other.pt", tokenizer, (16, 24), seed=1),
            "small": tiny_prior(d / "small.pt", tokenizer, (16, 16)),
            "foreign": tiny_prior(d / "foreign.pt", tiny_tokenizer(d / "foreign_tokenizer.pt", seed=1), (16, 24))}


def test_prior_coded_files_round_trip_and_decode_as_without_it(models, tmp_path, capsys):
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=3, ny=16, nx=24)[["u", "scalar"]].to_netcdf(src)
    base = [str(src), "--checkpoint", str(models["tokenizer"]), "--max-abs-error", "u=0.01", "--quiet"]
    assert compress.main([base[0], str(tmp_path / "plain.dfz"), *base[1:]]) == 0
    assert compress.main([base[0], str(tmp_path / "prior.dfz"), *base[1:], "--prior", str(models["prior"])]) == 0
    summary = inspect_file(tmp_path / "prior.dfz")
    assert summary["token_prior"]["order"] == "raster" and summary["tokens"]["bits"] > 0
    assert inspect.main([str(tmp_path / "prior.dfz")]) == 0
    assert "range coded under the raster prior" in capsys.readouterr().out
    for name in ("plain", "prior"):  # decompress finds the prior where it was
        assert decompress.main([str(tmp_path / f"{name}.dfz"), str(tmp_path / f"{name}.nc"), "--checkpoint",
                                str(models["tokenizer"]), "--quiet"]) == 0
    with xr.open_dataset(tmp_path / "plain.nc") as a, xr.open_dataset(tmp_path / "prior.nc") as b:
        assert all(np.array_equal(a[v].values, b[v].values) for v in ("u", "scalar"))  # the same tokens
        lazy = open_dfz(tmp_path / "prior.dfz", checkpoint=str(models["tokenizer"]))  # finds the prior too
        assert all(np.array_equal(lazy[v].values, b[v].values) for v in ("u", "scalar"))
    assert decompress.main([str(tmp_path / "prior.dfz"), str(tmp_path / "x.nc"), "--checkpoint",
                            str(models["tokenizer"]), "--prior", str(models["other"]), "--quiet"]) == 1
    assert not (tmp_path / "x.nc").exists()


def test_a_prior_that_costs_more_than_histograms_is_declined(models, tmp_path, capsys):
    # 16 snapshots of one smooth pattern: the histograms learn its few codes, the untrained prior
    # prices every code alike, so the file is coded as without it and decodes with no prior
    src = tmp_path / "in.nc"
    ds = dummy_dataset(n_sample=16, ny=16, nx=24)[["u"]]
    y, x = np.meshgrid(np.arange(16), np.arange(24), indexing="ij")
    ds["u"].values[:] = np.sin(2 * np.pi * x / 24) * np.cos(2 * np.pi * y / 16)
    ds.to_netcdf(src)
    base = [str(src), "--checkpoint", str(models["tokenizer"])]
    assert compress.main([base[0], str(tmp_path / "plain.dfz"), *base[1:], "--quiet"]) == 0
    assert compress.main([base[0], str(tmp_path / "prior.dfz"), *base[1:], "--prior", str(models["prior"])]) == 0
    assert "coded with the histograms" in capsys.readouterr().out
    assert inspect_file(tmp_path / "prior.dfz")["token_prior"] is None
    assert (tmp_path / "prior.dfz").read_bytes() == (tmp_path / "plain.dfz").read_bytes()
    assert decompress.main([str(tmp_path / "prior.dfz"), str(tmp_path / "back.nc"), "--checkpoint",
                            str(models["tokenizer"]), "--quiet"]) == 0


def test_a_prior_that_does_not_fit_the_file_is_refused(models, tmp_path, capsys):
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=1, ny=16, nx=24)[["u"]].to_netcdf(src)
    base = [str(src), str(tmp_path / "out.dfz"), "--checkpoint", str(models["tokenizer"]), "--quiet", "--prior"]
    assert compress.main([*base, str(models["small"])]) == 1
    assert "models 16x16 fields" in capsys.readouterr().err
    assert compress.main([*base, str(models["foreign"])]) == 1
    assert "not of the one compressing" in capsys.readouterr().err
    assert compress.main([*base, str(models["tokenizer"])]) == 1  # a tokenizer is not a prior
    assert "not a prior" in capsys.readouterr().err
    assert not (tmp_path / "out.dfz").exists()
