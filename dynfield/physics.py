"""Diagnostics of 2D (and 3D) flow fields: derivatives, vortex identification,
energy-like densities, spectra and the simple error metrics shared by training
and the benchmarks.

Conventions
-----------
- Fields have shape (..., H, W): y is axis -2, x is axis -1; any leading batch
  dimensions are kept. 3D fields (``q_criterion``) are (..., Z, Y, X).
- Every function takes torch tensors or numpy arrays. The work is done in torch;
  numpy in gives numpy out, anything with a tensor in gives tensors out.
- Grid spacings ``dx``, ``dy`` (``dz``) default to a periodic box of side 2*pi:
  ``2*pi / W`` and ``2*pi / H``.
- ``periodic=True`` differentiates spectrally (exact for band-limited fields);
  ``periodic=False`` uses second-order central differences with second-order
  one-sided differences at the two boundaries.
- Spectra are summed over integer shells ``k = round(|k| / k0)``, with ``k0``
  the fundamental wavenumber ``2*pi / L`` of the longer side of the domain, and
  are normalised so that they add up to the mean square (Parseval):
  ``sum_k P(k) = mean(f**2)``. All shells are kept, including the corner shells
  beyond the Nyquist wavenumber ``min(H, W) // 2``, which are only partly filled.
"""

import functools
import math

import numpy as np
import torch

__all__ = [
    "derivative",
    "gradient",
    "vorticity",
    "divergence",
    "okubo_weiss",
    "vortex_mask",
    "q_criterion",
    "enstrophy",
    "palinstrophy",
    "kinetic_energy",
    "power_spectrum",
    "energy_spectrum",
    "spectral_slope",
    "spectrum_error",
    "spectrum_match_wavenumber",
    "vorticity_pdf",
    "wasserstein1",
    "psnr",
    "relative_l2",
]


# ---------------------------------------------------------------------------
# numpy / torch boundary


def _to_tensor(a):
    # Integer or boolean fields would break the FFTs and the divisions: make them
    # float64 as numpy would, or torch's default float.
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a if np.issubdtype(a.dtype, np.inexact) else a.astype(np.float64)))
    if isinstance(a, torch.Tensor) and not (a.is_floating_point() or a.is_complex()):
        a = a.to(torch.get_default_dtype())
    return a


def _to_numpy(out):
    if isinstance(out, tuple):
        return tuple(_to_numpy(o) for o in out)
    return out.detach().cpu().numpy()


def _numpy_in_out(fn):
    """Let ``fn``, written for tensors, take numpy arrays and give numpy back for them."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        inputs = (*args, *kwargs.values())
        numpy_out = any(isinstance(a, np.ndarray) for a in inputs) and not any(
            isinstance(a, torch.Tensor) for a in inputs
        )
        out = fn(*(_to_tensor(a) for a in args), **{k: _to_tensor(v) for k, v in kwargs.items()})
        return _to_numpy(out) if numpy_out else out

    return wrapper


def _check_fields(*fields, ndim=2):
    shape = fields[0].shape
    if any(f.shape != shape for f in fields):
        raise ValueError(f"fields must have the same shape, got {[tuple(f.shape) for f in fields]}")
    if len(shape) < ndim:
        raise ValueError(f"expected fields with at least {ndim} spatial dims, got shape {tuple(shape)}")


# ---------------------------------------------------------------------------
# Derivatives


@_numpy_in_out
def derivative(f, axis, dx=None, periodic=True):
    """Derivative of ``f`` along ``axis``.

    Parameters
    ----------
    f : tensor or array, (..., n, ...)
    axis : int
        Axis to differentiate along (-1 for x, -2 for y, -3 for z).
    dx : float, optional
        Grid spacing along ``axis``; default ``2*pi / n``.
    periodic : bool
        Spectral derivative of a periodic field if True, else second-order
        finite differences (one-sided at the boundaries, needs n >= 3).
    """
    n = f.shape[axis]
    dx = 2 * math.pi / n if dx is None else dx
    if not periodic:
        if n < 3:
            raise ValueError(f"finite differences need at least 3 points along axis {axis}, got {n}")
        return torch.gradient(f, spacing=dx, dim=axis, edge_order=2)[0]
    k = 2 * math.pi * torch.fft.rfftfreq(n, d=dx, dtype=f.dtype, device=f.device)
    k = k.reshape((-1,) + (1,) * (f.ndim - 1 - (axis % f.ndim)))  # broadcast along `axis`
    # For even n the Nyquist mode's derivative is imaginary, which no real field
    # holds; irfft drops that imaginary part, so the mode differentiates to zero.
    return torch.fft.irfft(1j * k * torch.fft.rfft(f, dim=axis), n=n, dim=axis)


@_numpy_in_out
def gradient(f, dx=None, dy=None, periodic=True):
    """Gradient of a 2D field (..., H, W), returned as ``(df/dy, df/dx)``."""
    _check_fields(f)
    return derivative(f, -2, dy, periodic), derivative(f, -1, dx, periodic)


def _velocity_gradients(u, v, dx, dy, periodic):
    _check_fields(u, v)
    du_dy, du_dx = gradient(u, dx, dy, periodic)
    dv_dy, dv_dx = gradient(v, dx, dy, periodic)
    return du_dx, du_dy, dv_dx, dv_dy


@_numpy_in_out
def vorticity(u, v, dx=None, dy=None, periodic=True):
    """Vertical vorticity ``dv/dx - du/dy`` of a 2D velocity (u along x, v along y)."""
    _, du_dy, dv_dx, _ = _velocity_gradients(u, v, dx, dy, periodic)
    return dv_dx - du_dy


@_numpy_in_out
def divergence(u, v, dx=None, dy=None, periodic=True):
    """Divergence ``du/dx + dv/dy`` of a 2D velocity."""
    du_dx, _, _, dv_dy = _velocity_gradients(u, v, dx, dy, periodic)
    return du_dx + dv_dy


@_numpy_in_out
def okubo_weiss(u, v, dx=None, dy=None, periodic=True):
    """Okubo-Weiss parameter ``W = s_n**2 + s_s**2 - omega**2``.

    ``s_n = du/dx - dv/dy`` (normal strain), ``s_s = dv/dx + du/dy`` (shear
    strain), ``omega`` the vorticity. W < 0 where rotation beats strain
    (vortex cores), W > 0 in strain-dominated regions.
    """
    du_dx, du_dy, dv_dx, dv_dy = _velocity_gradients(u, v, dx, dy, periodic)
    return (du_dx - dv_dy) ** 2 + (dv_dx + du_dy) ** 2 - (dv_dx - du_dy) ** 2


@_numpy_in_out
def vortex_mask(u, v, threshold=0.2, dx=None, dy=None, periodic=True):
    """Boolean mask of vortex regions, ``W < -threshold * std(W)``.

    W is the Okubo-Weiss parameter; its (population) standard deviation is taken
    over the spatial dims of each field, so every sample of a batch gets its own
    scale.
    """
    w = okubo_weiss(u, v, dx, dy, periodic)
    return w < -threshold * w.std(dim=(-2, -1), keepdim=True, correction=0)


@_numpy_in_out
def q_criterion(u, v, w, dx=None, dy=None, dz=None, periodic=True):
    """Q-criterion ``0.5 * (|Omega|**2 - |S|**2)`` of a 3D velocity (..., Z, Y, X).

    S and Omega are the symmetric and antisymmetric parts of the velocity
    gradient tensor A (Frobenius norms). Q > 0 where rotation dominates.
    """
    _check_fields(u, v, w, ndim=3)
    spacings = (dx, dy, dz)  # for axes -1, -2, -3
    A = [[derivative(c, -1 - j, spacings[j], periodic) for j in range(3)] for c in (u, v, w)]
    # |Omega|^2 - |S|^2 = -sum_ij A_ij A_ji, which needs no explicit S and Omega.
    return -0.5 * sum(A[i][j] * A[j][i] for i in range(3) for j in range(3))


# ---------------------------------------------------------------------------
# Densities


@_numpy_in_out
def enstrophy(omega):
    """Enstrophy density ``0.5 * omega**2``."""
    return 0.5 * omega**2


@_numpy_in_out
def palinstrophy(omega, dx=None, dy=None, periodic=True):
    """Palinstrophy density ``0.5 * |grad omega|**2``."""
    d_dy, d_dx = gradient(omega, dx, dy, periodic)
    return 0.5 * (d_dx**2 + d_dy**2)


@_numpy_in_out
def kinetic_energy(u, v):
    """Kinetic energy density ``0.5 * (u**2 + v**2)``."""
    return 0.5 * (u**2 + v**2)


# ---------------------------------------------------------------------------
# Spectra


def _shell_index(H, W, dx, dy, device):
    """Integer shell of every FFT mode of an (H, W) grid, (H*W,)."""
    dx = 2 * math.pi / W if dx is None else dx
    dy = 2 * math.pi / H if dy is None else dy
    L = max(W * dx, H * dy)
    # fftfreq(n, d) * L is |k| in units of the fundamental 2*pi/L.
    kx = torch.fft.fftfreq(W, d=dx, dtype=torch.float64, device=device) * L
    ky = torch.fft.fftfreq(H, d=dy, dtype=torch.float64, device=device) * L
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long().flatten()


@_numpy_in_out
def power_spectrum(f, dx=None, dy=None):
    """Radially summed power spectrum of a periodic scalar field.

    Parameters
    ----------
    f : tensor or array, (..., H, W)
    dx, dy : float, optional
        Grid spacings; they only matter for non-square domains.

    Returns
    -------
    k : (n_k,)
        Shell wavenumbers 0, 1, ..., n_k - 1 in units of the fundamental
        ``2*pi / L`` (L the longer side; with the default 2*pi box, k is the
        ordinary wavenumber).
    P : (..., n_k)
        Power summed over each shell ``round(|k|) = k``, normalised so that
        ``P.sum(-1) == mean(f**2)`` over the spatial dims (Parseval). P[0] is
        the squared mean.
    """
    _check_fields(f)
    H, W = f.shape[-2:]
    shell = _shell_index(H, W, dx, dy, f.device)
    n_k = int(shell.max()) + 1
    # Dividing by H*W in the forward transform makes sum |f_hat|^2 = mean f^2.
    power = torch.fft.fft2(f, norm="forward").abs() ** 2  # (..., H, W)
    power = power.flatten(-2)
    P = torch.zeros(*power.shape[:-1], n_k, dtype=power.dtype, device=f.device).index_add(-1, shell, power)
    return torch.arange(n_k, dtype=P.dtype, device=f.device), P


@_numpy_in_out
def energy_spectrum(u, v, dx=None, dy=None):
    """Isotropic kinetic energy spectrum of a periodic 2D velocity.

    Returns ``(k, E)`` with the shells of ``power_spectrum`` and
    ``E.sum(-1) == mean(0.5 * (u**2 + v**2))``.
    """
    _check_fields(u, v)
    k, P_u = power_spectrum(u, dx, dy)
    _, P_v = power_spectrum(v, dx, dy)
    return k, 0.5 * (P_u + P_v)


@_numpy_in_out
def spectral_slope(k, E, kmin=1.0, kmax=None):
    """Least-squares slope of ``ln E`` against ``ln k`` over ``kmin <= k <= kmax``.

    E may carry batch dims (..., n_k); the slope has shape (...). E must be
    positive on the fitted range.
    """
    kmax = float(k.max()) if kmax is None else kmax
    keep = (k >= kmin) & (k <= kmax) & (k > 0)
    if int(keep.sum()) < 2:
        raise ValueError(f"need at least 2 shells with 0 < {kmin} <= k <= {kmax} to fit a slope")
    x = torch.log(k[keep])
    y = torch.log(E[..., keep])
    x = x - x.mean()
    return (y * x).sum(-1) / (x**2).sum()


def _shell_range(E, kmin, kmax):
    n_k = E.shape[-1]
    kmax = n_k - 1 if kmax is None else min(int(kmax), n_k - 1)
    if not 0 <= kmin <= kmax:
        raise ValueError(f"empty shell range kmin={kmin}, kmax={kmax} for {n_k} shells")
    return slice(int(kmin), kmax + 1)


@_numpy_in_out
def spectrum_error(E_ref, E, kmin=1, kmax=None):
    """Mean absolute natural-log ratio ``mean |ln(E / E_ref)|`` over shells.

    Shells ``kmin..kmax`` (inclusive shell numbers as returned by the spectra;
    default: all from 1, pass ``min(H, W) // 2`` as kmax to leave out the corner
    shells) where the reference has energy. 0.1 means a typical factor of
    ``exp(0.1) = 1.105`` off. Batch dims (..., n_k) give an error of shape (...).
    """
    if E_ref.shape[-1] != E.shape[-1]:
        raise ValueError(f"spectra have different shell counts: {E_ref.shape[-1]} and {E.shape[-1]}")
    shells = _shell_range(E, kmin, kmax)
    E_ref, E = torch.broadcast_tensors(E_ref[..., shells], E[..., shells])
    resolved = E_ref > 0
    # Substitute 1 in unresolved shells so that neither the value nor its gradient is NaN.
    log_ratio = torch.log(torch.where(resolved, E, 1.0) / torch.where(resolved, E_ref, 1.0))
    return log_ratio.abs().sum(-1) / resolved.sum(-1)


@_numpy_in_out
def spectrum_match_wavenumber(k, E_ref, E, tol=0.1, kmin=1, kmax=None):
    """Largest shell k up to which the spectrum matches its reference.

    Returns the largest ``k <= kmax`` such that ``|E / E_ref - 1| <= tol`` on
    every shell from ``kmin`` to ``k`` (the "k10" figure for tol=0.1), or 0 when
    shell ``kmin`` already misses. Shells and kmin, kmax are as in
    ``spectrum_error``. Batch dims (..., n_k) give shape (...).
    """
    shells = _shell_range(E, kmin, kmax)
    ok = (E - E_ref).abs()[..., shells] <= tol * E_ref[..., shells]
    n_ok = ok.long().cumprod(-1).sum(-1)  # length of the leading run of matching shells
    matched = k[shells][(n_ok - 1).clamp(min=0)]
    return torch.where(n_ok > 0, matched, torch.zeros_like(matched))


# ---------------------------------------------------------------------------
# Distributions


@_numpy_in_out
def vorticity_pdf(omega, bins=100, range=None):
    """Histogram estimate of the probability density of all values of ``omega``.

    Parameters
    ----------
    omega : tensor or array, any shape (all values are pooled)
    bins : int
    range : (float, float), optional
        Histogram range; default (min, max) of ``omega``. Pass the same range to
        compare two fields. Values outside it are not counted.

    Returns
    -------
    centres : (bins,)
    density : (bins,), ``(density * bin_width).sum() == 1`` when nothing falls outside.
    """
    omega = omega.detach().flatten()
    lo, hi = (float(omega.min()), float(omega.max())) if range is None else map(float, range)
    counts = torch.histc(omega, bins=bins, min=lo, max=hi)
    width = (hi - lo) / bins
    edges = torch.linspace(lo, hi, bins + 1, dtype=omega.dtype, device=omega.device)
    return 0.5 * (edges[:-1] + edges[1:]), counts / (omega.numel() * width)


@_numpy_in_out
def wasserstein1(a, b):
    """1-D Wasserstein (earth mover's) distance between two samples.

    All values of ``a`` and ``b`` are pooled (the samples may differ in size).
    Computed exactly as the integral of ``|F_a - F_b|`` of the empirical CDFs.
    """
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.flatten().to(dtype).sort().values, b.flatten().to(dtype).sort().values
    t = torch.cat([a, b]).sort().values
    # Both CDFs are constant between consecutive pooled values.
    cdf_a = torch.searchsorted(a, t[:-1], right=True) / a.numel()
    cdf_b = torch.searchsorted(b, t[:-1], right=True) / b.numel()
    return ((cdf_a - cdf_b).abs() * t.diff()).sum()


# ---------------------------------------------------------------------------
# Reconstruction metrics (per field: reduced over the last two dims)


@_numpy_in_out
def psnr(ref, est, data_range=None):
    """Peak signal-to-noise ratio in dB of ``est`` against the reference ``ref``.

    Reduced over (H, W): (B, C, H, W) gives one value per sample and channel.
    ``data_range`` defaults to ``max - min`` of each reference field. Identical
    fields give inf.
    """
    if data_range is None:
        data_range = ref.amax(dim=(-2, -1)) - ref.amin(dim=(-2, -1))
    mse = ((est - ref) ** 2).mean(dim=(-2, -1))
    return 10 * torch.log10(data_range**2 / mse)


@_numpy_in_out
def relative_l2(ref, est):
    """Relative L2 error ``||est - ref|| / ||ref||`` over (H, W), per sample and channel."""
    return torch.linalg.vector_norm(est - ref, dim=(-2, -1)) / torch.linalg.vector_norm(ref, dim=(-2, -1))
