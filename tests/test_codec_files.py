"""File-level codec and its command lines: round trips, the error bound, damaged files, interruptions."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import benchmark_module, tiny_tokenizer

from dynfield import compress, decompress, paths
from dynfield import inspect as inspect_cli
from dynfield.checkpoint import save_checkpoint, weights_hash
from dynfield.codec import CodecError, compress_file, decompress_file, default_checkpoint, inspect_file
from dynfield.codec import chunks, netcdf, residual
from dynfield.data import open_fields
from dynfield.data.dummy import dummy_dataset, write_dummy_netcdf, write_dummy_well_hdf5
from dynfield.models import DQVAE



@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("ckpt") / "tokenizer.pt")


@pytest.fixture(scope="module")
def other_ckpt(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("ckpt") / "other.pt", seed=1)


def mixed_netcdf(path):
    """Dummy flow plus an integer variable, a masked (_FillValue) one and NaN/Inf values."""
    ds = dummy_dataset(n_sample=2, n_time=3, ny=12, nx=20)
    ds["count"] = (ds["u"] * 1000).astype(np.int32).assign_attrs(units="1", long_name="counts")
    ds["depth"] = (("y", "x"), ds["scalar"].values[0, 0] ** 2, {"units": "m"})  # static: a second chunk group
    ds["u"].values[0, 1, 2, 3] = np.nan
    ds["u"].values[1, 2, 0, 0] = np.inf
    ds["v"].values[0, 0, 5, :4] = -np.inf
    ds["scalar"].values[1, :, 3:6, 7:9] = np.nan  # masked: written as _FillValue, read back as NaN
    ds["scalar"].encoding["_FillValue"] = np.float32(-9999.0)
    ds["v"] = ds["v"].astype(np.float64)
    ds.attrs["history"] = "made by a test"
    ds = ds.assign_coords(time=np.array(["2001-02-03T04:05", "2001-02-03T05:05", "2001-02-03T06:05"],
                                        dtype="datetime64[ns]"), run="experiment 1")
    ds.to_netcdf(path)
    return path


def assert_same_layout(ref, out):
    assert list(out.data_vars) == list(ref.data_vars)
    for v in ref.data_vars:
        assert out[v].dims == ref[v].dims and out[v].shape == ref[v].shape, v
        assert out[v].dtype == ref[v].dtype, v
        assert {k: a for k, a in out[v].attrs.items() if not k.startswith("dynfield_")} == ref[v].attrs, v
    for c in ref.coords:
        assert np.array_equal(out[c].values, ref[c].values) and out[c].dtype == ref[c].dtype, c
    assert {k: a for k, a in out.attrs.items() if not k.startswith("dynfield_")} == ref.attrs


def max_errors(ref, out):
    """Max |error| per variable over finite values; non-finite values must match exactly."""
    errors = {}
    for v in ref.data_vars:
        a, b = ref[v].values, out[v].values
        finite = np.isfinite(a)
        np.testing.assert_array_equal(a[~finite], b[~finite])
        errors[v] = float(np.abs(a[finite].astype(np.float64) - b[finite].astype(np.float64)).max())
    return errors


def test_netcdf_round_trip_keeps_layout_and_non_finite_values(tmp_path, ckpt):
    src = mixed_netcdf(tmp_path / "in.nc")
    summary = compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, fine_ratio=0.5, progress=False)
    assert summary["variables"]["u"]["nonfinite"] == 2 and summary["variables"]["scalar"]["nonfinite"] == 18
    decompress_file(tmp_path / "out.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(src) as ref, xr.open_dataset(tmp_path / "back.nc") as out:
        assert_same_layout(ref, out)
        max_errors(ref, out)  # checks non-finite values
        assert out["scalar"].encoding["_FillValue"] == -9999.0
        assert out.attrs["dynfield_model_sha256"] == summary["model"]["sha256"]


def test_rate_control_by_bits_and_by_psnr(tmp_path):
    ckpt = tmp_path / "staged.pt"
    torch.manual_seed(0)
    model = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, periodic=False, stages=3)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 1, 16, 16))
    save_checkpoint(ckpt, model.eval(), kind="tokenizer", stats={"field": {"mean": 0.0, "std": 1.0}},
                    variables=["field"], periodic=False)
    ds = dummy_dataset(n_sample=2, n_time=2, ny=16, nx=24)[["u", "v"]]
    ds.to_netcdf(tmp_path / "in.nc")
    values = 2 * 2 * 2 * 16 * 24
    sizes = {}
    for bits in (0.6, 1.5):
        s = compress_file(tmp_path / "in.nc", tmp_path / f"b{bits}.dfz", checkpoint=ckpt, bits_per_value=bits,
                          progress=False)
        assert s["settings"]["bits_per_value"] == bits
        assert 5 * s["tokens"]["codes"] <= bits * values  # 5 bits a code before entropy coding
        sizes[bits] = s["tokens"]["codes"]
        decompress_file(tmp_path / f"b{bits}.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    assert sizes[1.5] > sizes[0.6]

    def psnr_per_field(path):
        decompress_file(path, tmp_path / "back.nc", checkpoint=ckpt, progress=False)
        with xr.open_dataset(tmp_path / "in.nc") as ref, xr.open_dataset(tmp_path / "back.nc") as out:
            a, b = (np.stack([d[v].values.reshape(-1, 16, 24) for v in ("u", "v")]) for d in (ref, out))
        span = a.max((2, 3)) - a.min((2, 3))
        return 10 * np.log10(span**2 / ((a - b) ** 2).mean((2, 3)))  # (variable, field)

    full = compress_file(tmp_path / "in.nc", tmp_path / "full.dfz", checkpoint=ckpt, fine_ratio=1.0, progress=False)
    ask = float(psnr_per_field(tmp_path / "full.dfz").min()) - 1.0  # a PSNR every field can reach
    s = compress_file(tmp_path / "in.nc", tmp_path / "p.dfz", checkpoint=ckpt, psnr=ask, progress=False)
    assert (psnr_per_field(tmp_path / "p.dfz") >= ask).all()
    assert s["tokens"]["codes"] < full["tokens"]["codes"]
    with pytest.raises(CodecError, match="at most one"):
        compress_file(tmp_path / "in.nc", tmp_path / "x.dfz", checkpoint=ckpt, psnr=20.0, fine_ratio=0.5,
                      progress=False)


@pytest.mark.parametrize("bound", [{"max_abs_error": 0.01}, {"rel_error": 1e-4}])
def test_error_bound_holds_for_every_value(tmp_path, ckpt, bound):
    src = mixed_netcdf(tmp_path / "in.nc")
    summary = compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, progress=False, **bound)
    decompress_file(tmp_path / "out.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(src) as ref, xr.open_dataset(tmp_path / "back.nc") as out:
        assert_same_layout(ref, out)
        errors = max_errors(ref, out)
        for v, err in errors.items():
            bound_v = summary["variables"][v]["max_abs_error"]
            if "rel_error" in bound:
                values = ref[v].values[np.isfinite(ref[v].values)]
                assert np.isclose(bound_v, 1e-4 * (values.max() - values.min()))
            assert err <= bound_v, v
            assert out[v].attrs["dynfield_max_abs_error"] == bound_v


def test_well_hdf5_round_trip(tmp_path, ckpt):
    src = write_dummy_well_hdf5(tmp_path / "well.hdf5", n_trajectories=2, n_time=2, ny=8, nx=12)
    compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, max_abs_error=1e-3, progress=False)
    decompress_file(tmp_path / "out.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    ref, out = open_fields(src), open_fields(tmp_path / "back.nc")
    assert sorted(out.data_vars) == sorted(ref.data_vars) == ["scalar", "velocity_x", "velocity_y", "vorticity"]
    for v in ref.data_vars:
        assert out[v].dims == ref[v].dims and out[v].dtype == ref[v].dtype
        assert float(abs(out[v] - ref[v]).max()) <= 1e-3
    for c in ref.coords:
        np.testing.assert_array_equal(out[c].values, ref[c].values)


field_values = st.one_of(st.floats(-1e3, 1e3), st.floats(-1e30, 1e30), st.sampled_from([0.0, 1e-30, np.nan, np.inf]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ny=st.integers(1, 9), nx=st.integers(1, 11), bound=st.sampled_from([1e-9, 1e-3, 10.0]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16), special=field_values)
def test_error_bound_property(tmp_path, ckpt, ny, nx, bound, dtype, seed, special):
    """Tiny and non-multiple shapes, huge dynamic ranges, very small bounds: every value within the bound."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(2, ny, nx)) * 10.0 ** rng.uniform(-10, 10, size=(2, ny, nx))
    data.flat[rng.integers(data.size)] = special
    src = tmp_path / f"p{seed}.nc"
    xr.Dataset({"f": (("time", "y", "x"), data.astype(dtype))}).to_netcdf(src)
    compress_file(src, tmp_path / "p.dfz", checkpoint=ckpt, max_abs_error=bound, progress=False)
    decompress_file(tmp_path / "p.dfz", tmp_path / "p_back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(src) as ref, xr.open_dataset(tmp_path / "p_back.nc") as out:
        assert out["f"].dtype == dtype
        assert max_errors(ref, out)["f"] <= bound


def test_joint_tokenizer(tmp_path):
    ckpt = tiny_tokenizer(tmp_path / "joint.pt", in_channels=2, variables=("u", "v"))
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=2, ny=8, nx=8)
    with pytest.raises(CodecError, match="cannot code"):
        compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, progress=False)
    with pytest.raises(CodecError, match="lacks"):
        compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, variables=["u"], progress=False)
    summary = compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, variables=["v", "u"], max_abs_error=0.05,
                            progress=False)
    assert summary["mode"] == "joint"
    decompress_file(tmp_path / "out.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(src) as ref, xr.open_dataset(tmp_path / "back.nc") as out:
        assert all(err <= 0.05 for err in max_errors(ref[["u", "v"]], out).values())


@pytest.mark.parametrize("bound", [None, 0.01])
def test_inspect_reports_bits_consistent_with_file_size(tmp_path, ckpt, capsys, bound):
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=3, n_time=2, ny=16, nx=24)
    out = tmp_path / "out.dfz"
    compress_file(src, out, checkpoint=ckpt, max_abs_error=bound, progress=False)
    info = inspect_file(out)
    size = out.stat().st_size
    assert info["bytes"] == size and info["values"] == 4 * 3 * 2 * 16 * 24
    assert np.isclose(info["bits_per_value"] * info["values"], 8 * size)
    variable_bytes = sum(v["bits_per_value"] * v["values"] / 8 for v in info["variables"].values())
    framing = size - info["header_bytes"] - variable_bytes  # chunk lengths, checksums, indices, the trailer
    assert 0 < framing < 40 * info["chunks"]
    tokens = info["tokens"]
    assert tokens["entropy_bits"] <= tokens["ideal_bits"] <= tokens["bits"] <= tokens["ideal_bits"] + 64 * 24
    if bound is None:  # every field needs its tokens
        assert tokens["units_without"] == 0 and 0 < info["fine_fraction"] < 1
    else:  # this untrained model's tokens do not pay for themselves: the residuals are coded against the means
        assert tokens["units_without"] == info["chunks"] * 4 and tokens["bits"] == 0
        coders = [c for v in info["variables"].values() for c in v["residual_coders"]]
        assert set(coders) <= set(residual.CODER_NAMES.values())
    assert inspect_cli.main([str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == size
    assert inspect_cli.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "bits per value" in text and f"{tokens['units_without']} field(s) coded without tokens" in text


@pytest.fixture
def compressed(tmp_path, ckpt):
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=2, n_time=2, ny=8, nx=12)
    assert compress.main([str(src), str(tmp_path / "out.dfz"), "--checkpoint", str(ckpt), "--max-abs-error", "0.01",
                          "--quiet"]) == 0
    return tmp_path / "out.dfz"


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "header":
        data[30] ^= 0x01
    elif how == "chunk":
        data[-100] ^= 0x01
    else:
        data = data[: int(len(data) * how)]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how, message", [("header", "header checksum"), ("chunk", "checksum mismatch"),
                                          (0.02, "truncated"), (0.5, "truncated"), (0.97, "truncated")])
def test_damaged_file_is_refused(compressed, ckpt, capsys, how, message):
    damage(compressed, how)
    back = compressed.with_suffix(".nc")
    with pytest.raises(CodecError, match=message):
        decompress_file(compressed, back, checkpoint=ckpt, progress=False)
    capsys.readouterr()
    for cli, argv in ((decompress, [str(compressed), str(back), "--checkpoint", str(ckpt), "--quiet"]),
                      (inspect_cli, [str(compressed)])):
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error:") and message.split()[0] in err and "Traceback" not in err
    assert not back.exists() and sorted(p.name for p in compressed.parent.iterdir()) == ["in.nc", "out.dfz"]


def test_other_model_is_refused(compressed, other_ckpt, capsys):
    assert decompress.main([str(compressed), str(compressed.with_suffix(".nc")), "--checkpoint", str(other_ckpt)]) == 1
    assert "SHA-256" in capsys.readouterr().err
    assert not compressed.with_suffix(".nc").exists()


def test_interrupted_compression_leaves_no_output(tmp_path, ckpt, monkeypatch, capsys):
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=4, n_time=5, ny=8, nx=8)
    encode, calls = chunks.Coder.encode_snapshot, []

    def interrupted(self, *args):
        calls.append(args)
        if len(calls) == 18:  # after the calibration chunks, while chunks are being written
            raise KeyboardInterrupt
        return encode(self, *args)

    monkeypatch.setattr(chunks.Coder, "encode_snapshot", interrupted)
    assert compress.main([str(src), str(tmp_path / "out.dfz"), "--checkpoint", str(ckpt), "--quiet"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nc"]


def test_interrupted_decompression_leaves_no_output(compressed, ckpt, monkeypatch):
    def failing(*args):
        raise OSError("disk full")

    monkeypatch.setattr(netcdf.NetCDFWriter, "write", failing)
    assert decompress.main([str(compressed), str(compressed.with_suffix(".nc")), "--checkpoint", str(ckpt)]) == 1
    assert sorted(p.name for p in compressed.parent.iterdir()) == ["in.nc", "out.dfz"]


def test_usage_errors_are_clear(tmp_path, ckpt, capsys):
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=1, ny=8, nx=8)
    out = str(tmp_path / "out.dfz")
    cases = [(["--variables", "nope"], "nope"), (["--max-abs-error", "u=-1"], "positive"),
             (["--max-abs-error", "w=0.1"], "not among"), (["--fine-ratio", "1.5"], "[0, 1]")]
    for extra, message in cases:
        assert compress.main([str(src), out, "--checkpoint", str(ckpt), "--quiet", *extra]) == 1
        assert message in capsys.readouterr().err
    with pytest.raises(CodecError, match="not both"):
        compress_file(src, out, checkpoint=ckpt, max_abs_error=1.0, rel_error=0.1, progress=False)



def test_without_a_bundled_tokenizer_the_codec_asks_for_one(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "BUNDLED_TOKENIZER", tmp_path / "absent.pt")
    with pytest.raises(CodecError, match="bundled default tokenizer"):
        default_checkpoint()


def test_the_bundled_tokenizer_compresses_fields_it_never_saw(tmp_path, capsys):
    """No --checkpoint: any variable name, size and units; the bound holds; the model is small."""
    path = default_checkpoint()
    assert path.stat().st_size < 5e6 and (path.parent / "metrics.json").is_file()
    yy, xx = np.mgrid[0:48, 0:72] / 12.0
    smooth = np.sin(xx + 0.3 * np.cos(yy))[None] * np.array([1.0, 2.0])[:, None, None]  # 2 snapshots
    ds = xr.Dataset({"geopotential": (("time", "lat", "lon"), (5e4 + 300 * smooth).astype(np.float32),
                                      {"units": "m2 s-2"}),
                     "pv": (("time", "lat", "lon"), (1e-6 * smooth[:, ::-1]).astype(np.float64), {"units": "PVU"})},
                    coords={"lat": np.linspace(-60, 60, 48), "lon": np.linspace(0, 355, 72)})
    ds.to_netcdf(tmp_path / "era.nc")
    assert compress.main([str(tmp_path / "era.nc"), str(tmp_path / "era.dfz"), "--quiet"]) == 0
    assert decompress.main([str(tmp_path / "era.dfz"), str(tmp_path / "back.nc"), "--quiet"]) == 0
    with xr.open_dataset(tmp_path / "back.nc") as back:
        for v in ds.data_vars:
            ref, out = ds[v].values.astype(np.float64), back[v].values.astype(np.float64)
            assert back[v].dtype == ds[v].dtype and back[v].attrs["units"] == ds[v].attrs["units"]
            # a field of any units comes back close, relative to its own spread
            assert np.sqrt(((out - ref) ** 2).mean()) < 0.2 * ref.std(), v  # coding by the mean: 1.0
    bound = 1e-3
    assert compress.main([str(tmp_path / "era.nc"), str(tmp_path / "b.dfz"), "--quiet", "--rel-error", str(bound)]) == 0
    assert decompress.main([str(tmp_path / "b.dfz"), str(tmp_path / "b.nc"), "--quiet"]) == 0
    with xr.open_dataset(tmp_path / "b.nc") as back:
        for v in ds.data_vars:
            ref = ds[v].values.astype(np.float64)
            assert np.abs(back[v].values - ref).max() <= bound * (ref.max() - ref.min())


@pytest.mark.slow
def test_parallel_workers_write_the_same_file(tmp_path, ckpt, monkeypatch):
    # 2 plan snapshots, 4 calibration snapshots of 12: the other 10 are coded under the plan the 2 make,
    # which workers are handed
    monkeypatch.setattr("dynfield.codec.codec.PLAN_CHUNKS", 2)
    monkeypatch.setattr("dynfield.codec.codec.CALIBRATION_CHUNKS", 4)
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=3, n_time=4, ny=8, nx=12)
    compress_file(src, tmp_path / "one.dfz", checkpoint=ckpt, max_abs_error=0.01, progress=False)
    compress_file(src, tmp_path / "two.dfz", checkpoint=ckpt, max_abs_error=0.01, workers=2, progress=False)
    assert (tmp_path / "one.dfz").read_bytes() == (tmp_path / "two.dfz").read_bytes()


def test_rate_distortion_benchmark_runs(tmp_path, ckpt):
    rate_distortion = benchmark_module("rate_distortion")
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=2, ny=16, nx=16)
    result = rate_distortion.main(["--data", str(src), "--variables", "u,v", "--checkpoint", str(ckpt),
                                   "--out", str(tmp_path / "rd"), "--fine-ratios", "0.5", "--budgets", "0.05,2",
                                   "--bounds", "0.01", "--rates", "0.5,4"])
    saved = json.loads((tmp_path / "rd" / "rate_distortion.json").read_text())
    assert (tmp_path / "rd" / "rate_distortion.png").exists()
    codecs = {p["codec"] for p in saved["points"]}
    assert codecs == {"dynfield", "dynfield+bound", "zfp-accuracy", "sz3", "sperr", "zfp-rate", "sperr-rate"}
    for point in saved["points"]:
        assert point["bits_per_value"] > 0 and np.isfinite(point["psnr"]) and 0 <= point["okubo_weiss_iou"] <= 1
        if "rel_error" in point["setting"]:  # every error-bounded codec meets the bound
            assert point["max_rel_error"] <= 0.01 * (1 + 1e-6), point["codec"]
    assert result["machine"]["commit"]
    # one comparison at each token point's rate (interpolated on SPERR's rate curve), one at the shared bound
    (at_bound,) = (r for r in saved["versus_sperr"] if "dynfield+bound" in r)
    assert len([r for r in saved["versus_sperr"] if "dynfield" in r]) == 3  # one per token-only point
    # the rd points: a larger budget buys more codes, so a larger file
    small, large = (next(p for p in saved["points"] if p["setting"] == {"bits_per_value": b}) for b in (0.05, 2))
    assert small["bits_per_value"] < large["bits_per_value"]
    token = next(p for p in saved["points"] if p["setting"] == {"fine_ratio": 0.5})
    (at_rate,) = (r for r in saved["versus_sperr"] if r.get("dynfield") == {"fine_ratio": 0.5})
    assert at_rate["bits_per_value"] == token["bits_per_value"] and at_rate["psnr"]["dynfield"] == token["psnr"]
    assert at_bound["compression_ratio"]["sperr"] > 0


def test_throughput_benchmark_runs(tmp_path, ckpt):
    throughput = benchmark_module("throughput")
    src = write_dummy_netcdf(tmp_path / "in.nc", n_sample=2, ny=16, nx=16)
    result = throughput.main(["--data", str(src), "--checkpoint", str(ckpt), "--workers", "1", "--repeat", "1",
                              "--out", str(tmp_path / "t")])
    assert json.loads((tmp_path / "t" / "throughput.json").read_text()) == result
    assert result["compress_mb_per_s_workers_1"] > 0 and result["decompress_mb_per_s"] > 0
    assert result["input_mb"] == pytest.approx(2 * 4 * 16 * 16 * 4 / 1e6)


def test_the_bundled_model_keeps_the_hash_its_files_were_made_with():
    # files record the SHA-256 of the model's weights; a change to how the model names or holds
    # its tensors must not change it, or every file made with the bundled model would be refused
    from dynfield.checkpoint import load_model

    model, _ = load_model(default_checkpoint())
    assert weights_hash(model) == "a865e8d56d766a232667d24f3f104db576f50ec9d9b0c5aa0c409996c3a4cf7e"
    # and the one-stage model bundled before it, whose buffers are named as before residual stages existed
    old = "bb1417bd5c76c5c0ac1acce34e88d39c63b7ee2d93078702113ea71cb1e23a8e"
    assert weights_hash(load_model(paths.retired_tokenizer(old))[0]) == old


def test_a_users_file_comes_back_with_its_own_names_order_and_attributes(tmp_path, ckpt):
    """(time, lat, lon) with NaN land and a fill value, and a variable stored (lat, lon, time): nothing renamed."""
    rng = np.random.default_rng(0)
    times = np.array(["2020-01-01", "2020-01-02", "2020-01-03"], dtype="datetime64[ns]")
    lat, lon = np.linspace(-30, 30, 16), np.linspace(0, 345, 24)
    t2m = (280 + rng.normal(size=(3, 16, 24))).astype(np.float32)
    t2m[:, 4:8, 10:15] = np.nan  # land
    ds = xr.Dataset({"t2m": (("time", "lat", "lon"), t2m, {"units": "K", "long_name": "2 m temperature"}),
                     "sst": (("lat", "lon", "time"), np.moveaxis(t2m, 0, -1) - 273.15, {"units": "degC"})},
                    coords={"time": times, "lat": ("lat", lat, {"units": "degrees_north"}),
                            "lon": ("lon", lon, {"units": "degrees_east"})}, attrs={"title": "a reanalysis"})
    src, out = tmp_path / "in.nc", tmp_path / "back.nc"
    ds.to_netcdf(src, encoding={"t2m": {"_FillValue": -9999.0}})
    compress_file(src, tmp_path / "out.dfz", checkpoint=ckpt, rel_error=0.01, progress=False)
    decompress_file(tmp_path / "out.dfz", out, checkpoint=ckpt, progress=False)
    with xr.open_dataset(src) as ref, xr.open_dataset(out) as back:
        assert list(back.data_vars) == ["t2m", "sst"] and list(back.coords) == list(ref.coords)
        for v in ("t2m", "sst"):
            assert back[v].dims == ref[v].dims and back[v].attrs["units"] == ref[v].attrs["units"]
            assert np.array_equal(np.isnan(back[v].values), np.isnan(ref[v].values))
            bound = 0.01 * float(ref[v].max() - ref[v].min())
            assert float(np.abs(back[v] - ref[v]).max()) <= bound
        for c in ("lat", "lon"):
            assert back[c].attrs == ref[c].attrs and np.array_equal(back[c], ref[c])
        assert np.array_equal(back["time"].values, times) and back.attrs["title"] == "a reanalysis"
        assert back["t2m"].encoding["_FillValue"] == -9999.0


def test_the_range_pass_sees_finite_values_only_in_every_chunk():
    from dynfield.codec.header import _finite_ranges

    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    x[0, 0, 0], x[1] = np.nan, np.inf  # a chunk with a NaN, a chunk of Inf only
    x[3, 1, 2] = -np.inf
    ds = xr.Dataset({"f": (("t", "y", "x"), x), "i": (("t", "y", "x"), np.arange(24, dtype=np.int16).reshape(4, 2, 3)),
                     "nan": (("t", "y", "x"), np.full((4, 2, 3), np.nan))}).chunk({"t": 1})
    assert _finite_ranges(ds, ["f", "i", "nan"]) == {"f": (1.0, 22.0), "i": (0.0, 23.0), "nan": (np.inf, -np.inf)}
    assert _finite_ranges(ds.compute(), ["f"]) == {"f": (1.0, 22.0)}  # numpy-backed: one block
