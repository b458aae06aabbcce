"""Tokenizer benchmark: does spending codes where the detail is beat spending them evenly?

One trained dynamic-grain model is evaluated with the ``learned``, ``random``
and ``enstrophy`` routers at several exact fine ratios, next to fixed-grain
VQ-VAEs trained separately at the finest and the coarsest factor. Every model
sees the same held-out fields (a solver seed used neither in training nor in
validation). Writes ``tokenizer.json`` and ``tokenizer.png`` into ``--out``.

    python benchmarks/tokenizer.py --dq RUN/tokenizer.pt \\
        --fixed RUN_F4/tokenizer.pt RUN_F8/tokenizer.pt --out benchmarks/results
"""

import argparse
import json
import math
from pathlib import Path


from provenance import machine  # benchmarks/provenance.py

from dynfield import checkpoint
from dynfield.analysis import load_fields
from dynfield.data.turbulence import HELD_OUT_SEED
from dynfield.evaluation import evaluate_tokenizer


def evaluate(model, fields_NCHW, state, batch_size, **encode_kw):
    """Tokenizer metrics on every (normalised) field, plus the rate in bits per value."""
    out = evaluate_tokenizer(model, fields_NCHW.split(batch_size), state["stats"], state["variables"], **encode_kw)
    H, W = fields_NCHW.shape[-2:]
    values = H * W * len(state["variables"])
    out["bits_per_value"] = out["tokens_per_field"] * math.log2(model.config["codebook_size"]) / values
    # The grain map costs log2(K) bits a region on top (not counted above).
    regions = math.ceil(H / model.factors[-1]) * math.ceil(W / model.factors[-1])
    out["grain_bits_per_value"] = regions * math.log2(len(model.factors)) / values
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for router in ("learned", "random", "enstrophy"):
        pts = sorted((r["tokens_per_field"], r["rel_l2"]) for r in results if r["model"] == "dq" and r["router"] == router
                     and r["fine_ratio_target"] is not None)
        ax.plot(*zip(*pts), marker="o", label=f"dq, {router} router")
    fixed = sorted((r["tokens_per_field"], r["rel_l2"], r["label"]) for r in results if r["model"] == "fixed")
    for t, e, label in fixed:
        ax.scatter([t], [e], marker="s", s=60, color="k", zorder=3)
        ax.annotate(label, (t, e), textcoords="offset points", xytext=(6, 4))
    if len(fixed) == 2:
        ax.plot([fixed[0][0], fixed[1][0]], [fixed[0][1], fixed[1][1]], "k--", lw=1, label="fixed-grain chord")
    ax.set_xlabel("tokens per field")
    ax.set_ylabel("relative L2 error (mean over channels)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dq", required=True, help="dynamic-grain tokenizer checkpoint")
    p.add_argument("--fixed", nargs="*", default=[], help="fixed-grain VQ-VAE checkpoints")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--n", type=int, default=64, help="held-out fields")
    p.add_argument("--resolution", type=int, default=128, help="grid of the held-out fields (as in training)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dq, dq_state = checkpoint.load_model(args.dq)
    fields, _, _ = load_fields("builtin", dq_state, args.n, resolution=args.resolution, seed=HELD_OUT_SEED)
    results = []
    for router in ("learned", "random", "enstrophy"):
        for ratio in args.ratios:
            r = evaluate(dq, fields, dq_state, args.batch_size, router=router, fine_ratio=ratio)
            results.append(dict(model="dq", router=router, fine_ratio_target=ratio, **r))
            print(f"dq {router:9s} r={ratio:.2f}: tokens {r['tokens_per_field']:.0f}, rel_l2 {r['rel_l2']:.4f}, "
                  f"psnr {r['psnr']:.2f}")
    r = evaluate(dq, fields, dq_state, args.batch_size)  # the learned router's own argmax choice
    results.append(dict(model="dq", router="learned", fine_ratio_target=None, **r))
    for path in args.fixed:
        model, state = checkpoint.load_model(path)
        if state["variables"] != dq_state["variables"]:
            raise ValueError(f"{path} was trained on {state['variables']}, the dq model on {dq_state['variables']}")
        r = evaluate(model, fields, state, args.batch_size)
        results.append(dict(model="fixed", router="fixed", fine_ratio_target=None, label=f"f={model.factors[0]}", **r))
        print(f"fixed f={model.factors[0]}: tokens {r['tokens_per_field']:.0f}, rel_l2 {r['rel_l2']:.4f}")

    summary = {"machine": machine(), "held_out_seed": HELD_OUT_SEED, "n_fields": len(fields),
               "checkpoints": {"dq": args.dq, "fixed": args.fixed}, "results": results}
    summary["targets"] = targets(results)
    (out / "tokenizer.json").write_text(json.dumps(summary, indent=2))
    plot(results, out / "tokenizer.png")
    print(json.dumps(summary["targets"], indent=2))
    print(f"wrote {out / 'tokenizer.json'} and {out / 'tokenizer.png'}")


def targets(results):
    """The issue's two claims, checked at each budget."""
    dq = {(r["router"], r["fine_ratio_target"]): r for r in results if r["model"] == "dq"}
    fixed = sorted((r["tokens_per_field"], r["rel_l2"]) for r in results if r["model"] == "fixed")
    checks = {}
    for (router, ratio), r in dq.items():
        if router != "learned" or ratio is None:
            continue
        rand = dq[("random", ratio)]
        entry = {"learned_rel_l2": r["rel_l2"], "random_rel_l2": rand["rel_l2"],
                 "reduction_vs_random": 1 - r["rel_l2"] / rand["rel_l2"]}
        if len(fixed) == 2:
            (t0, e0), (t1, e1) = fixed
            chord = e0 + (e1 - e0) * (r["tokens_per_field"] - t0) / (t1 - t0)
            entry["fixed_chord_rel_l2"] = chord
            entry["below_chord"] = r["rel_l2"] < chord
        checks[f"fine_ratio={ratio}"] = entry
    return checks


if __name__ == "__main__":
    main()
