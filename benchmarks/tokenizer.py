"""Tokenizer benchmark: the rate ladder of one checkpoint, and what its allocation buys.

One dynamic-grain checkpoint is evaluated over bits per value with every
router: ``rd`` (rate-distortion allocation of grains and depths at each
budget), and ``learned``, ``enstrophy`` and ``random`` at every exact fine
ratio and uniform depth (their upper envelope is their curve, so each gets
its best mix of grain and depth at every rate). ``random budget`` spends
each budget blind (``random_allocate``: depths as even as the budget
allows, the deeper step on random regions), rd's yardstick at exactly
equal bits, with no interpolation between uniform depths. Fixed-grain
checkpoints, trained with the same compute, are evaluated at every uniform
depth and with the ``rd`` and ``random budget`` allocations of depths
(``fixed f=F rd``), so that what the grains buy is told apart from what
allocating depths buys. Every model
sees the same held-out fields (a solver seed used neither in training nor in
validation). Writes ``tokenizer.json`` and ``tokenizer.png`` into ``--out``.

    python benchmarks/tokenizer.py --dq RUN/tokenizer.pt \\
        --fixed RUN_F4/tokenizer.pt RUN_F8/tokenizer.pt --out benchmarks/results

Bits per value are nominal: log2(codebook size) per code of every stage
plus log2(K) + log2(S) per region for the grain and depth maps; the codec's
entropy coding only lowers them.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from provenance import machine  # benchmarks/provenance.py

from dynfield import checkpoint
from dynfield.analysis import load_fields
from dynfield.data.turbulence import HELD_OUT_SEED
from dynfield.evaluation import evaluate_tokenizer
from dynfield.models.allocation import random_allocate, rd_allocate, region_error_spread, spread

RULE_ROUTERS = ("learned", "enstrophy", "random")
FINE_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)
BUDGETS = (0.03, 0.05, 0.07, 0.1, 0.14, 0.2, 0.28, 0.4, 0.5)


def evaluate(model, fields_NCHW, state, batch_size, **encode_kw):
    """Tokenizer metrics on every (normalised) field, with the rate in bits per value."""
    t0 = time.perf_counter()
    out = evaluate_tokenizer(model, fields_NCHW.split(batch_size), state["stats"], state["variables"], **encode_kw)
    out["seconds"] = time.perf_counter() - t0
    return out


def envelope(points):
    """Upper envelope (bits, psnr, rel_l2) of (bits, psnr, rel_l2) points: each kept point beats every cheaper one."""
    best, out = -np.inf, []
    for p in sorted(points):
        if p[1] > best:
            out.append(p)
            best = p[1]
    return out


def at_rate(curve, bits, key=1):
    """A curve's value (psnr: key 1, rel_l2: key 2) at `bits` per value, log-linear between points; None outside."""
    xs = np.log2([p[0] for p in curve])
    if not len(xs) or not xs[0] - 1e-9 <= np.log2(bits) <= xs[-1] + 1e-9:
        return None
    return float(np.interp(np.log2(bits), xs, [p[key] for p in curve]))


def curves(results):
    """{name: envelope} of every router of the dq model and every fixed-grain model."""
    out = {}
    for r in results:
        out.setdefault(r["name"], []).append((r["bits_per_value"], r["psnr"], r["rel_l2"]))
    return {name: envelope(points) for name, points in out.items()}


def fixed_labels(factors):
    """'fixed f=F' for each fixed-grain model, numbered ('fixed f=8 #2') where several share a factor."""
    seen = {}
    labels = []
    for f in factors:
        seen[f] = seen.get(f, 0) + 1
        labels.append(f"fixed f={f}" + (f" #{seen[f]}" if factors.count(f) > 1 else ""))
    return labels


def targets(results, budgets=(0.05, 0.1, 0.2)):
    """The issue's claims: no floor, grains pay, allocation matters (at each of `budgets`)."""
    c = curves(results)
    dq = {k: v for k, v in c.items() if k.startswith("dq ")}
    fixed = {k: v for k, v in c.items() if k.startswith("fixed ")}
    out = {}
    for name, curve in {**dq, **fixed}.items():
        # from 0.05 bits per value, or from the curve's cheapest point if that lies just above (the
        # floor of one code per region), to 0.4 or the curve's dearest point
        lo = max(0.05, curve[0][0]) if curve and curve[0][0] <= 0.06 else None
        hi = min(0.4, curve[-1][0]) if curve else None
        if lo is None or hi <= lo:
            out[f"{name}: dB per doubling"] = None
            continue
        slope = (at_rate(curve, hi) - at_rate(curve, lo)) / np.log2(hi / lo)
        out[f"{name}: dB per doubling"] = {"from": lo, "to": hi, "slope": slope}
    at_01 = {k: at_rate(v, 0.1) for k, v in {**dq, **fixed}.items()}
    best_dq = max(((v, k) for k, v in at_01.items() if k in dq and v is not None), default=(None, None))
    best_fixed = max(((v, k) for k, v in at_01.items() if k in fixed and v is not None), default=(None, None))
    out["psnr at 0.1"] = at_01  # None where a curve does not reach 0.1 bits per value
    out["best router at 0.1"] = best_dq[1]
    out["best fixed at 0.1"] = best_fixed[1]
    both = best_dq[0] is not None and best_fixed[0] is not None
    out["best router - best fixed at 0.1 (dB)"] = best_dq[0] - best_fixed[0] if both else None
    reductions = {}
    # at equal bits only where both allocations spend their budget: not below a model's floor (one
    # code a region), where both are that floor, nor past its every code or where rd finds no upgrade
    # worth its bits (the blind allocation, made to spend the rest, would then be a straw man)
    budget_points = {(r["name"], r["target_bits"]): r["rel_l2"] for r in results if "target_bits" in r
                     and 0.95 * r["target_bits"] <= r["bits_per_value"] <= r["target_bits"] + 1e-9}
    for bits in budgets:
        rand = at_rate(c.get("dq random", []), bits, key=2)
        for name in ("dq rd", "dq learned"):
            mine = at_rate(c.get(name, []), bits, key=2)
            if rand and mine:
                reductions[f"{name} vs random at {bits}"] = 1 - mine / rand
        # against the blind allocation of the very same budget: no interpolation between uniform depths
        for model in sorted({k[: -len(" random budget")] for k in c if k.endswith(" random budget")}):
            mine, rand = (budget_points.get((f"{model} {n}", bits)) for n in ("rd", "random budget"))
            if rand and mine:
                reductions[f"{model} rd vs random budget at {bits}"] = 1 - mine / rand
    out["rel_l2 reduction"] = reductions
    return out


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.8))
    for name, curve in curves(results).items():
        style = dict(marker="s", ls="--", color="k" if "4" in name else "0.5") if name.startswith("fixed") else dict(marker="o")
        ax.plot([p[0] for p in curve], [p[1] for p in curve], label=name, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per value (nominal)")
    ax.set_ylabel("PSNR dB (mean over channels)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def headroom(model, fields, batch_size):
    """How far any allocation could lower the relative L2 below uniform depths, from the ``spread`` of the
    model's region errors: {option: (spread, bound)}, at every (grain level, depth)."""
    batches = fields.split(batch_size)
    values = np.average([region_error_spread(model, x) for x in batches], axis=0, weights=[len(x) for x in batches])
    S = model.quantizer.num_stages
    return {f"level {o // S} depth {o % S + 1}": {"spread": v, "rel_l2 bound": 1 - v**-0.5}
            for o, v in enumerate(values)}


def data_headroom(fields, block):
    """The same for the data's own detail: the spread of each block's energy about its mean
    (channels weighted by their squared range), the headroom of a coder whose error follows it."""
    blocks = F.interpolate(F.avg_pool2d(fields, block), scale_factor=block, mode="nearest")
    span = (fields.flatten(2).amax(2) - fields.flatten(2).amin(2)).square()[:, :, None, None]
    energy = F.avg_pool2d((fields - blocks).square() / span, block).sum(1).flatten(1)
    v = float(spread(energy.double().numpy()).mean())
    return {"block": block, "spread": v, "rel_l2 bound": 1 - v**-0.5}


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dq", required=True, help="dynamic-grain tokenizer checkpoint")
    p.add_argument("--fixed", nargs="*", default=[], help="fixed-grain checkpoints trained with the same compute")
    p.add_argument("--budgets", type=float, nargs="+", default=list(BUDGETS), help="bits per value of the rd router")
    p.add_argument("--n", type=int, default=64, help="held-out fields")
    p.add_argument("--resolution", type=int, default=128, help="grid of the held-out fields (as in training)")
    p.add_argument("--source", default="builtin", help="'builtin' (held-out seed) or a file of the same variables")
    p.add_argument("--variable", help="with a channel-agnostic checkpoint, the variable of --source to read "
                   "(default vorticity)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dq, dq_state = checkpoint.load_model(args.dq)
    variables = None if args.variable is None else [args.variable]
    fields, _, _ = load_fields(args.source, dq_state, args.n, variables=variables, resolution=args.resolution,
                               seed=HELD_OUT_SEED)
    S = dq.quantizer.num_stages
    results = []

    def record(name, model, state, encode, **meta):
        r = dict(name=name, **meta, **evaluate(model, fields, state, args.batch_size, **encode))
        results.append(r)
        print(f"{name:14s} {r['bits_per_value']:.4f} bits/value: psnr {r['psnr']:.2f}, rel_l2 {r['rel_l2']:.4f}")

    for bits in args.budgets:
        record("dq rd", dq, dq_state, dict(encode=rd_allocate, bits_per_value=bits), target_bits=bits)
        record("dq random budget", dq, dq_state, dict(encode=random_allocate, bits_per_value=bits), target_bits=bits)
    for router in RULE_ROUTERS if dq.num_levels > 1 else ():
        for ratio in FINE_RATIOS:
            for depth in range(1, S + 1):
                record(f"dq {router}", dq, dq_state, dict(router=router, fine_ratio=ratio, depth=depth),
                       target_fine_ratio=ratio, depth=depth)
    fixed = [checkpoint.load_model(path) for path in args.fixed]
    labels = fixed_labels([model.factors[0] for model, _ in fixed])
    for path, (model, state), label in zip(args.fixed, fixed, labels):
        if state["variables"] != dq_state["variables"]:
            raise ValueError(f"{path} was trained on {state['variables']}, the dq model on {dq_state['variables']}")
        for depth in range(1, model.quantizer.num_stages + 1):
            record(label, model, state, dict(depth=depth), depth=depth)
        for bits in args.budgets if model.quantizer.num_stages > 1 else ():
            for name, allocate in (("rd", rd_allocate), ("random budget", random_allocate)):
                record(f"{label} {name}", model, state, dict(encode=allocate, bits_per_value=bits), target_bits=bits)

    with torch.no_grad():
        room = {"data": data_headroom(fields, dq.factors[-1]), "dq": headroom(dq, fields, args.batch_size)}
        for (model, _), label in zip(fixed, labels):
            room[label] = headroom(model, fields, args.batch_size)
    models = {"dq": args.dq, "fixed": args.fixed}
    provenance = {k: checkpoint.read_checkpoint(v).get("metrics") for k, v in
                  [("dq", args.dq)] + [(f"fixed {i}", f) for i, f in enumerate(args.fixed)]}
    summary = {"machine": machine(), "source": args.source, "variable": args.variable,
               "held_out_seed": HELD_OUT_SEED, "n_fields": len(fields), "checkpoints": models,
               "training": provenance, "results": results, "targets": targets(results, args.budgets),
               "allocation headroom": room}
    (out / "tokenizer.json").write_text(json.dumps(summary, indent=2, default=str))
    plot(results, out / "tokenizer.png")
    print(json.dumps(summary["targets"], indent=2))
    print(f"wrote {out / 'tokenizer.json'} and {out / 'tokenizer.png'}")


if __name__ == "__main__":
    main()
