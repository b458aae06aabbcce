"""Pointwise diagnostics of a flow and their means over the regions of the coarsest grid."""

from dataclasses import dataclass

import numpy as np
import torch

from dynfield import physics
from dynfield.conventions import VELOCITY_COMPONENTS, VORTICITY_NAMES, X, Y

REGION_TYPES = ("vortex", "strain", "background")
OW_THRESHOLD = 0.2  # vortex-dominated where W < -0.2 std(W), strain-dominated where W > 0.2 std(W)


# --------------------------------------------------------------------------- flow diagnostics


def channel_roles(variables):
    """Which channels hold the velocity, the vorticity and the other fields.

    Returns
    -------
    dict : ``u``, ``v``, ``vorticity``: a channel index or None (u and v only
    as a pair); ``others``: indices of the channels that are neither a
    velocity component nor the vorticity.
    """
    names = [v.lower() for v in variables]

    def find(candidates):
        return next((i for i, n in enumerate(names) if n in candidates), None)

    u, v, vort = find(VELOCITY_COMPONENTS[X]), find(VELOCITY_COMPONENTS[Y]), find(VORTICITY_NAMES)
    if u is None or v is None:
        u = v = None
    velocity_names = set().union(*VELOCITY_COMPONENTS.values())
    others = [i for i, n in enumerate(names) if n not in velocity_names and i != vort]
    return {"u": u, "v": v, "vorticity": vort, "others": others}


def velocity_from_vorticity(omega):
    """Zero-mean velocity ``(u, v)`` of a periodic vorticity field (..., H, W) on the 2*pi box.

    Solves ``lap psi = -omega`` spectrally and takes ``u = dpsi/dy``,
    ``v = -dpsi/dx``. The curl of the result is omega less its mean (the mean
    flow, which the vorticity does not determine, is zero).
    """
    omega = np.asarray(omega, dtype=np.float64)
    H, W = omega.shape[-2:]
    k2 = np.fft.fftfreq(H, 1.0 / H)[:, None] ** 2 + np.fft.rfftfreq(W, 1.0 / W)[None, :] ** 2
    k2[0, 0] = 1.0  # the mean of psi is arbitrary: set to zero below
    psi_hat = np.fft.rfft2(omega) / k2
    psi_hat[..., 0, 0] = 0.0
    dpsi_dy, dpsi_dx = physics.gradient(np.fft.irfft2(psi_hat, s=(H, W)))
    return dpsi_dy, -dpsi_dx


def region_types(okubo_weiss, threshold=OW_THRESHOLD):
    """Index into ``REGION_TYPES`` of every point of Okubo-Weiss fields (..., H, W), int8.

    0 vortex-dominated (W < -threshold std(W)), 1 strain-dominated
    (W > threshold std(W)), 2 background; std over (H, W) of each field, as
    in ``physics.vortex_mask``.
    """
    w = np.asarray(okubo_weiss)
    sigma = w.std(axis=(-2, -1), keepdims=True)
    kinds = np.full(w.shape, 2, dtype=np.int8)
    kinds[w < -threshold * sigma] = 0
    kinds[w > threshold * sigma] = 1
    return kinds


def gradient_energy(fields_BCHW, periodic=True):
    """(B, H, W): ``0.5 * sum_c |grad f_c|^2``, each channel first divided by its std over the batch.

    The scaling lets channels in different units add up.
    """
    f = np.asarray(fields_BCHW, dtype=np.float64)
    scale = f.std(axis=(0, 2, 3), keepdims=True)
    return physics.palinstrophy(f / np.where(scale > 0, scale, 1.0), periodic=periodic).sum(1)


@dataclass
class FlowDiagnostics:
    """Pointwise diagnostics of a batch of fields: numpy arrays (B, H, W) in physical units.

    basis : "velocity", "vorticity" or "gradient_energy" (see the module docstring).
    note : what the indicators were computed from, in words.
    densities : indicator name -> pointwise density; its mean over a region is the indicator.
    vorticity, okubo_weiss : None where the channels do not give them.
    region_type : int8 index into ``REGION_TYPES`` per point; None without Okubo-Weiss.
    """

    basis: str
    note: str
    densities: dict
    vorticity: np.ndarray | None
    okubo_weiss: np.ndarray | None
    region_type: np.ndarray | None


def flow_diagnostics(fields_BCHW, variables, periodic=True, threshold=OW_THRESHOLD):
    """Vorticity, Okubo-Weiss, region types and the indicator densities of fields (B, C, H, W).

    Parameters
    ----------
    fields_BCHW : array or tensor in physical units, channels named by ``variables``.
    periodic : spectral derivatives if True, else finite differences.
    threshold : Okubo-Weiss threshold in units of std(W), see ``region_types``.
    """
    f = np.asarray(torch.as_tensor(fields_BCHW).detach().cpu(), dtype=np.float64)
    if f.ndim != 4 or f.shape[1] != len(variables):
        raise ValueError(f"expected fields (B, {len(variables)}, H, W) for channels {list(variables)}, "
                         f"got shape {f.shape}")
    roles = channel_roles(variables)
    u = v = omega = None
    if roles["u"] is not None:
        u, v = f[:, roles["u"]], f[:, roles["v"]]
    if roles["vorticity"] is not None:
        omega = f[:, roles["vorticity"]]
    elif u is not None:
        omega = physics.vorticity(u, v, periodic=periodic)

    if u is not None:
        basis = "velocity"
        note = "indicators from the velocity channels"
        if roles["vorticity"] is not None:
            note += " and the vorticity channel"
    elif omega is not None and periodic:
        basis = "vorticity"
        note = ("no velocity channels: the velocity is recovered from the vorticity through the stream function "
                "(without the mean flow)")
        u, v = velocity_from_vorticity(omega)
    elif omega is not None:
        basis = "vorticity"
        note = ("no velocity channels and a non-periodic domain: no Okubo-Weiss field, kinetic energy "
                "or error split by region type")
    else:
        basis = "gradient_energy"
        note = ("no velocity or vorticity channel: the indicator is the gradient energy of all channels "
                "(each scaled by its std); no Okubo-Weiss field or error split by region type")

    densities, okubo, kinds = {}, None, None
    if omega is not None:
        densities["enstrophy"] = physics.enstrophy(omega)
        densities["palinstrophy"] = physics.palinstrophy(omega, periodic=periodic)
    if u is not None:
        okubo = physics.okubo_weiss(u, v, periodic=periodic)
        kinds = region_types(okubo, threshold)
        densities["vortex_fraction"] = (kinds == 0).astype(np.float64)
        densities["kinetic_energy"] = physics.kinetic_energy(u, v)
    if omega is None:
        densities["gradient_energy"] = gradient_energy(f, periodic)
    elif roles["others"]:
        densities["scalar_gradient"] = gradient_energy(f[:, roles["others"]], periodic)
    return FlowDiagnostics(basis, note, densities, omega, okubo, kinds)


def region_means(density, factor):
    """(..., ceil(H / f), ceil(W / f)): mean of a density (..., H, W) over each region of f x f cells.

    A region that sticks out of the field (H or W not a multiple of f)
    averages the cells inside it only.
    """
    density = np.asarray(density, dtype=np.float64)
    H, W = density.shape[-2:]
    Hc, Wc = -(-H // factor), -(-W // factor)
    padded = np.zeros(density.shape[:-2] + (Hc * factor, Wc * factor))
    padded[..., :H, :W] = density
    inside = np.zeros((Hc * factor, Wc * factor))
    inside[:H, :W] = 1.0

    def block_sum(a):
        return a.reshape(*a.shape[:-2], Hc, factor, Wc, factor).sum(axis=(-3, -1))

    return block_sum(padded) / block_sum(inside)
