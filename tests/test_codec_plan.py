"""After its first snapshots, a file tries only the ways of coding that they chose."""

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_tokenizer

from dynfield.codec import chunks, compress_file, decompress_file, inspect_file, residual
from dynfield.codec.entropy import FieldTokens

SNAPSHOTS, PLAN, CALIBRATION = 8, 2, 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("ckpt") / "tokenizer.pt")


def test_the_snapshots_after_the_plan_try_only_what_it_chose(tmp_path, ckpt, monkeypatch):
    monkeypatch.setattr("dynfield.codec.codec.PLAN_CHUNKS", PLAN)
    monkeypatch.setattr("dynfield.codec.codec.CALIBRATION_CHUNKS", CALIBRATION)
    # white noise: an untrained tokenizer's tokens never pay for themselves under a bound
    noise = np.random.default_rng(0).normal(size=(SNAPSHOTS, 16, 24)).astype(np.float32)
    src, out = tmp_path / "in.nc", tmp_path / "back.nc"
    xr.Dataset({"w": (("time", "y", "x"), noise)}).to_netcdf(src)
    batches, calls = [], []
    tokenize, encode_values = chunks.tokenize, residual.encode_values

    def counted_tokenize(model, x, **rate):
        batches.append(len(x))
        return tokenize(model, x, **rate)

    def recorded(writer, x, pred, bound=None, coders=None):
        info = encode_values(writer, x, pred, bound, coders)
        calls.append((coders, info["family"], not pred.any()))
        return info

    monkeypatch.setattr(chunks, "tokenize", counted_tokenize)
    monkeypatch.setattr(residual, "encode_values", recorded)
    info = compress_file(src, tmp_path / "w.dfz", checkpoint=ckpt, rel_error=1e-2, progress=False)
    assert info["tokens"]["units_without"] == SNAPSHOTS  # what the test sets out to make
    # the plan's snapshots: both ways (against the tokens, and alone), every coder; the tokens lost each time
    first = [c for c in calls if c[0] is None]
    assert len(first) == 2 * PLAN and len(batches) == PLAN
    chosen = sorted({family for _, family, alone in first if alone})
    # after it: no tokenizer, the field alone, only the coders chosen
    later = calls[len(first):]
    assert len(later) == SNAPSHOTS - PLAN and all(alone for _, _, alone in later)
    assert all(coders == chosen for coders, _, _ in later)
    decompress_file(tmp_path / "w.dfz", out, checkpoint=ckpt, progress=False)
    with xr.open_dataset(out) as back:
        assert float(np.abs(back["w"].values - noise).max()) <= 1e-2 * float(noise.max() - noise.min())


@pytest.mark.parametrize("coders, families", [(["sperr"], {"sperr"}), (["sz3"], {"sz3"}),
                                              (["integer"], {"integer"}), (None, {"integer", "sperr", "sz3"})])
def test_a_section_tries_the_coders_it_is_given_and_decodes_the_same(coders, families, monkeypatch):
    from dynfield.codec.container import ByteReader, ByteWriter

    x = np.cumsum(np.random.default_rng(1).normal(size=(32, 32)), axis=1)
    tried = []
    filter_residual, integer_residual = residual._filter_residual, residual._integer_residual
    monkeypatch.setattr(residual, "_filter_residual",
                        lambda *a: tried.append(residual.FILTER_KINDS[a[-1]]) or filter_residual(*a))
    monkeypatch.setattr(residual, "_integer_residual", lambda *a: tried.append("integer") or integer_residual(*a))
    w = ByteWriter()
    info = residual.encode_values(w, x, np.zeros(x.shape), 0.05, coders)
    assert set(tried) == families and info["family"] in families
    back = residual.decode_values(ByteReader(w.bytes()), np.zeros(x.shape), 0.05, x.dtype)
    assert np.abs(back - x).max() <= 0.05


def test_the_integer_coder_takes_what_the_filters_cannot():
    from dynfield.codec.container import ByteWriter

    x = np.full((1, 40), 3.0)  # one value wide: the filters refuse it
    info = residual.encode_values(ByteWriter(), x, np.zeros(x.shape), 0.1, ["sperr"])
    assert info["family"] == "integer"


def test_bounded_tokens_are_tried_at_shallower_depths_only_where_no_rate_was_asked(tmp_path, monkeypatch):
    monkeypatch.setattr("dynfield.codec.codec.PLAN_CHUNKS", PLAN)
    monkeypatch.setattr("dynfield.codec.codec.CALIBRATION_CHUNKS", CALIBRATION)
    ckpt = tiny_tokenizer(tmp_path / "ladder.pt", stages=4)
    field = np.random.default_rng(2).normal(size=(SNAPSHOTS, 16, 24)).astype(np.float32)
    src = tmp_path / "in.nc"
    xr.Dataset({"w": (("time", "y", "x"), field)}).to_netcdf(src)
    asked, tokenize = [], chunks.tokenize
    monkeypatch.setattr(chunks, "tokenize", lambda model, x, **rate: asked.append(rate) or tokenize(model, x, **rate))
    cut, shallower = [], FieldTokens.shallower
    monkeypatch.setattr(FieldTokens, "shallower", lambda tokens, depth: cut.append(depth) or shallower(tokens, depth))

    compress_file(src, tmp_path / "w.dfz", checkpoint=ckpt, rel_error=1e-2, progress=False)
    # 4 stages: a quarter and a half of the full depth, every region at it, cut from the full depth's tokens
    assert sorted(cut) == [1] * PLAN + [2] * PLAN
    assert len(asked) == PLAN  # noise: the tokens lost at every depth, so no later snapshot tries them
    decompress_file(tmp_path / "w.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(tmp_path / "back.nc") as back:
        assert float(np.abs(back["w"].values - field).max()) <= 1e-2 * float(field.max() - field.min())

    asked.clear()
    compress_file(src, tmp_path / "b.dfz", checkpoint=ckpt, rel_error=1e-2, bits_per_value=0.4, progress=False)
    assert asked and all(r["bits_per_value"] == 0.4 for r in asked)  # the rate asked for, and no other
    asked.clear()
    compress_file(src, tmp_path / "t.dfz", checkpoint=ckpt, progress=False)  # no bound: full depth only
    assert len(asked) == SNAPSHOTS and not any(r.get("bits_per_value") or r.get("depth") for r in asked)
    info = inspect_file(tmp_path / "t.dfz")
    assert (info["mean_depth"], info["stages"]) == (4, 4)


def test_the_plan_keeps_the_rate_most_of_its_snapshots_chose():
    class Units:
        def units(self, g):
            return [["u", "v"]]

    small, full = {"depth": 2}, {"fine_ratio": None, "bits_per_value": None, "psnr": None}
    results = [chunks.Encoded(0, i, [object()], [], {}, {"u+v": rate}) for i, rate in enumerate([full, small, small])]
    plan = chunks.Coder.plan_for(Units(), results)
    assert plan["rates"] == {"u+v": small} and plan["tokens"] == {"u+v": True}
    tie = chunks.Coder.plan_for(Units(), results[:2])
    assert tie["rates"] == {"u+v": full}  # the earlier of two rates chosen equally often
