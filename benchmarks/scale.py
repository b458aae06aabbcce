"""Compression at scale: a data set larger than a worker's memory, to zarr on a dask LocalCluster of 1 and 2 workers.

The data set is generated from a file of 2D fields (by default the held-out
256x256 built-in turbulence): each snapshot is one of the file's snapshots
rolled by a random offset and flipped at random (the flow is periodic, so
every such field is as valid as the original), written snapshot by snapshot
to a netCDF file of ``--gigabytes`` on disk. It is then compressed to zarr by
``compress_to_zarr`` on a LocalCluster of each worker count (one thread a
worker, ``--memory-limit`` each): wall time, throughput, peak resident memory
of each worker (its processes' high-water mark), compression ratio; and by
numcodecs' ZFPY at the same bound (in this process) for the ratio a zarr user
would otherwise get. Writes ``scale.json`` and ``scale.png`` into ``--out``.

    python benchmarks/scale.py --source held_out_256.nc --gigabytes 2 --workers 1,2 [--rel-error 1e-2]
"""

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import netCDF4  # noqa: E402
import numcodecs  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
import zfpy  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from provenance import machine  # noqa: E402  (benchmarks/provenance.py)

from dynfield.codec.to_zarr import compress_to_zarr  # noqa: E402


def generate(source, path, gigabytes, seed=0):
    """Write rolled and flipped copies of `source`'s snapshots to `path` until it holds `gigabytes` of values."""
    with xr.open_dataset(source) as ds:
        names = [v for v in ds.data_vars if ds[v].ndim == 3]
        base = {v: ds[v].values.astype(np.float32) for v in names}  # (n, H, W) each
    n_src, H, W = base[names[0]].shape
    n = int(np.ceil(gigabytes * 1e9 / (len(names) * H * W * 4)))
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".partial")
    with netCDF4.Dataset(tmp, "w") as nc:
        nc.createDimension("sample", n)
        nc.createDimension("y", H)
        nc.createDimension("x", W)
        out = {v: nc.createVariable(v, "f4", ("sample", "y", "x"), chunksizes=(1, H, W)) for v in names}
        for i in range(n):
            j, dy, dx, flip = rng.integers(n_src), rng.integers(H), rng.integers(W), rng.integers(2)
            for v in names:
                field = np.roll(base[v][j], (dy, dx), axis=(0, 1))
                out[v][i] = field[:, ::-1] if flip else field
    tmp.rename(path)
    return n, names


def run_cluster(data, store, workers, memory_limit, bound):
    shutil.rmtree(store, ignore_errors=True)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=memory_limit)
    with cluster, Client(cluster) as client:
        info = compress_to_zarr(data, store, client=client, progress=False, **bound)
        # each worker process's resident-memory high-water mark (a function the workers can import)
        peaks = [usage.ru_maxrss * 1024 for usage in client.run(resource.getrusage, resource.RUSAGE_SELF).values()]
    return {"workers": workers, "seconds": info["seconds"], "input_mb_per_s": info["input_mb_per_s"],
            "compression_ratio": info["compression_ratio"], "bits_per_value": info["bits_per_value"],
            "peak_rss_per_worker_gb": [p / 1e9 for p in peaks]}


def run_zfp(data, store, rel_error):
    with xr.open_dataset(data, chunks={"sample": 64}) as ds:
        encoding = {}
        for v in ds.data_vars:
            tolerance = rel_error * float(ds[v].max() - ds[v].min())
            encoding[v] = {"compressors": [numcodecs.ZFPY(mode=zfpy.mode_fixed_accuracy, tolerance=tolerance)],
                           "chunks": (1,) + ds[v].shape[1:]}
        t0 = time.perf_counter()
        ds.to_zarr(store, zarr_format=2, encoding=encoding, mode="w")
        seconds = time.perf_counter() - t0
        raw = sum(ds[v].size * 4 for v in ds.data_vars)
    size = sum(f.stat().st_size for f in Path(store).rglob("*") if f.is_file())
    return {"codec": "zfp (zarr, numcodecs)", "seconds": seconds, "compression_ratio": raw / size,
            "input_mb_per_s": raw / 1e6 / seconds}


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="file of (sample, y, x) fields the data set is made from")
    p.add_argument("--gigabytes", type=float, default=2.0, help="size of the generated data set")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--memory-limit", default="2GB", help="memory limit of each dask worker")
    p.add_argument("--rel-error", type=float, help="error bound relative to each variable's range "
                   "(default: tokens only, no bound)")
    p.add_argument("--work", default="benchmarks/results/scale_work", help="where the data and stores are written")
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    data = work / f"data_{args.gigabytes:g}gb.nc"
    if not data.exists():
        t0 = time.perf_counter()
        n, names = generate(Path(args.source), data, args.gigabytes)
        print(f"generated {data}: {n} snapshots of {names} in {time.perf_counter() - t0:.0f} s")
    bound = {} if args.rel_error is None else {"rel_error": args.rel_error}
    runs = []
    for workers in (int(w) for w in args.workers.split(",")):
        r = run_cluster(data, work / f"dynfield_{workers}.zarr", workers, args.memory_limit, bound)
        runs.append(r)
        print(f"{workers} worker(s): {r['input_mb_per_s']:.2f} MB/s, ratio {r['compression_ratio']:.1f}, "
              f"peak memory per worker {max(r['peak_rss_per_worker_gb']):.2f} GB")
    one = next((r for r in runs if r["workers"] == 1), None)
    for r in runs:
        r["speedup"] = r["input_mb_per_s"] / one["input_mb_per_s"] if one else None
    zfp = run_zfp(data, work / "zfp.zarr", args.rel_error) if args.rel_error is not None else None
    summary = {"machine": machine(), "source": str(args.source), "data_bytes": data.stat().st_size,
               "memory_limit": args.memory_limit, "rel_error": args.rel_error, "runs": runs, "zfp": zfp}
    (out / "scale.json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot([r["workers"] for r in runs], [r["input_mb_per_s"] for r in runs], "o-", label="dynfield")
    ax.set_xlabel("dask workers")
    ax.set_ylabel("MB/s of input")
    ax.set_title(f"{data.stat().st_size / 1e9:.1f} GB to zarr")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
