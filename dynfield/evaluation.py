"""Reconstruction metrics in physical units, shared by validation and benchmarks."""


from . import physics


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


def merge_batches(metrics, weights):
    """Average per-batch metric dicts, weighted by batch size."""
    total = sum(weights)
    return {k: sum(m[k] * w for m, w in zip(metrics, weights)) / total for k in metrics[0]}
