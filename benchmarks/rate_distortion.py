"""Rate-distortion of the dynfield codec against ZFP, SZ3 and SPERR on one data file.

dynfield is run on the whole file (every byte of the .dfz counts, header
included): token-only at several fine ratios (every region at full depth)
or bit budgets (``--budgets``: the rd allocation of grains and depths of a
rate-ladder tokenizer), and error-bounded at several bounds. The others
compress one 2D field at a time: ZFP through ``zfpy`` (fixed accuracy at
the same bounds, and fixed rate), SZ3 and SPERR through their HDF5 filters (``hdf5plugin``; the bytes counted are the dataset's
compressed storage, without the HDF5 file's own metadata). Bounds are given
relative to each variable's range of values in the file and turned into the
same absolute bound, per variable, for every codec.

Per point: bits per value, compression ratio, PSNR (by each variable's value
range), relative L2 error, maximum absolute and relative error, compress and
decompress throughput; with both horizontal velocity components among the
variables, also k10 (largest wavenumber to which the energy spectrum is
within 10 %), the IoU of Okubo-Weiss vortex masks and the relative L2 error
of vorticity, averaged over snapshots. The data should be finite. Writes
``rate_distortion.json`` and ``rate_distortion.png`` into ``--out``.

The JSON's ``versus_sperr`` compares at equal cost: each token-only dynfield
point against SPERR's fixed-rate curve interpolated (linearly in log bits per
value) to the same rate, and each error-bounded dynfield point against SPERR
at the same bound.

    python benchmarks/rate_distortion.py --data run.nc --variables u,v \\
        [--checkpoint RUN/tokenizer.pt] --out benchmarks/results
"""

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import zfpy
from provenance import machine  # benchmarks/provenance.py

from dynfield import physics
from dynfield.analysis import channel_roles
from dynfield.cli import variable_list
from dynfield.codec import compress_file, decompress_file
from dynfield.data import open_fields


def velocity_pair(variables):
    """(u, v) names among `variables` (x and y components), or None."""
    roles = channel_roles(variables)
    return None if roles["u"] is None else (variables[roles["u"]], variables[roles["v"]])


def snapshots(ds, variables):
    """Yield {variable: (H, W) float array} for every snapshot (the variables must share dims)."""
    dims = {ds[v].dims for v in variables}
    if len(dims) != 1:
        raise ValueError(f"the benchmarked variables must share dims, got {sorted(dims)}")
    lead = ds[variables[0]].dims[:-2]
    for index in np.ndindex(*[ds.sizes[d] for d in lead]):
        sel = dict(zip(lead, index))
        yield {v: np.asarray(ds[v].isel(sel).values) for v in variables}


class Scores:
    """Running error sums per variable, and the flow diagnostics per snapshot."""

    def __init__(self, variables, ranges):
        self.ranges, self.pair = ranges, velocity_pair(variables)
        self.err = {v: {"sse": 0.0, "ssr": 0.0, "n": 0, "max": 0.0} for v in variables}
        self.flow = {"k10": [], "okubo_weiss_iou": [], "vorticity_relative_l2": []}

    def add(self, ref, out):
        for v, a in ref.items():
            d = out[v].astype(np.float64) - a.astype(np.float64)
            e = self.err[v]
            e["sse"] += float((d**2).sum())
            e["ssr"] += float((a.astype(np.float64) ** 2).sum())
            e["n"] += d.size
            e["max"] = max(e["max"], float(np.abs(d).max()))
        if self.pair:
            (u0, v0), (u1, v1) = ([f[c].astype(np.float64) for c in self.pair] for f in (ref, out))
            k, E0 = physics.energy_spectrum(u0, v0)
            _, E1 = physics.energy_spectrum(u1, v1)
            k10 = physics.spectrum_match_wavenumber(k, E0, E1, tol=0.1, kmax=min(u0.shape) // 2)
            self.flow["k10"].append(float(k10))
            m0, m1 = physics.vortex_mask(u0, v0), physics.vortex_mask(u1, v1)
            self.flow["okubo_weiss_iou"].append(float((m0 & m1).sum() / max((m0 | m1).sum(), 1)))
            self.flow["vorticity_relative_l2"].append(
                float(physics.relative_l2(physics.vorticity(u0, v0), physics.vorticity(u1, v1))))

    def summary(self):
        per_var = {}
        for v, e in self.err.items():
            mse, rng = e["sse"] / e["n"], self.ranges[v]
            per_var[v] = {"psnr": float(10 * np.log10(rng**2 / mse)) if mse > 0 else float("inf"),
                          "relative_l2": float(np.sqrt(e["sse"] / e["ssr"])) if e["ssr"] > 0 else float("nan"),
                          "max_abs_error": e["max"], "max_rel_error": e["max"] / rng if rng > 0 else float("nan")}
        out = {"psnr": float(np.mean([p["psnr"] for p in per_var.values()])),
               "relative_l2": float(np.mean([p["relative_l2"] for p in per_var.values()])),
               "max_abs_error": max(p["max_abs_error"] for p in per_var.values()),
               "max_rel_error": max(p["max_rel_error"] for p in per_var.values()),
               "per_variable": per_var}
        if self.pair:
            out.update({k: float(np.mean(v)) for k, v in self.flow.items()})
        return out


def point(codec, setting, scores, n_bytes, n_values, input_bytes, t_compress, t_decompress):
    return {"codec": codec, "setting": setting, "bits_per_value": 8 * n_bytes / n_values,
            "compression_ratio": input_bytes / n_bytes, "compress_mb_per_s": input_bytes / 1e6 / t_compress,
            "decompress_mb_per_s": input_bytes / 1e6 / t_decompress, **scores.summary()}


def run_dynfield(args, ds, variables, ranges, workdir, **settings):
    """Compress the whole file with dynfield, decode it, score it."""
    dfz, restored = Path(workdir) / "data.dfz", Path(workdir) / "restored.nc"
    info = compress_file(args.data, dfz, checkpoint=args.checkpoint, variables=variables, workers=args.workers,
                         progress=False, **settings)
    t1 = time.perf_counter()
    decompress_file(dfz, restored, checkpoint=args.checkpoint, progress=False)
    t2 = time.perf_counter()
    scores = Scores(variables, ranges)
    with open_fields(restored, variables) as out:
        for ref, rec in zip(snapshots(ds, variables), snapshots(out, variables)):
            scores.add(ref, rec)
    result = point("dynfield+bound" if "rel_error" in settings else "dynfield", settings, scores, info["bytes"],
                   info["values"], info["input_bytes"], info["seconds"], t2 - t1)
    result.update(fine_fraction=info["fine_fraction"], model_hash=info["model"]["sha256"])
    return result


def zfp_codec(**mode):
    """(compress, decompress) of zfpy in one mode (tolerance=..., rate=...)."""
    return (lambda x: zfpy.compress_numpy(np.ascontiguousarray(x), **mode)), zfpy.decompress_numpy


def hdf5_codec(filter_class, **options):
    """(compress, decompress) through an HDF5 filter in an in-memory file.

    The size counted is the dataset's stored (compressed) bytes.
    """
    def compress(x):
        buf = io.BytesIO()
        with h5py.File(buf, "w") as f:
            f.create_dataset("field", data=x, chunks=x.shape, **filter_class(**options))
        with h5py.File(buf, "r") as f:  # reopened: the writing handle would read back its cached, uncompressed chunk
            return buf, f["field"].id.get_storage_size()

    def decompress(blob):
        with h5py.File(blob[0], "r") as f:
            return f["field"][()]

    return compress, decompress


def run_field_codec(name, setting, make_codec, ds, variables, ranges):
    """Compress every 2D field on its own with ``make_codec(variable) = (compress, decompress)``; score it."""
    codecs = {v: make_codec(v) for v in variables}
    scores = Scores(variables, ranges)
    n_bytes = n_values = input_bytes = 0
    t_c = t_d = 0.0
    for ref in snapshots(ds, variables):
        out = {}
        for v, x in ref.items():
            compress, decompress = codecs[v]
            t0 = time.perf_counter()
            blob = compress(x)
            t1 = time.perf_counter()
            out[v] = decompress(blob)
            t_d += time.perf_counter() - t1
            t_c += t1 - t0
            n_bytes += blob[1] if isinstance(blob, tuple) else len(blob)
            n_values += x.size
            input_bytes += x.nbytes
        scores.add(ref, out)
    return point(name, setting, scores, n_bytes, n_values, input_bytes, t_c, t_d)


def versus_sperr(points):
    """dynfield against SPERR at the same rate (token-only) and at the same bound (error-bounded)."""
    curve = sorted((p["bits_per_value"], p) for p in points if p["codec"] == "sperr-rate")
    keys = [k for k in ("psnr", "k10", "okubo_weiss_iou", "vorticity_relative_l2") if k in points[0]]
    rows = []
    for p in points:
        if p["codec"] == "dynfield" and len(curve) > 1:
            rate = np.log(p["bits_per_value"])
            inside = curve[0][0] <= p["bits_per_value"] <= curve[-1][0]
            sperr = {k: float(np.interp(rate, [np.log(b) for b, _ in curve], [q[k] for _, q in curve])) for k in keys}
            rows.append({"dynfield": p["setting"], "bits_per_value": p["bits_per_value"], "interpolated": inside,
                         **{k: {"dynfield": p[k], "sperr": sperr[k]} for k in keys}})
        if p["codec"] == "dynfield+bound":
            same = [q for q in points if q["codec"] == "sperr" and q["setting"] == p["setting"]]
            if same:
                rows.append({"dynfield+bound": p["setting"], "compression_ratio": {
                    "dynfield": p["compression_ratio"], "sperr": same[0]["compression_ratio"]}})
    return rows


def plot(points, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("psnr", "PSNR (dB, by value range)", "linear"), ("max_rel_error", "max |error| / range", "log")]
    if "k10" in points[0]:
        panels.append(("k10", "k10 (spectrum within 10 %)", "linear"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for ax, (key, label, scale) in zip(axes, panels):
        for codec in dict.fromkeys(p["codec"] for p in points):
            pts = sorted((p["bits_per_value"], p[key]) for p in points if p["codec"] == codec and np.isfinite(p[key]))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=codec)
        ax.set_xlabel("bits per value")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def floats(text):
    return [float(t) for t in text.split(",") if t.strip()]


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a field file open_fields reads")
    p.add_argument("--variables", type=variable_list, help="comma-separated (default: all)")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the one bundled with dynfield)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--fine-ratios", type=floats, default=[0.25, 0.5, 0.75], help="dynfield token-only points")
    p.add_argument("--budgets", type=floats, default=[],
                   help="dynfield token-only points at these nominal bits per value (rd allocation)")
    p.add_argument("--bounds", type=floats, default=[1e-2, 1e-3, 1e-4],
                   help="error bounds, relative to each variable's range")
    p.add_argument("--rates", type=floats, default=[0.05, 0.1, 0.2, 0.5, 1, 2, 4, 8],
                   help="fixed rates (bits per value) of SPERR, and of ZFP where >= 1 (its smallest)")
    p.add_argument("--workers", type=int, default=1, help="dynfield compression processes")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    with open_fields(args.data, args.variables) as ds:
        variables = list(ds.data_vars)
        ranges = {v: float(ds[v].max() - ds[v].min()) for v in variables}
        points = []
        with tempfile.TemporaryDirectory() as workdir:
            for r in args.fine_ratios:
                points.append(run_dynfield(args, ds, variables, ranges, workdir, fine_ratio=r))
            for b in args.budgets:
                points.append(run_dynfield(args, ds, variables, ranges, workdir, bits_per_value=b))
            for b in args.bounds:
                points.append(run_dynfield(args, ds, variables, ranges, workdir, rel_error=b))
        for b in args.bounds:  # the same absolute bound per variable as dynfield's
            setting, bound = {"rel_error": b}, {v: b * ranges[v] for v in variables}
            points += [
                run_field_codec("zfp-accuracy", setting, lambda v, e=bound: zfp_codec(tolerance=e[v]),
                                ds, variables, ranges),
                run_field_codec("sz3", setting, lambda v, e=bound: hdf5_codec(hdf5plugin.SZ3, absolute=e[v]),
                                ds, variables, ranges),
                run_field_codec("sperr", setting, lambda v, e=bound: hdf5_codec(hdf5plugin.Sperr, absolute=e[v]),
                                ds, variables, ranges),
            ]
        for rate in args.rates:
            setting = {"rate": rate}
            if rate >= 1:
                points.append(run_field_codec("zfp-rate", setting, lambda v, r=rate: zfp_codec(rate=r),
                                              ds, variables, ranges))
            points.append(run_field_codec("sperr-rate", setting, lambda v, r=rate: hdf5_codec(hdf5plugin.Sperr, rate=r),
                                          ds, variables, ranges))
    for q in points:
        print(f"{q['codec']:>15} {json.dumps(q['setting']):<28} {q['bits_per_value']:8.3f} bpv  "
              f"PSNR {q['psnr']:7.2f}  max rel err {q['max_rel_error']:.2e}")
    summary = {"machine": machine(), "data": str(args.data), "checkpoint": args.checkpoint or "bundled",
               "model_hash": next(q["model_hash"] for q in points if "model_hash" in q), "variables": variables,
               "ranges": ranges,
               "points": points, "versus_sperr": versus_sperr(points)}
    (out_dir / "rate_distortion.json").write_text(json.dumps(summary, indent=2))
    plot(points, out_dir / "rate_distortion.png")
    print(f"wrote {out_dir / 'rate_distortion.json'} and {out_dir / 'rate_distortion.png'}")
    return summary


if __name__ == "__main__":
    main()
