"""Prior benchmark: which token order gives the best generative model of the fields?

Priors of each order, trained on the tokens of one tokenizer, are compared on
held-out fields (a solver seed used neither in training nor in validation):

- likelihood: held-out bits per token and bits per field value (``prior.bits``
  of the held-out fields' tokens), the lower the better;
- speed: seconds to sample and decode one field, on the CPU and, when there
  is one, on the GPU (named);
- physics of n generated fields against n held-out real ones: the kinetic
  energy spectrum error (mean |ln(E_gen / E_real)| of the mean isotropic
  spectra over shells 1..N/3, the wavenumbers a 2/3-rule dealiased solver
  resolves), the Wasserstein-1 distance between the pooled vorticity values
  divided by the real vorticity's std, and the mean enstrophy ratio.

Reference rows bracket the priors. For the physics: the tokenizer's own
reconstructions of the held-out fields (the best any prior over its tokens can
do) and uniformly random tokens decoded by the same tokenizer. For the
likelihood: the unigram rate (the held-out tokens under the training tokens'
frequencies, the rate of a prior that learned no context; the training tokens
are the prior run's ``tokens.pt``) and per-file histograms (the held-out tokens
under their own frequencies, as the codec stores them without a prior; the
histograms' own bytes are not counted, so this row flatters them). Writes
``prior.json`` and ``prior.png`` (spectra, log-log; vorticity PDFs, log-y)
into ``--out``.

    python benchmarks/prior.py --tokenizer RUN/tokenizer.pt \\
        --priors RUNS/prior_coarse_to_fine/prior.pt RUNS/prior_raster/prior.pt RUNS/prior_bidirectional/prior.pt \\
        --data builtin --n 64 --out benchmarks/results
"""

import argparse
import json
import time
from pathlib import Path

import torch

from provenance import machine  # benchmarks/provenance.py

from dynfield import checkpoint, physics
from dynfield.analysis import channel_roles, load_fields
from dynfield.codec.entropy import TokenCounts, TokenModel, token_information_bits
from dynfield.codec.field import tokens_to_numpy
from dynfield.data import denormalise
from dynfield.data.turbulence import HELD_OUT_SEED
from dynfield.evaluation import prior_code_length, unigram_code_length
from dynfield.models import Tokens
from dynfield.models.tokens import repeat_cells
from dynfield.sample import held_out_source, sample_fields


def random_tokens(n, tokenizer, shape, generator):
    """Valid tokens with a uniformly random grain per region and a uniformly random code per token (nested
    where the tokenizer's grains are)."""
    factors, V, nested = tokenizer.factors, tokenizer.config["codebook_size"], tokenizer.nested
    f_K = factors[-1]
    grid = (-(-shape[0] // f_K), -(-shape[1] // f_K))
    grain = torch.randint(len(factors), (n, *grid), generator=generator)
    codes = []
    for k, f in enumerate(factors):
        mask = repeat_cells(grain <= k if nested else grain == k, f_K // f)
        codes.append(torch.where(mask, torch.randint(V, mask.shape, generator=generator), -1))
    return Tokens(grain, codes, factors, shape, V, nested=nested).validate()


@torch.no_grad()
def encode(tokenizer, x_NCHW, fine_ratio, batch_size):
    """Tokens of normalised fields, one ``Tokens`` per batch."""
    return [tokenizer.encode(x, fine_ratio=fine_ratio, depth=1) for x in x_NCHW.split(batch_size)]  # first stage


def likelihood_references(train, held_out, tokenizer, values_per_field):
    """Rows of the unigram rate and of per-file histograms for the held-out tokens (a list of ``Tokens``).

    `train` is the training split of a prior run's ``tokens.pt``.
    """
    factors, N = tokenizer.factors, tokenizer.config["codebook_size"]
    split = {"grain": torch.cat([t.grain for t in held_out]),
             "codes": [torch.cat(level) for level in zip(*(t.codes for t in held_out))]}
    count = sum(int(t.count().sum()) for t in held_out)
    fields = [f for t in held_out for f in tokens_to_numpy(t)]
    counts = TokenCounts(len(factors), N)
    for f in fields:
        counts.add(f, factors)
    model = TokenModel.from_histograms(counts.grain, counts.codes, counts.depth)
    histogram_bits = sum(token_information_bits(f, factors, model) for f in fields) / count
    rows = []
    for label, bits in [("(unigram)", unigram_code_length(train, split, len(factors), N)["unigram_bits_per_token"]),
                        ("(per-file histograms)", histogram_bits)]:
        rows.append({"label": label, "kind": "reference", "bits_per_token": bits,
                     "bits_per_value": bits * count / len(fields) / values_per_field,
                     "tokens_per_field": count / len(fields)})
    return rows


def velocity(fields_NCHW, variables):
    """(u, v) channels, or None without both."""
    roles = channel_roles(variables)
    return None if roles["u"] is None else (fields_NCHW[:, roles["u"]], fields_NCHW[:, roles["v"]])


def statistics(fields_NCHW, variables):
    """What the physics figures compare, computed once per set of fields.

    ``spectrum``: the mean isotropic kinetic-energy spectrum (with u and v), else
    the channels' mean power spectrum; ``vorticity``: (N, H, W), the curl of
    (u, v), else the vorticity channel, else None.
    """
    f = fields_NCHW.double()
    uv, vort = velocity(f, variables), channel_roles(variables)["vorticity"]
    if uv is not None:
        return {"spectrum": physics.energy_spectrum(*uv)[1].mean(0), "vorticity": physics.vorticity(*uv)}
    return {"spectrum": physics.power_spectrum(f)[1].mean((0, 1)), "vorticity": None if vort is None else f[:, vort]}


def physics_figures(real, gen, kmax):
    """Spectrum error, normalised vorticity W1 and enstrophy ratio of generated fields against real ones."""
    out = {"spectrum_error": physics.spectrum_error(real["spectrum"], gen["spectrum"], kmin=1, kmax=kmax).item()}
    w_real, w_gen = real["vorticity"], gen["vorticity"]
    if w_real is not None:
        out["vorticity_w1"] = (physics.wasserstein1(w_real, w_gen) / w_real.std()).item()
        out["enstrophy_ratio"] = (physics.enstrophy(w_gen).mean() / physics.enstrophy(w_real).mean()).item()
    return out


def timed(fn, device):
    """(result, seconds) of fn(), waiting for the device to finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result, time.perf_counter() - t0


def gpu_seconds_per_field(prior, tokenizer, state, n, batch_size, seed):
    """Seconds per sampled and decoded field on the GPU (after one warm-up batch), or None without one."""
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda")
    prior.to(device)
    tokenizer.to(device)
    try:
        sample_fields(prior, tokenizer, state, 1, seed=seed, batch=1)
        _, seconds = timed(lambda: sample_fields(prior, tokenizer, state, n, seed=seed, batch=batch_size), device)
    finally:
        prior.cpu()
        tokenizer.cpu()
    return seconds / n


def plot(spectra, pdfs, kmax, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_e, ax_w) = plt.subplots(1, 2, figsize=(11, 4.5))
    for label, E in spectra.items():
        k = torch.arange(len(E))
        style = dict(color="k", lw=2) if label == "real" else dict(lw=1.2, ls="--" if label.startswith("(") else "-")
        ax_e.loglog(k[1 : kmax + 1], E[1 : kmax + 1], label=label, **style)
    ax_e.set_xlabel("wavenumber k")
    ax_e.set_ylabel("E(k)")
    ax_e.set_title(f"kinetic energy spectrum (shells 1..{kmax})")
    for label, (centres, density) in pdfs.items():
        style = dict(color="k", lw=2) if label == "real" else dict(lw=1.2, ls="--" if label.startswith("(") else "-")
        ax_w.semilogy(centres, density, label=label, **style)
    ax_w.set_xlabel("vorticity")
    ax_w.set_ylabel("PDF")
    ax_w.set_title("vorticity PDF")
    for ax in (ax_e, ax_w):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="the tokenizer every prior was trained on")
    p.add_argument("--priors", nargs="+", required=True, help="prior checkpoints (prior.pt), one per order")
    p.add_argument("--train-tokens", help="the priors' training tokens, for the unigram row "
                   "(default: tokens.pt beside the first prior)")
    p.add_argument("--data", default="builtin", help="held-out fields: a file, or 'builtin' (held-out built-in data)")
    p.add_argument("--n", type=int, default=64, help="held-out and generated fields")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out", default="benchmarks/results")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    entry, tokenizer = checkpoint.tokenizer_entry(args.tokenizer)
    state = entry["checkpoint"]
    priors = []
    for path in args.priors:
        prior, _, prior_state = checkpoint.load_prior(path)
        if prior_state["tokenizer"]["sha256"] != entry["sha256"]:
            raise ValueError(f"{path} was trained on the tokens of {prior_state['tokenizer']['path']}, "
                             f"not of {args.tokenizer} (weights differ)")
        priors.append((path, prior, prior_state))
    shape = tuple(priors[0][1].config["shape"])
    train_tokens = Path(args.train_tokens or Path(args.priors[0]).parent / "tokens.pt")
    if not train_tokens.exists():
        raise FileNotFoundError(f"no training tokens at {train_tokens} for the unigram row: give the prior run's "
                                f"tokens.pt with --train-tokens")
    train_split = torch.load(train_tokens, weights_only=True)["train"]

    # "builtin": the held-out split of the data set the priors were trained on, with its generator settings
    source = held_out_source(priors[0][2], args.n) if args.data == "builtin" else args.data
    if source is None:
        raise ValueError(f"{args.priors[0]} was trained on files: give the held-out fields with --data")
    x, names, stats = load_fields(source, state, args.n)
    if tuple(x.shape[-2:]) != shape:
        raise ValueError(f"the held-out fields are {tuple(x.shape[-2:])}, the priors model {shape} fields")
    variables = list(names)
    real = denormalise(x, stats, variables)
    n, values_per_field = len(x), x[0].numel()
    kmax = min(shape) // 3

    rows, gens = [], {}
    real_stats = statistics(real, variables)
    fine_ratio = priors[0][2]["tokenizer"]["fine_ratio"]
    token_cache = {fine_ratio: encode(tokenizer, x, fine_ratio, args.batch_size)}
    with torch.no_grad():
        recon = torch.cat([tokenizer.decode(t) for t in token_cache[fine_ratio]])
        noise = tokenizer.decode(random_tokens(n, tokenizer, shape, torch.Generator().manual_seed(args.seed)))
    gens["(tokenizer ceiling)"] = denormalise(recon, stats, variables)
    gens["(random tokens)"] = denormalise(noise, stats, variables)
    for label in gens:
        gens[label] = statistics(gens[label], variables)
        rows.append({"label": label, "kind": "reference", "fine_ratio": fine_ratio,
                     **physics_figures(real_stats, gens[label], kmax)})
    rows += [dict(row, fine_ratio=fine_ratio)
             for row in likelihood_references(train_split, token_cache[fine_ratio], tokenizer, values_per_field)]

    for path, prior, prior_state in priors:
        order, fr = prior.config["order"], prior_state["tokenizer"]["fine_ratio"]
        if fr not in token_cache:
            token_cache[fr] = encode(tokenizer, x, fr, args.batch_size)
        row = {"label": order, "kind": "prior", "checkpoint": path, "prior_class": prior_state["model_class"],
               "fine_ratio": fr, **prior_code_length(prior, token_cache[fr], values_per_field)}
        gen, seconds = timed(lambda: sample_fields(prior, tokenizer, state, n, seed=args.seed, batch=args.batch_size),
                             torch.device("cpu"))
        row["seconds_per_field_cpu"] = seconds / n
        row["seconds_per_field_gpu"] = gpu_seconds_per_field(prior, tokenizer, state, n, args.batch_size, args.seed)
        gens[order] = statistics(gen, variables)
        row.update(physics_figures(real_stats, gens[order], kmax))
        rows.append(row)
        print(f"{order:15s} bits/token {row['bits_per_token']:.3f}, spectrum error {row['spectrum_error']:.3f}, "
              f"{row['seconds_per_field_cpu']:.3f} s/field (CPU)")

    spectra = {"real": real_stats["spectrum"], **{label: g["spectrum"] for label, g in gens.items()}}
    pdfs = {}
    w_real = real_stats["vorticity"]
    if w_real is not None:
        lo, hi = w_real.min().item(), w_real.max().item()
        width = hi - lo
        span = (lo - 0.5 * width, hi + 0.5 * width)  # room for generated tails
        pdfs = {"real": physics.vorticity_pdf(w_real, bins=80, range=span)}
        pdfs.update({label: physics.vorticity_pdf(g["vorticity"], bins=80, range=span) for label, g in gens.items()})

    summary = {
        "machine": machine(), "n_fields": n, "data": args.data, "held_out_seed": HELD_OUT_SEED,
        "shape": list(shape), "variables": variables, "tokenizer": args.tokenizer, "tokenizer_sha256": entry["sha256"],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "spectrum": {"kind": "power, mean over channels" if velocity(real, variables) is None else "kinetic energy",
                     "shells": [1, kmax], "kmax_rule": "N/3: the wavenumbers a 2/3-rule dealiased solver resolves"},
        "vorticity": None if w_real is None else "channel" if velocity(real, variables) is None else "curl of (u, v)",
        "rows": rows,
    }
    (out / "prior.json").write_text(json.dumps(summary, indent=2))
    plot(spectra, pdfs, kmax, out / "prior.png")
    print(f"wrote {out / 'prior.json'} and {out / 'prior.png'}")
    return summary


if __name__ == "__main__":
    main()
