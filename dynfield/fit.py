"""Fit a tokenizer on your own data in one command, for ``compress --checkpoint``.

    python -m dynfield.fit run_*.nc --out model.pt [--minutes 15] [--variables u,v] [--dims lat=y,lon=x]
        [--periodic auto|yes|no] [--channel-agnostic] [--grains fixed|dynamic] [--set trainer.lr=2e-3 ...]

It reads the files as ``open_fields`` does (sample or time, then the spatial
dimensions, lat/lon included; ``--dims`` names others), takes every field
variable unless told, decides whether the fields wrap around (``auto``: each
field's jump across its edges against its steps inside), and trains a
rate-ladder tokenizer for ``--minutes`` of training steps, with a progress bar, holding out the last
tenth of the samples (or time steps) for validation. The checkpoint is
written to ``--out`` (atomically), its provenance (command, data,
variables, steps, time, validation figures) beside it as ``<out>.json``.
``--set`` passes any training option on (the keys of ``python -m
dynfield.train``'s config).

``--grains fixed`` (the default) trains one grain of 8x8 codes with eight
residual stages (``conf/experiment/ladder_fixed.yaml``), so the rate
allocation chooses each region's depth; ``--grains dynamic`` the two-grain
ladder (``conf/experiment/ladder.yaml``: 4x4 and 8x8 codes, four stages),
which also chooses each region's grain. Fitted for 15 minutes, the fixed
grain is 1.4 to 1.7 dB better at equal bits (benchmarks/reference/README.md).
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from dynfield.cli import run_command, variable_list

RECIPES = {"fixed": "experiment=ladder_fixed", "dynamic": "experiment=ladder"}  # conf/experiment/


def dims_map(text):
    """'lat=y,lon=x' -> {'lat': 'y', 'lon': 'x'}."""
    try:
        return {k.strip(): v.strip() for k, v in (pair.split("=", 1) for pair in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected file_dim=our_dim pairs such as lat=y,lon=x, got {text!r}") from None


def wraps(ds, variables, n=4):
    """Whether the fields wrap around: the jump across each edge is like a step inside, for every variable."""
    import numpy as np

    from dynfield.conventions import SAMPLE, TIME

    lead = {d: slice(0, n) for d in (SAMPLE, TIME) if d in ds.dims}
    for v in variables:
        x = np.asarray(ds[v].isel(lead).values, dtype=np.float64)
        for axis in (-2, -1):
            inside = np.nanmean(np.abs(np.diff(x, axis=axis)))
            across = np.nanmean(np.abs(np.take(x, 0, axis=axis) - np.take(x, -1, axis=axis)))
            if not across <= 2 * inside:
                return False
    return True


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="field files (netCDF, HDF5, zarr), globs allowed")
    p.add_argument("--out", required=True, help="the tokenizer checkpoint to write")
    p.add_argument("--minutes", type=float, default=15.0, help="time budget of the training steps")
    p.add_argument("--variables", type=variable_list, help="comma-separated (default: every field variable)")
    p.add_argument("--dims", type=dims_map, help="file dimension -> sample|time|z|y|x, e.g. lat=y,lon=x")
    p.add_argument("--periodic", choices=("auto", "yes", "no"), default="auto", help="do the fields wrap around")
    p.add_argument("--channel-agnostic", action="store_true",
                   help="one-channel model: every variable a field of its own (else the variables jointly)")
    p.add_argument("--grains", choices=tuple(RECIPES), default="fixed",
                   help="one grain of 8x8 codes with eight depths, or 4x4 and 8x8 codes with four")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="more training options (Hydra)")
    return p


def main(argv=None):
    args = parser().parse_args(argv)

    def action():
        import torch
        from hydra import compose, initialize_config_dir

        from dynfield import paths
        from dynfield.codec.container import atomic_output
        from dynfield.data import open_fields
        from dynfield.train_tokenizer import train_tokenizer
        from dynfield.training import pick_device

        out = Path(args.out)
        if args.minutes <= 0:
            raise ValueError(f"--minutes must be positive, got {args.minutes}")
        with open_fields(args.data, args.variables, args.dims) as ds:
            variables = list(ds.data_vars)
            periodic = {"yes": True, "no": False}.get(args.periodic)
            if periodic is None:
                periodic = wraps(ds, variables)
            sizes = dict(ds.sizes)
        data = [str(Path(d).resolve()) if not any(c in d for c in "*?[") else d for d in args.data]
        overrides = ["dataset=files", f"dataset.paths={json.dumps(data)}", f"dataset.variables={json.dumps(variables)}",
                     f"dataset.periodic={str(periodic).lower()}",
                     f"dataset.channel_agnostic={str(args.channel_agnostic).lower()}",
                     f"trainer.minutes={args.minutes}", f"paths.data_dir={paths.default_data_dir()}",
                     RECIPES[args.grains], *args.set]
        if args.dims:
            overrides.append("dataset.dims={" + ",".join(f"{k}:{v}" for k, v in args.dims.items()) + "}")
        print(f"fitting a tokenizer on {variables} ({', '.join(f'{d} {n}' for d, n in sizes.items())}), "
              f"{'periodic' if periodic else 'not periodic'}, for {args.minutes:g} minutes of training")
        with initialize_config_dir(config_dir=paths.config_dir(), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        torch.manual_seed(cfg.seed)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as run_dir:
            train_tokenizer(cfg, Path(run_dir), pick_device(cfg.trainer.device), 0, 1)
            summary = json.loads((Path(run_dir) / "metrics.json").read_text())
            with atomic_output(out) as tmp:
                shutil.copy(Path(run_dir) / "tokenizer.pt", tmp)
        provenance = {"command": ["python", "-m", "dynfield.fit", *(argv if argv is not None else sys.argv[1:])],
                      "data": data, "variables": variables, "sizes": sizes, "periodic": periodic,
                      "overrides": overrides, "seconds": time.perf_counter() - start, "training": summary}
        with atomic_output(out.with_name(out.name + ".json")) as tmp:
            Path(tmp).write_text(json.dumps(provenance, indent=2, default=str))
        print(f"wrote {out} and {out.name}.json: {summary.get('steps')} steps, validation PSNR "
              f"{summary.get('val', {}).get('psnr', float('nan')):.2f} dB")

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
