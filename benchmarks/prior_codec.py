"""The prior as the codec's entropy model: token bits under an autoregressive prior against per-file histograms.

Each held-out file is compressed twice, token-only, with the same tokenizer:
once with its tokens range coded under the file's own histograms (stored in
the header, one count per code of each level), once under the prior
(``compress --prior``), and both are decoded again. Reported per file and in
total: token bits and bits per token of each, the header bytes (the
histograms are the per-file model's cost), the ratio of the two token
costs with and without that cost, encode and decode seconds of the prior
path (the prior runs token by token in float64 on the CPU), and whether both
decode to the same values (they must: the tokens are the same). Where the
histograms cost less, ``compress --prior`` declines the prior (the row says
so) and the two files are the same. Writes
``prior_codec.json`` and ``prior_codec.png`` into ``--out``.

    python benchmarks/prior_codec.py --prior RUN/prior.pt --data held_out.nc [more.nc ...] [--checkpoint T]
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from provenance import machine  # noqa: E402  (benchmarks/provenance.py)

from dynfield.checkpoint import read_checkpoint  # noqa: E402
from dynfield.codec import compress_file, decompress_file  # noqa: E402


def code(data, out_dir, checkpoint, prior, variables, fine_ratio):
    """Figures of one file coded one way (prior None: per-file histograms)."""
    name = "prior" if prior else "histograms"
    dfz, nc = out_dir / f"{Path(data).stem}_{name}.dfz", out_dir / f"{Path(data).stem}_{name}.nc"
    t0 = time.perf_counter()
    info = compress_file(data, dfz, checkpoint=checkpoint, variables=variables, fine_ratio=fine_ratio, prior=prior,
                         progress=False)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    decompress_file(dfz, nc, checkpoint=checkpoint, prior=prior, progress=False)
    decode_s = time.perf_counter() - t0
    with xr.open_dataset(nc) as ds:
        values = {v: ds[v].values for v in ds.data_vars}
    dfz.unlink()
    nc.unlink()
    fields = sum(int(np.prod(v["shape"][:-2])) for v in info["variables"].values())
    return {"token_bits": info["tokens"]["bits"], "header_bytes": info["header_bytes"], "bytes": info["bytes"],
            "fields": fields, "encode_s": encode_s, "decode_s": decode_s,
            "decode_fields_per_s": fields / decode_s, "prior_declined": info.get("prior_declined")}, values


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="stage-2 autoregressive prior over the tokenizer's tokens")
    p.add_argument("--data", nargs="+", required=True, help="held-out field files")
    p.add_argument("--checkpoint", help="tokenizer (default: the bundled one)")
    p.add_argument("--variables", nargs="*", help="variables to code (default: all)")
    p.add_argument("--fine-ratio", type=float,
                   help="fine fraction of the tokens (default: the one the prior was trained at, else the router's)")
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = read_checkpoint(args.prior)
    fine_ratio = args.fine_ratio if args.fine_ratio is not None else state["tokenizer"]["fine_ratio"]
    rows = []
    for data in args.data:
        hist, a = code(data, out, args.checkpoint, None, args.variables, fine_ratio)
        prior, b = code(data, out, args.checkpoint, args.prior, args.variables, fine_ratio)
        row = {"data": str(data), "histograms": hist, "prior": prior,
               "same_values": all(np.array_equal(a[v], b[v], equal_nan=True) for v in a),
               "token_bits_ratio": prior["token_bits"] / hist["token_bits"],
               "with_model_ratio": (prior["token_bits"] + 8 * prior["header_bytes"])
               / (hist["token_bits"] + 8 * hist["header_bytes"])}
        rows.append(row)
        print(f"{data}: token bits under the prior / per-file histograms = {row['token_bits_ratio']:.3f} "
              f"({row['with_model_ratio']:.3f} with the headers); prior decode {prior['decode_fields_per_s']:.2f} "
              f"fields/s; same values: {row['same_values']}"
              + ("; the prior was declined (histograms cost less)" if prior["prior_declined"] else ""))
    total = {k: sum(r[k]["token_bits"] for r in rows) for k in ("histograms", "prior")}
    summary = {"machine": machine(), "prior": str(args.prior), "prior_order": state["model_config"]["order"],
               "fine_ratio": fine_ratio,
               "prior_metrics": state.get("metrics"), "tokenizer": args.checkpoint or "bundled", "rows": rows,
               "token_bits_ratio": total["prior"] / total["histograms"]}
    (out / "prior_codec.json").write_text(json.dumps(summary, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = np.arange(len(rows))
    for i, (key, label) in enumerate([("histograms", "per-file histograms"), ("prior", "prior")]):
        ax.bar(x + 0.4 * i, [r[key]["token_bits"] / 8e3 for r in rows], 0.4, label=label)
    ax.set_xticks(x + 0.2, [Path(r["data"]).stem[-10:] for r in rows])
    ax.set_ylabel("token kB")
    ax.set_title(f"tokens under the prior: {summary['token_bits_ratio']:.3f} of the histograms'")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "prior_codec.png", dpi=120)
    return summary


if __name__ == "__main__":
    main()
