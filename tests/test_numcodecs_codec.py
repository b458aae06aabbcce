"""The numcodecs codec: found by its id, within its bound through zarr and xarray, refusing what it cannot decode."""

import numcodecs
import numpy as np
import pytest
import xarray as xr
from conftest import benchmark_module, tiny_tokenizer

from dynfield import compress, paths
from dynfield.codec import CodecError
from dynfield.codec.numcodecs_codec import Dynfield
from dynfield.data.dummy import dummy_dataset

zarr = pytest.importorskip("zarr")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("ckpt") / "tokenizer.pt")


def field(shape=(3, 24, 32), seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[-2], 0 : shape[-1]] / 8.0
    base = np.sin(x) * np.cos(y)
    return (base + 0.1 * rng.normal(size=shape)).astype(np.float32)


def test_get_codec_finds_it_by_its_id_and_its_config_round_trips(ckpt):
    codec = numcodecs.get_codec({"id": "dynfield", "max_abs_error": 0.01, "model": str(ckpt)})
    assert isinstance(codec, Dynfield)
    config = codec.get_config()
    assert config["max_abs_error"] == 0.01 and len(config["model_sha256"]) == 64
    again = numcodecs.get_codec(config)
    assert again.get_config() == config
    data = codec.encode(field())
    assert np.array_equal(again.decode(data), codec.decode(data))


def test_a_store_made_with_a_formerly_bundled_tokenizer_decodes_once_another_is_bundled(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "BUNDLED_TOKENIZER", ckpt)
    monkeypatch.setattr(paths, "RETIRED_TOKENIZERS", tmp_path / "retired")
    codec = Dynfield(max_abs_error=0.02)  # "bundled": the config names it and its hash
    config, data = codec.get_config(), codec.encode(field())
    monkeypatch.setattr(paths, "BUNDLED_TOKENIZER", tiny_tokenizer(tmp_path / "new_bundled.pt", seed=1))
    with pytest.raises(CodecError, match="give the checkpoint"):
        numcodecs.get_codec(config)
    (tmp_path / "retired").mkdir()
    (tmp_path / "retired" / f"{config['model_sha256'][:16]}.pt").write_bytes(ckpt.read_bytes())
    again = numcodecs.get_codec(config)
    assert again.get_config() == config
    assert np.array_equal(again.decode(data), codec.decode(data))


@pytest.mark.parametrize("shape", [(24, 32), (3, 24, 32), (2, 2, 9, 13)])
def test_every_value_within_the_bound_and_nan_exact(ckpt, shape):
    x = field(shape)
    x[..., 2:5, 3:9] = np.nan
    codec = Dynfield(max_abs_error=0.02, model=ckpt)
    y = codec.decode(codec.encode(x))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.array_equal(np.isnan(y), np.isnan(x))
    assert np.nanmax(np.abs(y.astype(np.float64) - x)) <= 0.02


def test_rel_error_is_relative_to_the_chunk_range(ckpt):
    x = field()
    y = Dynfield(rel_error=1e-3, model=ckpt).decode(Dynfield(rel_error=1e-3, model=ckpt).encode(x))
    assert np.abs(y - x).max() <= 1e-3 * float(x.max() - x.min())


def test_integer_chunks_within_the_bound(ckpt):
    x = (field() * 1000).astype(np.int32)
    y = Dynfield(max_abs_error=3, model=ckpt).decode(Dynfield(max_abs_error=3, model=ckpt).encode(x))
    assert y.dtype == np.int32 and np.abs(y.astype(np.int64) - x).max() <= 3


def test_xarray_to_zarr_round_trip_keeps_the_bound_names_and_attributes(ckpt, tmp_path):
    ds = dummy_dataset(n_sample=2, n_time=2, ny=16, nx=24)[["u", "v"]]
    ds["u"][0, 0, 3:6, 4:8] = np.nan
    ds["u"].attrs["units"] = "m s-1"
    codec = Dynfield(max_abs_error=0.01, model=ckpt)
    encoding = {v: {"compressors": [codec], "chunks": (1, 1, 16, 24)} for v in ("u", "v")}
    ds.to_zarr(tmp_path / "out.zarr", zarr_format=2, encoding=encoding, mode="w")
    with xr.open_zarr(tmp_path / "out.zarr") as back:
        assert list(back.data_vars) == ["u", "v"] and back["u"].dims == ds["u"].dims
        assert back["u"].attrs["units"] == "m s-1"
        for v in ("u", "v"):
            a, b = ds[v].values, back[v].values
            assert np.array_equal(np.isnan(a), np.isnan(b))
            assert np.nanmax(np.abs(a.astype(np.float64) - b)) <= 0.01


def test_a_chunk_from_another_model_is_refused(ckpt, tmp_path):
    other = tiny_tokenizer(tmp_path / "other.pt", seed=1)
    data = Dynfield(max_abs_error=0.01, model=ckpt).encode(field())
    with pytest.raises(CodecError, match="coded by the model of SHA-256"):
        Dynfield(max_abs_error=0.01, model=other).decode(data)
    config = Dynfield(model=ckpt).get_config()
    with pytest.raises(CodecError, match="names the model"):
        Dynfield(model=other, model_sha256=config["model_sha256"])


def test_a_damaged_chunk_is_refused(ckpt):
    data = bytearray(Dynfield(max_abs_error=0.01, model=ckpt).encode(field()))
    data[len(data) // 2] ^= 0x40
    with pytest.raises(CodecError, match="checksum"):
        Dynfield(max_abs_error=0.01, model=ckpt).decode(bytes(data))
    with pytest.raises(CodecError, match="magic"):
        Dynfield(model=ckpt).decode(b"not a chunk at all, just bytes")


def test_bad_settings_and_chunks_are_refused(ckpt, tmp_path):
    with pytest.raises(CodecError, match="not both"):
        Dynfield(max_abs_error=0.1, rel_error=0.1, model=ckpt)
    with pytest.raises(CodecError, match="positive"):
        Dynfield(max_abs_error=-1.0, model=ckpt)
    with pytest.raises(CodecError, match="at least two dimensions"):
        Dynfield(model=ckpt).encode(np.zeros(10, np.float32))
    joint = tiny_tokenizer(tmp_path / "joint.pt", in_channels=2, variables=("u", "v"))
    with pytest.raises(CodecError, match="one-channel"):
        Dynfield(model=joint)


def test_zarr_format_3_takes_it_as_the_serializer(ckpt, tmp_path):
    from dynfield.codec.zarr3 import DynfieldSerializer

    ds = dummy_dataset(n_sample=2, n_time=1, ny=16, nx=24)[["u"]]
    ds["u"][1, 0, 0:3, 0:3] = np.nan
    encoding = {"u": {"serializer": DynfieldSerializer(max_abs_error=0.01, model=str(ckpt)), "compressors": None,
                      "chunks": (1, 1, 16, 24)}}
    ds.to_zarr(tmp_path / "out.zarr", zarr_format=3, encoding=encoding, mode="w", consolidated=False)
    array = zarr.open_array(tmp_path / "out.zarr" / "u")  # rebuilt from the stored metadata by its name
    assert isinstance(array.metadata.codecs[0], DynfieldSerializer)
    with xr.open_zarr(tmp_path / "out.zarr", consolidated=False) as back:
        a, b = ds["u"].values, back["u"].values
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a.astype(np.float64) - b)) <= 0.01


def stored_chunks(store):
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def test_compress_to_zarr_keeps_names_order_and_attributes(ckpt, tmp_path):
    src = tmp_path / "in.nc"
    ds = dummy_dataset(n_sample=1, n_time=3, ny=16, nx=24)[["v", "u"]].isel(sample=0).rename(y="lat", x="lon")
    ds["u"][1, 2:4, 5:9] = np.nan
    ds["u"].attrs["long_name"] = "eastward wind"
    ds.attrs["title"] = "a run"
    ds.to_netcdf(src)
    out = tmp_path / "out.zarr"
    assert compress.main([str(src), str(out), "--checkpoint", str(ckpt), "--rel-error", "0.01", "--quiet"]) == 0
    with xr.open_dataset(src) as ref, xr.open_zarr(out) as back:
        assert set(back.data_vars) == {"u", "v"} and back["u"].dims == ("time", "lat", "lon")  # zarr lists by name
        assert back["u"].attrs["long_name"] == "eastward wind" and back.attrs["title"] == "a run"
        for v in ("u", "v"):
            a, b = ref[v].values, back[v].values
            assert np.array_equal(np.isnan(a), np.isnan(b))
            assert np.nanmax(np.abs(a - b)) <= 0.01 * (np.nanmax(a) - np.nanmin(a))
    assert compress.main([str(src), str(out), "--checkpoint", str(ckpt), "--quiet"]) == 1  # exists: refused
    assert compress.main([str(src), str(tmp_path / "x.dfz"), "--dask-workers", "2", "--workers", "2"]) == 1


@pytest.mark.slow
def test_two_dask_workers_write_the_bytes_one_process_does(ckpt, tmp_path):
    pytest.importorskip("distributed")
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=4, n_time=2, ny=16, nx=24)[["u", "v"]].to_netcdf(src)
    args = [str(src), "--checkpoint", str(ckpt), "--max-abs-error", "0.01", "--quiet"]
    assert compress.main([args[0], str(tmp_path / "one.zarr"), *args[1:]]) == 0
    assert compress.main([args[0], str(tmp_path / "two.zarr"), *args[1:], "--dask-workers", "2"]) == 0
    one, two = stored_chunks(tmp_path / "one.zarr"), stored_chunks(tmp_path / "two.zarr")
    assert len(one) == 2 * 4 * 2 + 4 and one == two  # every chunk of u and v, and the coordinates
    assert compress.main([args[0], str(tmp_path / "one.dfz"), *args[1:]]) == 0
    assert compress.main([args[0], str(tmp_path / "two.dfz"), *args[1:], "--dask-workers", "2"]) == 0
    assert (tmp_path / "one.dfz").read_bytes() == (tmp_path / "two.dfz").read_bytes()


def test_the_zarr_codec_benchmark_keeps_every_bound(ckpt, tmp_path):
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=3, ny=32, nx=48)[["u", "v"]].to_netcdf(src)
    summary = benchmark_module("zarr_codec").main(["--data", str(src), "--checkpoint", str(ckpt), "--bounds",
                                                   "1e-2", "--out", str(tmp_path / "out")])
    assert {p["codec"] for p in summary["points"]} == {"dynfield (zarr)", "zfp (zarr, numcodecs)", "sz3 (fields)",
                                                       "sperr (fields)"}
    assert all(p["max_error_over_bound"] <= 1 for p in summary["points"])
    assert (tmp_path / "out" / "zarr_codec.png").exists()


@pytest.mark.slow
def test_the_scale_benchmark_runs_on_a_small_set(ckpt, tmp_path):
    pytest.importorskip("distributed")
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=4, ny=32, nx=32)[["u", "v"]].to_netcdf(src)
    summary = benchmark_module("scale").main(["--source", str(src), "--gigabytes", "0.0001", "--workers", "1,2",
                                              "--rel-error", "0.01", "--work", str(tmp_path / "work"),
                                              "--out", str(tmp_path / "out")])
    assert [r["workers"] for r in summary["runs"]] == [1, 2] and summary["zfp"]["compression_ratio"] > 1
    assert all(0 < p < 2 for r in summary["runs"] for p in r["peak_rss_per_worker_gb"])


def test_reading_turns_netcdf_chunk_caches_off_here_only_while_it_reads(ckpt, tmp_path):
    import netCDF4

    from dynfield.codec.reading import no_chunk_cache

    before = netCDF4.get_chunk_cache()
    with no_chunk_cache():
        assert netCDF4.get_chunk_cache()[0] == 0
    assert netCDF4.get_chunk_cache() == before
    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=1, ny=16, nx=24)[["u"]].to_netcdf(src)
    assert compress.main([str(src), str(tmp_path / "out.zarr"), "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert netCDF4.get_chunk_cache() == before


@pytest.mark.slow
def test_every_dask_worker_reads_without_a_chunk_cache(ckpt, tmp_path):
    distributed = pytest.importorskip("distributed")
    import netCDF4

    from dynfield.codec.to_zarr import compress_to_zarr

    src = tmp_path / "in.nc"
    dummy_dataset(n_sample=2, ny=16, nx=24)[["u"]].to_netcdf(src)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster, \
            distributed.Client(cluster) as client:
        compress_to_zarr(src, tmp_path / "out.zarr", checkpoint=ckpt, client=client, progress=False)
        cluster.scale(2)
        client.wait_for_workers(2)
        caches = client.run(netCDF4.get_chunk_cache)
    assert len(caches) == 2 and all(c[0] == 0 for c in caches.values())  # the worker that joined later too
