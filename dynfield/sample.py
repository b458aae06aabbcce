"""Sample fields from a trained prior.

    python -m dynfield.sample RUN/prior.pt --n 16 --out samples.nc [--seed S] [--temperature T]
        [--top-k K] [--top-p P] [--batch B] [--png PATH] [--real DATA] [--device D]

The prior checkpoint holds its tokenizer, so it is all that is needed:
tokens are sampled, decoded by that tokenizer, de-normalised to physical
units and written as CF netCDF with dims (sample, y, x), the variable names,
units and coordinates of the training data, and global attributes recording
the prior, its order, the sampling settings and the tokenizer's SHA-256. A
PNG panel shows a few samples beside real fields: from ``--real`` if given,
else held-out fields of the built-in data set the prior was trained on
(generated once and cached), else samples only.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from dynfield import checkpoint, paths
from dynfield.cli import run_command
from dynfield.codec.container import atomic_output, from_json
from dynfield.conventions import CF_CONVENTIONS, COORD_ATTRS, SAMPLE, X, Y
from dynfield.data import denormalise, ensure_dataset
from dynfield.data.turbulence import HELD_OUT_SEED

PANEL_FIELDS = 4  # samples (and real fields) shown in the PNG


@torch.no_grad()
def sample_fields(prior, tokenizer, state, n, *, seed=0, batch=16, **sampling):
    """`n` fields (n, C, H, W) in physical units, on the CPU.

    Batch i (of at most `batch` fields) is drawn with seed ``seed + i``, so the
    same seed and batch size give the same fields. `sampling` goes to
    ``prior.sample`` (temperature, top_k, top_p).
    """
    if n <= 0:
        raise ValueError(f"the number of samples (--n) must be positive, got {n}")
    if batch <= 0:
        raise ValueError(f"the batch size must be positive, got {batch}")
    fields = []
    for i, start in enumerate(range(0, n, batch)):
        tokens = prior.sample(min(batch, n - start), seed=seed + i, **sampling)
        fields.append(tokenizer.decode(tokens).float().cpu())
    return denormalise(torch.cat(fields), state["stats"], state["variables"])


def to_dataset(fields_NCHW, state, attrs):
    """An xarray.Dataset (sample, y, x) of sampled fields, with the training data's names, units and coordinates."""
    data = state.get("data") or {}
    var_attrs = {v: from_json(data["attrs"][v]) if v in data.get("attrs", {}) else {"long_name": v}
                 for v in state["variables"]}
    n, _, H, W = fields_NCHW.shape
    coords = {SAMPLE: (SAMPLE, np.arange(n), dict(COORD_ATTRS[SAMPLE]))}
    for d, size in ((Y, H), (X, W)):
        stored = data.get("coords", {}).get(d)
        coords[d] = (d, np.asarray(stored["values"]), from_json(stored["attrs"])) if stored else (d, np.arange(size))
    values = fields_NCHW.numpy().astype(np.float32)
    variables = {v: ((SAMPLE, Y, X), values[:, c], var_attrs[v]) for c, v in enumerate(state["variables"])}
    return xr.Dataset(variables, coords=coords, attrs={k: v for k, v in attrs.items() if v is not None})


def held_out_source(state, n):
    """Path of `n` held-out fields (solver seed ``HELD_OUT_SEED``) of the built-in data set a prior
    checkpoint was trained on, generated once and cached; None for a prior trained on files."""
    data = state.get("data") or {}
    if data.get("generator") is None:
        return None
    return ensure_dataset(paths.default_data_dir() / data["name"], **data["generator"], n_samples=n,
                          seed=HELD_OUT_SEED, progress=False)


def real_fields(state, source, n):
    """Up to `n` real fields (n, C, H, W) in physical units, or None.

    From `source` (any file ``open_fields`` reads) if given, else from the
    held-out split (solver seed ``HELD_OUT_SEED``) of the built-in data set
    the prior was trained on; None for a prior trained on files.
    """
    from dynfield.analysis import load_fields  # matplotlib and friends, only when real fields are wanted

    source = source or held_out_source(state, n)
    if source is None:
        return None
    x, names, stats = load_fields(source, state, n)
    return denormalise(x, stats, names)


def plot_panel(path, samples_NCHW, real_NCHW, variables):
    """One row per variable: a few samples, then a few real fields, with one colour scale per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [("sample", f) for f in samples_NCHW[:PANEL_FIELDS]]
    if real_NCHW is not None:
        shown += [("real", f) for f in real_NCHW[:PANEL_FIELDS]]
    rows, cols = len(variables), len(shown)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows), squeeze=False)
    for c, name in enumerate(variables):
        row = torch.stack([f[c] for _, f in shown])
        lo, hi = row.min().item(), row.max().item()
        for j, (kind, f) in enumerate(shown):
            ax = axes[c, j]
            ax.imshow(f[c].numpy(), origin="lower", cmap="RdBu_r", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(kind)
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.sample", description="Sample fields from a trained prior.")
    p.add_argument("checkpoint", help="prior checkpoint (prior.pt of a stage=prior run)")
    p.add_argument("--n", type=int, default=16, help="number of fields")
    p.add_argument("--out", required=True, help="netCDF file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, help="sample among the k most likely codes")
    p.add_argument("--top-p", type=float, help="sample among the most likely codes of total probability p")
    p.add_argument("--batch", type=int, default=16, help="fields sampled at once")
    p.add_argument("--png", help="panel of samples beside real fields (default: next to --out)")
    p.add_argument("--real", help="file with real fields for the panel (default: held-out built-in data)")
    p.add_argument("--device", default="cpu", help="torch device that samples and decodes")
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def action():
        prior, tokenizer, state = checkpoint.load_prior(args.checkpoint, map_location=args.device)
        sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        t0 = time.perf_counter()
        fields = sample_fields(prior, tokenizer, state, args.n, seed=args.seed, batch=args.batch, **sampling)
        seconds = time.perf_counter() - t0
        attrs = {
            "Conventions": CF_CONVENTIONS,
            "title": f"Fields sampled from a dynfield {prior.config['order']} prior",
            "history": f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} dynfield.sample",
            "dynfield_prior": state["model_class"],
            "dynfield_prior_checkpoint": str(Path(args.checkpoint).resolve()),
            "dynfield_order": prior.config["order"],
            "dynfield_seed": args.seed,
            "dynfield_batch": args.batch,
            "dynfield_tokenizer_sha256": state["tokenizer"]["sha256"],
            "dynfield_fine_ratio": state["tokenizer"]["fine_ratio"],
            **{f"dynfield_{k}": v for k, v in sampling.items()},
        }
        ds = to_dataset(fields, state, attrs)
        with atomic_output(args.out) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4")
        png = Path(args.png) if args.png else Path(args.out).with_suffix(".png")
        real = real_fields(state, args.real, PANEL_FIELDS)
        plot_panel(png, fields, real, state["variables"])
        print(f"{args.out}: {args.n} fields of {tuple(fields.shape[1:])} ({', '.join(state['variables'])}) "
              f"in {seconds:.1f} s; panel {png}" + ("" if real is not None else " (samples only)"))

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
