"""Training losses for fields: point-wise, spectral, gradient, and their weighted sum.

No perceptual loss: features of an ImageNet network mean nothing for
velocity or vorticity.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F

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


@lru_cache(maxsize=32)
def _shells(H, W, device):
    """Shell index and weight of each rfft2 coefficient of an (H, W) field.

    Shell n holds the wavenumbers with round(|k|) = n, |k| in cycles per
    domain of the shorter side, up to that side's Nyquist shell; corners
    beyond it are dropped (index = number of shells, weight 0). The weight 2
    counts the conjugate half that rfft2 leaves out.
    """
    n = min(H, W)
    ky = torch.fft.fftfreq(H)[:, None]
    kx = torch.fft.rfftfreq(W)[None, :]
    shell = torch.round(torch.sqrt(kx**2 + ky**2) * n).long()
    num_shells = n // 2 + 1
    weight = torch.ones(H, kx.shape[1])
    weight[:, 1 : (W + 1) // 2] = 2.0  # columns that stand for a conjugate pair
    weight[shell >= num_shells] = 0.0
    shell = shell.clamp(max=num_shells)
    counts = torch.zeros(num_shells + 1).index_add_(0, shell.flatten(), weight.flatten())[:num_shells]
    return shell.flatten().to(device), weight.flatten().to(device), counts.to(device), num_shells


def radial_power_spectrum(x_BCHW):
    """(B, C, S) radially averaged power spectrum, S = min(H, W) // 2 + 1 shells.

    Orthonormal FFT, so the power sums to the field's sum of squares.
    """
    B, C, H, W = x_BCHW.shape
    shell, weight, counts, S = _shells(H, W, str(x_BCHW.device))
    power = torch.fft.rfft2(x_BCHW.float(), norm="ortho").abs().square().flatten(2)  # (B, C, H * (W//2+1))
    sums = power.new_zeros(B, C, S + 1).index_add_(2, shell, power * weight)[..., :S]
    return sums / counts


def spectral_loss(recon, x, eps=1e-4):
    """Mean squared difference of the log radial power spectra, per sample and channel.

    `eps` is relative: the floor added inside the log is `eps` times the
    target's mean shell power (per sample and channel). An absolute floor
    lets shells with vanishing power, which the target does not care about,
    produce gradients of size 1 / power that swamp the rest of the training.
    """
    spec_x = radial_power_spectrum(x)
    floor = eps * spec_x.mean(-1, keepdim=True)  # (B, C, 1)
    return F.mse_loss(torch.log(radial_power_spectrum(recon) + floor), torch.log(spec_x + floor))


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
