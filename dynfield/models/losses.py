"""Training losses for fields: point-wise, spectral, gradient, and their weighted sum.

No perceptual loss: features of an ImageNet network mean nothing for
velocity or vorticity.
"""

import torch
import torch.nn.functional as F

from ..physics import power_spectrum

# The spectral term is a regulariser on top of the point-wise one: weighted 0.1
# it slowed the early fall of the L1 error several-fold in short CPU runs.
DEFAULT_WEIGHTS = {"recon": 1.0, "spectral": 0.01, "gradient": 0.0, "vq": 1.0, "budget": 1.0}


def reconstruction_loss(recon, x, kind="l1"):
    """Mean L1 ("l1") or squared ("mse") error, in normalised units."""
    if kind == "l1":
        return F.l1_loss(recon, x)
    if kind == "mse":
        return F.mse_loss(recon, x)
    raise ValueError(f"reconstruction loss must be 'l1' or 'mse', got {kind!r}")


def forward_differences(x_BCHW, periodic):
    """(d/dx, d/dy) by forward differences in grid units, each (B, C, H, W).

    Periodic fields wrap around; otherwise the last column/row gets a zero
    difference (edge replicated) instead of a jump to a fictitious zero.
    """
    xp = F.pad(x_BCHW, (0, 1, 0, 1), mode="circular" if periodic else "replicate")
    base = xp[..., :-1, :-1]
    return xp[..., :-1, 1:] - base, xp[..., 1:, :-1] - base


def gradient_loss(recon, x, periodic=True):
    """Mean absolute error of the spatial finite differences."""
    (rx, ry), (xx, xy) = forward_differences(recon, periodic), forward_differences(x, periodic)
    return 0.5 * (F.l1_loss(rx, xx) + F.l1_loss(ry, xy))


def spectral_loss(recon, x, eps=1e-4):
    """Mean squared difference of the log radial power spectra, per sample and channel.

    `eps` is relative: the floor added inside the log is `eps` times the
    target's mean shell power (per sample and channel). An absolute floor
    lets shells with vanishing power, which the target does not care about,
    produce gradients of size 1 / power that swamp the rest of the training.
    """
    # Shell 0 (the mean) is left to the point-wise loss, and the shells beyond
    # the shorter side's Nyquist wavenumber are only partly filled: both left out.
    S = min(x.shape[-2:]) // 2 + 1
    spec_x = power_spectrum(x.float())[1][..., 1:S]  # (B, C, S - 1)
    spec_r = power_spectrum(recon.float())[1][..., 1:S]
    floor = eps * spec_x.mean(-1, keepdim=True)  # (B, C, 1)
    return F.mse_loss(torch.log(spec_r + floor), torch.log(spec_x + floor))


def total_loss(out, x, weights=None, recon_kind="l1", periodic=True):
    """Weighted sum of the stage-1 losses.

    Parameters
    ----------
    out : the tokenizer's forward output (``recon`` and ``losses`` with "vq", "budget").
    x : (B, C, H, W) target field.
    weights : dict with any of "recon", "spectral", "gradient", "vq", "budget";
        missing keys take DEFAULT_WEIGHTS, a zero weight skips the term.

    Returns
    -------
    (total, parts) : scalar tensor and a dict of the unweighted terms as floats.
    """
    weights = {**DEFAULT_WEIGHTS, **(weights or {})}
    unknown = set(weights) - set(DEFAULT_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {sorted(DEFAULT_WEIGHTS)}")
    terms = {
        "recon": lambda: reconstruction_loss(out.recon, x, recon_kind),
        "spectral": lambda: spectral_loss(out.recon, x),
        "gradient": lambda: gradient_loss(out.recon, x, periodic),
        "vq": lambda: out.losses["vq"],
        "budget": lambda: out.losses["budget"],
    }
    parts = {name: term() for name, term in terms.items() if weights[name] != 0}
    total = sum(weights[name] * value for name, value in parts.items())
    return total, {name: value.item() for name, value in parts.items()}
