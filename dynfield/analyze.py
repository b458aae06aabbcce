"""Grain-allocation report: where does a tokenizer spend its fine codes?

Measures how the grain choices of a dynamic-grain tokenizer line up with the
flow's structure (vortices, strain, gradients; see ``dynfield.analysis``) for
the learned, random and enstrophy routers at several budgets, and writes
``alignment.json``, ``alignment.txt`` and the figures ``grain_maps.png``,
``okubo_weiss.png``, ``scores.png``, ``roc.png`` and ``errors.png`` into
``--out``.

    python -m dynfield.analyze builtin --out reports/grain [--checkpoint RUN/tokenizer.pt]
    python -m dynfield.analyze run.nc --variables Vx,Vy,density,pressure --checkpoint RUN/tokenizer.pt --out DIR

DATA is any file (or glob) that ``open_fields`` reads, or ``builtin``: held-out
built-in turbulence (solver seed 2, ``--resolution`` points a side). Without
``--checkpoint`` the tokenizer bundled with the package is analysed.
"""

import argparse
import json
import sys
from pathlib import Path

from dynfield import analysis, checkpoint
from dynfield.cli import run_command, variable_list
from dynfield.data.turbulence import HELD_OUT_SEED

FIGURES = {
    "grain_maps": analysis.figure_grain_maps,
    "okubo_weiss": analysis.figure_okubo_weiss,
    "scores": analysis.figure_scores,
    "roc": analysis.figure_roc,
    "errors": analysis.figure_errors,
}
SAMPLE_FIGURES = ("grain_maps", "okubo_weiss")  # these show one field


def write_report(result, out, sample=0, inputs=None):
    """Write ``alignment.json`` (``inputs``, then the summary), ``alignment.txt`` and the PNGs; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "alignment.json", out / "alignment.txt"]
    written[0].write_text(json.dumps({**(inputs or {}), **result.summary}, indent=2))
    tables = [analysis.alignment_table(result.summary, q) for q in result.summary["quantiles"]]
    written[1].write_text("\n\n".join([result.summary["note"], *tables, analysis.error_table(result.summary)]) + "\n")
    for name, make in FIGURES.items():
        fig = make(result, sample) if name in SAMPLE_FIGURES else make(result)
        if fig is not None:  # no Okubo-Weiss figure without a velocity
            fig.savefig(out / f"{name}.png", dpi=120)
            written.append(out / f"{name}.png")
    return written


def parser():
    p = argparse.ArgumentParser(prog="python -m dynfield.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="field file(s) that open_fields reads, or 'builtin'")
    p.add_argument("--out", required=True, help="directory for alignment.json, alignment.txt and the PNGs")
    p.add_argument("--checkpoint", help="tokenizer checkpoint (default: the bundled one)")
    p.add_argument("--variables", type=variable_list, help="comma-separated names in DATA of the checkpoint's "
                   "channels, in its order (default: the checkpoint's own names)")
    p.add_argument("--n", type=int, default=16, help="fields analysed (the first n)")
    p.add_argument("--budgets", type=float, nargs="+", default=list(analysis.BUDGETS),
                   help="fractions of regions finer than the coarsest grain")
    p.add_argument("--quantiles", type=float, nargs="+", default=list(analysis.QUANTILES),
                   help="q of 'region in the top q of an indicator'")
    p.add_argument("--resolution", type=int, default=128, help="grid of the builtin held-out fields")
    p.add_argument("--sample", type=int, default=0, help="field shown in the maps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")

    def action():
        path = analysis.resolve_checkpoint(args.checkpoint)
        model, state = checkpoint.load_model(path, map_location=args.device)
        x, names, stats = analysis.load_fields(args.data, state, args.n, variables=args.variables,
                                               resolution=args.resolution)
        if not 0 <= args.sample < len(x):
            raise ValueError(f"--sample {args.sample} is not one of the {len(x)} fields read")
        result = analysis.analyse(model, x, names, stats, state["periodic"], budgets=args.budgets,
                                  quantiles=args.quantiles, batch_size=args.batch_size, progress=True)
        inputs = {"checkpoint": str(path), "data": str(args.data), "variables": names}
        if args.data == "builtin":
            inputs.update(held_out_seed=HELD_OUT_SEED, resolution=args.resolution)
        written = write_report(result, args.out, args.sample, inputs)
        print(result.summary["note"])
        print(analysis.alignment_table(result.summary))
        print(analysis.error_table(result.summary))
        print("wrote " + ", ".join(str(w) for w in written))

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
