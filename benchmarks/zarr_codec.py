"""The dynfield numcodecs codec in a zarr store, against the codecs a zarr user would pick, at the same bounds.

For each bound (relative to each variable's range in the file, turned into
one absolute bound per variable for every codec): the file written to zarr
with the dynfield codec (``compress_to_zarr``, the path of
``python -m dynfield.compress in.nc out.zarr``), with numcodecs' ZFPY in
fixed-accuracy mode, and with SZ3 and SPERR (their HDF5 filters through
``hdf5plugin``, one 2D field at a time; their chunk bytes are counted, no
container). Per point: compression ratio against the raw values, the
largest error relative to the bound (must be <= 1), throughput. The zarr
stores count every file in them (metadata included). Writes
``zarr_codec.json`` and ``zarr_codec.png`` into ``--out``.

    python benchmarks/zarr_codec.py --data held_out_256.nc [--bounds 1e-2,1e-3] [--out benchmarks/results]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import hdf5plugin
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import zfpy  # noqa: E402
from provenance import machine  # noqa: E402  (benchmarks/provenance.py)
from rate_distortion import hdf5_codec  # noqa: E402

from dynfield.cli import variable_list  # noqa: E402
from dynfield.codec.to_zarr import compress_to_zarr  # noqa: E402


def store_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def worst(ref, out, bounds):
    """Largest |error| / bound over every variable (NaN positions must agree)."""
    ratios = []
    for v, e in bounds.items():
        a, b = ref[v].values.astype(np.float64), np.asarray(out[v], dtype=np.float64)
        if not np.array_equal(np.isnan(a), np.isnan(b)):
            raise AssertionError(f"{v}: NaN positions differ")
        ratios.append(float(np.nanmax(np.abs(a - b))) / e)
    return max(ratios)


def point(codec, rel, n_bytes, raw_bytes, seconds, worst_ratio):
    return {"codec": codec, "rel_error": rel, "bytes": n_bytes, "compression_ratio": raw_bytes / n_bytes,
            "bits_per_value": 8 * n_bytes / (raw_bytes / 4), "compress_mb_per_s": raw_bytes / 1e6 / seconds,
            "max_error_over_bound": worst_ratio}


def run_zarr(name, ds, encoding, workdir):
    store = Path(workdir) / f"{name}.zarr"
    t0 = time.perf_counter()
    ds.to_zarr(store, zarr_format=2, encoding=encoding, mode="w")
    seconds = time.perf_counter() - t0
    return store, seconds


def run_fields(ds, bounds, filter_class):
    """Bytes, seconds and the decoded fields of an HDF5 filter, one 2D field at a time."""
    n_bytes, seconds, out = 0, 0.0, {}
    for v, e in bounds.items():
        compress, decompress = hdf5_codec(filter_class, absolute=e)
        values = ds[v].values
        decoded = np.empty_like(values)
        for index in np.ndindex(values.shape[:-2]):
            t0 = time.perf_counter()
            blob = compress(np.ascontiguousarray(values[index]))
            seconds += time.perf_counter() - t0
            n_bytes += blob[1]
            decoded[index] = decompress(blob)
        out[v] = decoded
    return n_bytes, seconds, out


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a netCDF file of 2D fields")
    p.add_argument("--variables", type=variable_list, help="comma-separated (default: every field variable)")
    p.add_argument("--bounds", type=lambda s: [float(b) for b in s.split(",")], default=[1e-2],
                   help="error bounds relative to each variable's range")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the bundled one)")
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = xr.open_dataset(args.data)
    names = args.variables or [v for v in ds.data_vars if ds[v].ndim >= 2]
    ds = ds[names].load()
    raw = sum(ds[v].values.astype(np.float32).nbytes for v in names)
    points = []
    with tempfile.TemporaryDirectory() as workdir:
        for rel in args.bounds:
            bounds = {v: rel * float(ds[v].max() - ds[v].min()) for v in names}
            store = Path(workdir) / f"dynfield_{rel}.zarr"
            info = compress_to_zarr(args.data, store, checkpoint=args.checkpoint, variables=names,
                                    max_abs_error=bounds, progress=False)
            with xr.open_zarr(store) as back:
                points.append(point("dynfield (zarr)", rel, info["bytes"], raw, info["seconds"],
                                    worst(ds, back.load(), bounds)))
            chunks = {v: (1,) * (ds[v].ndim - 2) + ds[v].shape[-2:] for v in names}
            encoding = {v: {"compressors": [numcodecs.ZFPY(mode=zfpy.mode_fixed_accuracy,
                                                           tolerance=bounds[v])], "chunks": chunks[v]} for v in names}
            zfp_store, seconds = run_zarr(f"zfp_{rel}", ds, encoding, workdir)
            with xr.open_zarr(zfp_store) as back:
                points.append(point("zfp (zarr, numcodecs)", rel, store_bytes(zfp_store), raw, seconds,
                                    worst(ds, back.load(), bounds)))
            for name, filter_class in (("sz3", hdf5plugin.SZ3), ("sperr", hdf5plugin.Sperr)):
                n_bytes, seconds, decoded = run_fields(ds, bounds, filter_class)
                points.append(point(f"{name} (fields)", rel, n_bytes, raw, seconds, worst(ds, decoded, bounds)))
    for q in points:
        print(f"{q['codec']:>22} rel {q['rel_error']:g}: ratio {q['compression_ratio']:7.2f}  "
              f"{q['bits_per_value']:.3f} bpv  max error / bound {q['max_error_over_bound']:.3f}  "
              f"{q['compress_mb_per_s']:.1f} MB/s")
    summary = {"machine": machine(), "data": str(args.data), "variables": names,
               "checkpoint": args.checkpoint or "bundled", "points": points}
    (out_dir / "zarr_codec.json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    codecs = list(dict.fromkeys(q["codec"] for q in points))
    for i, rel in enumerate(args.bounds):
        ratios = [next(q["compression_ratio"] for q in points if q["codec"] == c and q["rel_error"] == rel)
                  for c in codecs]
        ax.bar(np.arange(len(codecs)) + i * 0.8 / len(args.bounds), ratios, 0.8 / len(args.bounds), label=f"{rel:g}")
    ax.set_xticks(np.arange(len(codecs)), codecs, rotation=20, fontsize=8)
    ax.set_ylabel("compression ratio")
    ax.legend(title="bound / range")
    fig.tight_layout()
    fig.savefig(out_dir / "zarr_codec.png", dpi=120)
    print(f"wrote {out_dir / 'zarr_codec.json'} and {out_dir / 'zarr_codec.png'}")
    return summary


if __name__ == "__main__":
    main()
