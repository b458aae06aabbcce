"""Reconstruction metrics in physical units, shared by validation and benchmarks."""

import math

import torch

from . import physics
from .data import denormalise
from .models.quantizer import perplexity


def reconstruction_metrics(ref_BCHW, est_BCHW, variables):
    """Per-field errors of a reconstruction, averaged over the batch.

    Parameters
    ----------
    ref_BCHW, est_BCHW : fields in physical units, channels named by ``variables``.

    Returns
    -------
    dict of floats: ``rel_l2/<var>`` and ``psnr/<var>`` per channel, their means
    ``rel_l2`` and ``psnr`` (PSNR by each reference field's value range), and
    ``spectrum_error``: mean |ln(E/E_ref)| of the kinetic-energy spectrum when
    ``u`` and ``v`` are present, else of each channel's power spectrum, over
    the shells up to the Nyquist wavenumber.
    """
    ref, est = ref_BCHW.double(), est_BCHW.double()
    rel = physics.relative_l2(ref, est).mean(0)  # (C,)
    psnr = physics.psnr(ref, est).mean(0)
    out = {}
    for c, name in enumerate(variables):
        out[f"rel_l2/{name}"] = rel[c].item()
        out[f"psnr/{name}"] = psnr[c].item()
    out["rel_l2"] = rel.mean().item()
    out["psnr"] = psnr.mean().item()
    kmax = min(ref.shape[-2:]) // 2
    if "u" in variables and "v" in variables:
        iu, iv = variables.index("u"), variables.index("v")
        _, E_ref = physics.energy_spectrum(ref[:, iu], ref[:, iv])
        _, E = physics.energy_spectrum(est[:, iu], est[:, iv])
    else:
        _, E_ref = physics.power_spectrum(ref)
        _, E = physics.power_spectrum(est)
    out["spectrum_error"] = physics.spectrum_error(E_ref.mean(0), E.mean(0), kmax=kmax).mean().item()
    return out


@torch.no_grad()
def evaluate_tokenizer(model, batches, stats, variables, device="cpu", encode=None, **encode_kw):
    """Encode and decode normalised batches (B, C, H, W); metrics in physical units.

    ``encode_kw`` go to ``model.encode`` (``fine_ratio``, ``router``,
    ``depth``), or to ``encode(model, x, **encode_kw)`` when it holds an
    ``encode`` function (another allocation). Returns the
    ``reconstruction_metrics`` averaged over fields, plus ``fine_ratio``,
    ``tokens_per_field`` (codes of every stage), ``bits_per_value`` (see
    ``nominal_bits``), ``codebook_usage`` (fraction of first-stage codes used)
    and ``perplexity`` of the first-stage codes used.
    """
    results, sizes, fine, codes, count, bits = [], [], [], [], 0, 0.0
    for x in batches:
        x = x.to(device)
        tokens = encode(model, x, **encode_kw) if encode else model.encode(x, **encode_kw)
        recon = model.decode(tokens).float().cpu()
        results.append(reconstruction_metrics(denormalise(x.cpu(), stats, variables),
                                              denormalise(recon, stats, variables), variables))
        sizes.append(len(x))
        fine.append(tokens.fine_fraction().sum().item())
        codes.append(torch.cat([c[c >= 0] for c in tokens.codes]).cpu())
        count += tokens.count().sum().item()
        bits += nominal_bits(tokens, model.quantizer.num_stages).sum().item()
    out = merge_batches(results, sizes)
    codes = torch.cat(codes)
    counts = torch.bincount(codes, minlength=model.config["codebook_size"]).double()
    n, (H, W) = sum(sizes), x.shape[-2:]
    out["fine_ratio"] = sum(fine) / n
    out["tokens_per_field"] = count / n
    out["bits_per_value"] = bits / n / (H * W * x.shape[1])
    out["codebook_usage"] = (counts > 0).double().mean().item()
    out["perplexity"] = perplexity(counts)
    return out


def nominal_bits(tokens, stages=None):
    """(B,) bits of each field's tokens without entropy coding.

    log2(codebook_size) per code of every stage, log2(K) per region for the
    grain map and log2(stages) per region for the depth map (when the model has
    more than one stage). Entropy coding only lowers this.
    """
    stages = tokens.stages if stages is None else stages
    per_region = math.log2(tokens.num_levels) + math.log2(stages)
    regions = tokens.grain[0].numel()
    return tokens.count().double() * math.log2(tokens.codebook_size) + regions * per_region


@torch.no_grad()
def prior_code_length(prior, token_batches, values_per_field):
    """Held-out code length under a stage-2 prior (``prior.bits``): bits per token, per field value, tokens per field.

    ``token_batches`` is an iterable of ``Tokens``; ``values_per_field`` is C * H * W.
    """
    bits, count = [], []
    for tokens in token_batches:
        bits.append(prior.bits(tokens).cpu())
        count.append(tokens.count().cpu())
    bits, count = torch.cat(bits), torch.cat(count)
    return {"bits_per_token": (bits.sum() / count.sum()).item(),
            "bits_per_value": bits.mean().item() / values_per_field,
            "tokens_per_field": count.double().mean().item()}


def unigram_code_length(train, held_out, num_levels, codebook_size):
    """Held-out bits per token under the training tokens' own frequencies: the rate of a prior that learned
    the marginal distribution and no context, the yardstick of every prior.

    `train` and `held_out` are ``{"grain": (N, Hc, Wc), "codes": [(N, Hk, Wk) per level, -1 unused]}``
    (``train_prior.encode_split``). A region's grain level costs -log2 of its
    frequency, a code of level k that of its frequency among level k's codes
    (one count added to every symbol), per code token as ``prior.bits`` counts.
    """
    def rate(counts, symbols):
        p = (counts.double() + 1) / (counts.sum() + len(counts))
        return -p.log2()[symbols].sum()

    bits = rate(torch.bincount(train["grain"].flatten(), minlength=num_levels), held_out["grain"].flatten())
    count = 0
    for seen, coded in zip(train["codes"], held_out["codes"]):
        bits = bits + rate(torch.bincount(seen[seen >= 0], minlength=codebook_size), coded[coded >= 0])
        count += int((coded >= 0).sum())
    return {"unigram_bits_per_token": float(bits) / max(count, 1)}


def merge_batches(metrics, weights):
    """Average per-batch metric dicts, weighted by batch size."""
    total = sum(weights)
    return {k: sum(m[k] * w for m, w in zip(metrics, weights)) / total for k in metrics[0]}
