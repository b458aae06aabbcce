"""Where does a tokenizer spend its codes? Grain allocation against the physics of the flow.

Every region of the coarsest grid carries one grain decision. For each region
this module gathers the grain a router chose, the score the router ranked it
by, and statistics of the flow inside it: mean enstrophy and palinstrophy, the
fraction of its area that is vortex-dominated by the Okubo-Weiss criterion,
mean kinetic energy and scalar-gradient energy (the indicators "enstrophy",
"palinstrophy", "vortex_fraction", "kinetic_energy", "scalar_gradient"). It
then measures how well each router's ranking follows each indicator:

- ROC-AUC of the router score for "region in the top q of the indicator",
  per field and averaged over the fields;
- precision and recall of the fine regions under an exact budget b (a
  fraction b of the regions finer than the coarsest grain) against those
  top-q regions, counts pooled over the fields;
- the fine/coarse ratio: the indicator's mean over the fine regions divided
  by its mean over the coarse ones;

for the learned router, the rate-distortion router (rd: the regions where finer
codes measurably remove the most error) and, as references, the random and
enstrophy routers;
and it splits the reconstruction error between vortex-dominated,
strain-dominated and background points.

What the indicators come from depends on the channels (``FlowDiagnostics.basis``):
- "velocity": u and v (any names in ``VELOCITY_COMPONENTS``); the vorticity is
  the vorticity channel when there is one, else the curl of the velocity.
- "vorticity": a vorticity channel and no velocity. On a periodic domain the
  velocity is recovered through the stream function; otherwise what needs it
  (Okubo-Weiss, kinetic energy, the error split) is left out.
- "gradient_energy": neither (a scalar field only, say); the one indicator is
  the gradient energy of all channels.

Derivatives assume the 2*pi box of ``dynfield.physics``. Every result here is a
ranking, a ratio of means, or a threshold relative to a per-field standard
deviation, so none depends on the true grid spacing.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from dynfield import physics
from dynfield.conventions import AGNOSTIC_CHANNEL, VELOCITY_COMPONENTS, VORTICITY_NAMES, X, Y
from dynfield.data import FieldDataset, denormalise, ensure_dataset, open_fields
from dynfield.data.turbulence import HELD_OUT_SEED
from dynfield.paths import BUNDLED_TOKENIZER, default_data_dir

REGION_TYPES = ("vortex", "strain", "background")
ROUTERS = ("learned", "rd", "random", "enstrophy")
BUDGETS = (0.25, 0.5, 0.75)
QUANTILES = (0.1, 0.2, 0.5)
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


# --------------------------------------------------------------------------- alignment metrics


def _ratio(num, den):
    return float(num) / float(den) if den else math.nan


def _auc_row(score, label):
    n_pos = int(label.sum())
    n_neg = label.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, tied scores share their mean rank
    return (ranks[label].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_auc(score, label):
    """ROC-AUC of ``score`` for the binary ``label``: rows (..., R) give (...), a float for one row.

    The Mann-Whitney statistic: the probability that a random positive
    outscores a random negative, ties counting one half. NaN for a row
    without positives or without negatives.
    """
    score, label = np.broadcast_arrays(np.asarray(score, dtype=np.float64), np.asarray(label, dtype=bool))
    R = score.shape[-1]
    auc = np.array([_auc_row(s, l) for s, l in zip(score.reshape(-1, R), label.reshape(-1, R))])
    auc = auc.reshape(score.shape[:-1])
    return float(auc) if auc.ndim == 0 else auc


def roc_curve(score, label):
    """False and true positive rates ``(fpr, tpr)`` of one row, from (0, 0) to (1, 1).

    One point per distinct score, from the highest down; a group of tied
    scores is one diagonal step, so the trapezoidal area is ``roc_auc``.
    """
    score, label = np.asarray(score, dtype=np.float64), np.asarray(label, dtype=bool)
    if label.all() or not label.any():
        raise ValueError("a ROC curve needs both positives and negatives")
    order = np.argsort(-score, kind="stable")
    s, l = score[order], label[order]
    last = np.r_[s[1:] != s[:-1], True]  # last member of each group of tied scores
    tp, fp = np.cumsum(l)[last], np.cumsum(~l)[last]
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]]


def mean_roc(score_NR, label_NR, fpr=None):
    """``(fpr, tpr)``: the rows' ROC curves averaged vertically at the false-positive rates ``fpr``.

    Rows without positives or without negatives are left out; tpr is NaN if
    none is left.
    """
    fpr = np.linspace(0.0, 1.0, 101) if fpr is None else np.asarray(fpr)
    curves = []
    for s, l in zip(np.asarray(score_NR), np.asarray(label_NR, dtype=bool)):
        if l.all() or not l.any():
            continue
        f, t = roc_curve(s, l)
        top = np.r_[f[1:] != f[:-1], True]  # at a vertical step the curve reaches its highest tpr
        curves.append(np.interp(fpr, f[top], t[top]))
    return fpr, np.mean(curves, axis=0) if curves else np.full(fpr.shape, np.nan)


def top_fraction(values, q):
    """(..., R) bool: per row, the regions in the top fraction ``q`` of ``values``.

    round(q R) regions, less those tied with the best region left out: a tie
    at the cut is resolved against every tied region, never by their order.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    values = np.asarray(values, dtype=np.float64)
    k = math.floor(q * values.shape[-1] + 0.5)
    if k >= values.shape[-1]:
        return np.ones(values.shape, dtype=bool)
    cut = -np.sort(-values, axis=-1)[..., k : k + 1]  # the (k+1)-th largest of each row
    return values > cut


def precision_recall(selected, relevant):
    """``(precision, recall)`` of the selected regions against the relevant ones, counts pooled over all rows.

    NaN for a measure whose set is empty.
    """
    selected, relevant = np.asarray(selected, dtype=bool), np.asarray(relevant, dtype=bool)
    hits = (selected & relevant).sum()
    return _ratio(hits, selected.sum()), _ratio(hits, relevant.sum())


def fine_coarse_ratio(values, fine):
    """Mean of ``values`` over the fine regions divided by their mean over the coarse ones.

    NaN when either set is empty or the coarse mean is zero.
    """
    values, fine = np.asarray(values, dtype=np.float64), np.asarray(fine, dtype=bool)
    if fine.all() or not fine.any():
        return math.nan
    return _ratio(values[fine].mean(), values[~fine].mean())


def error_by_region(sq_error_BHW, region_type=None):
    """Mean of a pointwise squared error over all points and over each type of ``REGION_TYPES``.

    Returns ``{"all": ..., "vortex": ..., "strain": ..., "background": ...}``
    (only "all" without region types; NaN for a type with no point).
    """
    err = np.asarray(sq_error_BHW, dtype=np.float64)
    out = {"all": float(err.mean())}
    if region_type is not None:
        for k, name in enumerate(REGION_TYPES):
            mask = region_type == k
            out[name] = float(err[mask].mean()) if mask.any() else math.nan
    return out


def _key(value):
    return f"{value:g}"


def _middle(values):
    values = list(values)
    return values[len(values) // 2]


def _nanmean(values):
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def alignment(regions, scores, grains, num_levels, quantiles=QUANTILES):
    """Alignment of router scores and grains with the indicators.

    Parameters
    ----------
    regions : indicator name -> (N, Hc, Wc) region means.
    scores : router -> (N, Hc, Wc) router scores.
    grains : router -> budget -> (N, Hc, Wc) grain levels (0 = finest).
    num_levels : K; a region is fine at any level below K - 1.

    Returns
    -------
    dict : per router, ``auc[indicator][q]`` (mean over the fields that have
    regions in and out of the top q) and per budget ``fine_fraction``,
    ``fine_coarse_ratio[indicator]``, ``precision[indicator][q]``,
    ``recall[indicator][q]``; budgets and q as keys written ``f"{x:g}"``.
    """
    flat = {name: r.reshape(len(r), -1) for name, r in regions.items()}  # (N, R)
    top = {(name, q): top_fraction(r, q) for name, r in flat.items() for q in quantiles}
    out = {}
    for router, score in scores.items():
        score = score.reshape(len(score), -1)
        auc = {name: {_key(q): _nanmean(roc_auc(score, top[name, q])) for q in quantiles} for name in flat}
        budgets = {}
        for budget, grain in grains[router].items():
            fine = grain.reshape(len(grain), -1) < num_levels - 1
            pr = {(name, q): precision_recall(fine, top[name, q]) for name in flat for q in quantiles}
            budgets[_key(budget)] = {
                "fine_fraction": float(fine.mean()),
                "fine_coarse_ratio": {name: fine_coarse_ratio(r, fine) for name, r in flat.items()},
                "precision": {name: {_key(q): pr[name, q][0] for q in quantiles} for name in flat},
                "recall": {name: {_key(q): pr[name, q][1] for q in quantiles} for name in flat},
            }
        out[router] = {"auc": auc, "budgets": budgets}
    return out


# --------------------------------------------------------------------------- the whole analysis


def _finite_or_none(obj):
    """``obj`` with every non-finite float replaced by None, so that it is valid JSON."""
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass
class GrainAnalysis:
    """What ``analyse`` finds.

    summary : JSON-ready figures (NaN written as None), see ``analyse``.
    flow : pointwise diagnostics of the fields.
    regions : indicator name -> (N, Hc, Wc) region means.
    scores : router -> (N, Hc, Wc) router scores.
    grains : router -> budget -> (N, Hc, Wc) grain levels (0 = finest).
    factors : the model's grain factors; a region is ``factors[-1]`` cells wide.
    """

    summary: dict
    flow: FlowDiagnostics
    regions: dict
    scores: dict
    grains: dict
    factors: tuple

    @property
    def primary(self):
        """The indicator the figures lead with: the enstrophy when there is one."""
        return "enstrophy" if "enstrophy" in self.regions else next(iter(self.regions))


def analyse(model, x_BCHW, variables, stats, periodic=None, *, budgets=BUDGETS, quantiles=QUANTILES, routers=None,
            threshold=OW_THRESHOLD, batch_size=8, progress=False):
    """Where ``model`` puts its fine codes on the fields ``x_BCHW``, against the flow's physics.

    Parameters
    ----------
    model : DQVAE with at least two grain levels, in eval mode.
    x_BCHW : normalised fields (N, C, H, W), as the model takes them.
    variables, stats : channel names and normalisation statistics (the checkpoint's).
    periodic : the domain is periodic (derivatives); default: the model's setting.
    budgets : fine ratios of the exact budget (fraction of regions finer than the coarsest).
    quantiles : fractions q of "region in the top q of an indicator".
    routers : default: ``ROUTERS``, without "learned" for a model that has no learned router.
    threshold : Okubo-Weiss threshold, see ``region_types``.
    batch_size : fields encoded at once. The random router draws from its seed
        afresh for every batch (as in ``model.encode``).
    progress : show a progress bar.

    Returns
    -------
    GrainAnalysis. Its summary holds ``basis`` and ``note`` (what the
    indicators come from), ``indicators``, the sizes, ``area_fraction`` of
    each region type, and ``routers``: the ``alignment`` dictionary, with per
    budget also ``mse``, the mean squared reconstruction error in normalised
    units (channels averaged) over all points and per region type.
    """
    if model.num_levels < 2:
        raise ValueError(f"grain allocation needs a dynamic-grain model; this one has a single level "
                         f"(factors {model.factors})")
    periodic = model.periodic if periodic is None else periodic
    routers = tuple(routers or (r for r in ROUTERS if r != "learned" or model.router is not None))
    x_BCHW = torch.as_tensor(x_BCHW)
    param = next(model.parameters())
    flow = flow_diagnostics(denormalise(x_BCHW, stats, variables), variables, periodic, threshold)
    regions = {name: region_means(d, model.factors[-1]) for name, d in flow.densities.items()}

    scores = {r: [] for r in routers}
    grains = {r: {b: [] for b in budgets} for r in routers}
    sq_error = {r: {b: [] for b in budgets} for r in routers}
    starts = range(0, len(x_BCHW), batch_size)
    for start in tqdm(starts, desc="grain analysis", disable=not progress):
        x = x_BCHW[start : start + batch_size].to(device=param.device, dtype=param.dtype)
        for r in routers:
            scores[r].append(model.region_scores(x, r).cpu().numpy())
            for b in budgets:
                tokens = model.encode(x, fine_ratio=b, router=r)
                grains[r][b].append(tokens.grain.cpu().numpy())
                sq_error[r][b].append((model.decode(tokens) - x).square().mean(1).cpu().numpy())
    scores = {r: np.concatenate(s) for r, s in scores.items()}
    grains = {r: {b: np.concatenate(g) for b, g in by_budget.items()} for r, by_budget in grains.items()}

    summary = {
        "basis": flow.basis,
        "note": flow.note,
        "indicators": list(regions),
        "n_fields": len(x_BCHW),
        "field_shape": list(x_BCHW.shape[-2:]),
        "factors": list(model.factors),
        "regions_per_field": int(scores[routers[0]][0].size),
        "okubo_weiss_threshold": threshold if flow.region_type is not None else None,
        "area_fraction": None if flow.region_type is None else
        {name: float((flow.region_type == k).mean()) for k, name in enumerate(REGION_TYPES)},
        "budgets": list(budgets),
        "quantiles": list(quantiles),
        "routers": alignment(regions, scores, grains, model.num_levels, quantiles),
    }
    for r in routers:
        for b in budgets:
            mse = error_by_region(np.concatenate(sq_error[r][b]), flow.region_type)
            summary["routers"][r]["budgets"][_key(b)]["mse"] = mse
    return GrainAnalysis(_finite_or_none(summary), flow, regions, scores, grains, tuple(model.factors))


# --------------------------------------------------------------------------- inputs


def resolve_checkpoint(path=None):
    """``path``, or without one the tokenizer bundled with the package; a clear error when there is neither."""
    if path is not None:
        return Path(path)
    if BUNDLED_TOKENIZER.is_file():
        return BUNDLED_TOKENIZER
    raise FileNotFoundError(
        "no checkpoint given and no bundled tokenizer (dynfield/pretrained/tokenizer.pt) in this installation; "
        "nothing is trained on the fly: train one with `python -m dynfield.train dataset=turbulence` and pass "
        "the path of its tokenizer.pt")


def load_fields(source, state, n, *, variables=None, resolution=128, seed=HELD_OUT_SEED):
    """The first ``n`` fields of ``source``, normalised for a checkpoint.

    Parameters
    ----------
    source : "builtin" for held-out built-in turbulence (solver seed ``seed``,
        ``resolution`` points a side, generated once and cached), or any path
        ``open_fields`` accepts (fewer than ``n`` fields if it holds fewer).
    state : the checkpoint dictionary (its variables and stats).
    variables : the names of the checkpoint's channels in ``source``, in the
        same order, when the file calls them otherwise. A channel-agnostic
        checkpoint (one channel for any field) reads the one variable named
        here, by default the vorticity, each field normalised on its own.

    Returns
    -------
    (x_BCHW, names, stats) : the normalised fields, the names of their
    channels and the statistics that de-normalise them (the checkpoint's).
    """
    names = list(state["variables"])
    agnostic = names == [AGNOSTIC_CHANNEL]
    in_file = (["vorticity"] if agnostic else names) if variables is None else list(variables)
    if len(in_file) != len(names):
        raise ValueError(f"{len(in_file)} variable names {in_file} given for the checkpoint's "
                         f"{len(names)} channels {names}")
    if str(source) == "builtin":
        source = ensure_dataset(default_data_dir() / "turbulence", n_samples=n, seed=seed, resolution=resolution)
    ds = open_fields(source, in_file)
    if agnostic:
        names, stats = in_file, {in_file[0]: state["stats"][AGNOSTIC_CHANNEL]}
    else:
        ds = xr.Dataset({name: ds[v] for v, name in zip(in_file, names)})  # the checkpoint's names (a swap is fine)
        stats = state["stats"]
    # periodic=False: FieldDataset would roll periodic fields at random (an augmentation); these stay as they are
    fields = FieldDataset(ds, names, stats=None if agnostic else stats, periodic=False, channel_agnostic=agnostic)
    return torch.stack([fields[i] for i in range(min(n, len(fields)))]), names, stats


# --------------------------------------------------------------------------- tables


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def _table(header, rows):
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    # text columns (the first two) to the left, numbers to the right
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in [header, *rows])


def alignment_table(summary, q=None):
    """Plain-text table of the alignment with the top ``q`` of the regions by each indicator.

    ``q`` defaults to the middle one of the summary's quantiles.
    """
    q = _middle(summary["quantiles"]) if q is None else q
    qk = _key(q)
    budgets = [_key(b) for b in summary["budgets"]]
    header = ["indicator", "router", "AUC"] + [f"{m}@{b}" for b in budgets for m in ("P", "R", "f/c")]
    rows = []
    for name in summary["indicators"]:
        for router, res in summary["routers"].items():
            row = [name, router, _fmt(res["auc"][name][qk])]
            for b in budgets:
                at = res["budgets"][b]
                row += [_fmt(at["precision"][name][qk]), _fmt(at["recall"][name][qk]),
                        _fmt(at["fine_coarse_ratio"][name], ".2f")]
            rows.append(row)
    legend = (f"regions in the top {q:.0%} of each field by each indicator. AUC: of the router score; "
              "P, R @b: precision and recall of the fine regions at budget b; f/c @b: indicator mean over "
              "the fine regions / over the coarse ones")
    return legend + "\n" + _table(header, rows)


def error_table(summary):
    """Plain-text table of the mean squared reconstruction error (normalised units) by region type."""
    kinds = ["all"] + ([] if summary["area_fraction"] is None else list(REGION_TYPES))
    rows = [[router, f"b={b}"] + [_fmt(at["mse"][k], ".4g") for k in kinds]
            for router, res in summary["routers"].items() for b, at in res["budgets"].items()]
    return _table(["router", "budget"] + kinds, rows)


# --------------------------------------------------------------------------- figures


def _figure(ncols, width=4.0, height=3.6):
    from matplotlib.figure import Figure  # no pyplot: no global state, works under any backend

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def draw_grain_borders(ax, grain, factors, **line_kw):
    """Draw the code borders of one grain map (Hc, Wc) over an image drawn in cell units, origin lower.

    The coarsest grid everywhere; a region at a finer level k is also cut
    into its ``factors[k]``-wide cells.
    """
    from matplotlib.collections import LineCollection

    f_K = factors[-1]
    Hc, Wc = grain.shape
    segments = [[(0, y), (Wc * f_K, y)] for y in range(0, Hc * f_K + 1, f_K)]
    segments += [[(x, 0), (x, Hc * f_K)] for x in range(0, Wc * f_K + 1, f_K)]
    for (i, j), k in np.ndenumerate(grain):
        y0, x0 = i * f_K, j * f_K
        for t in range(factors[k], f_K, factors[k]):
            segments += [[(x0, y0 + t), (x0 + f_K, y0 + t)], [(x0 + t, y0), (x0 + t, y0 + f_K)]]
    ax.add_collection(LineCollection(segments, **{"colors": "k", "linewidths": 0.5, **line_kw}))


def _show(ax, image, **kw):
    H, W = image.shape
    im = ax.imshow(image, origin="lower", extent=(0, W, 0, H), interpolation="nearest", **kw)
    ax.set(xlim=(0, W), ylim=(0, H), xticks=[], yticks=[])
    return im


def figure_grain_maps(analysis, sample=0, budget=None):
    """Vorticity (or gradient energy) of one field with each router's code borders at one budget."""
    routers = list(analysis.grains)
    budget = _middle(analysis.grains[routers[0]]) if budget is None else budget
    flow = analysis.flow
    if flow.vorticity is not None:
        image, label = flow.vorticity[sample], "vorticity"
        vmax = np.abs(image).max()
        kw = dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    else:
        image, label = np.log10(flow.densities["gradient_energy"][sample] + 1e-12), "log10 gradient energy"
        kw = dict(cmap="viridis")
    fig, axes = _figure(len(routers))
    for ax, router in zip(axes, routers):
        im = _show(ax, image, **kw)
        draw_grain_borders(ax, analysis.grains[router][budget][sample], analysis.factors)
        ax.set_title(f"{router} router, budget {budget:g}")
    fig.colorbar(im, ax=list(axes), label=label, shrink=0.8)
    return fig


def figure_okubo_weiss(analysis, sample=0):
    """Okubo-Weiss field of one field and its vortex / strain / background types; None without one."""
    flow = analysis.flow
    if flow.okubo_weiss is None:
        return None
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    w = flow.okubo_weiss[sample]
    colours = ["tab:red", "tab:blue", "0.9"]
    fig, (ax_w, ax_t) = _figure(2, width=4.6)
    im = _show(ax_w, w / w.std(), cmap="PuOr_r", vmin=-3, vmax=3)
    fig.colorbar(im, ax=ax_w, label="W / std(W)", shrink=0.8)
    ax_w.set_title("Okubo-Weiss W (< 0: rotation wins)")
    kinds = flow.region_type[sample]
    _show(ax_t, kinds, cmap=ListedColormap(colours), vmin=-0.5, vmax=2.5)
    threshold = analysis.summary["okubo_weiss_threshold"]
    ax_t.set_title(f"|W| > {threshold:g} std(W)")
    ax_t.legend(handles=[Patch(color=c, label=f"{name} ({(kinds == k).mean():.0%})")
                         for k, (name, c) in enumerate(zip(REGION_TYPES, colours))],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def figure_scores(analysis, indicator=None, budget=None):
    """Router score against an indicator's region mean, one dot a region, fine ones highlighted."""
    indicator = indicator or analysis.primary
    routers = list(analysis.scores)
    budget = _middle(analysis.grains[routers[0]]) if budget is None else budget
    q = _middle(analysis.summary["quantiles"])
    values = analysis.regions[indicator].ravel()
    fig, axes = _figure(len(routers))
    for ax, router in zip(axes, routers):
        score = analysis.scores[router].ravel()
        fine = analysis.grains[router][budget].ravel() < len(analysis.factors) - 1
        ax.scatter(values[~fine], score[~fine], s=5, alpha=0.4, color="tab:blue", label="coarse")
        ax.scatter(values[fine], score[fine], s=5, alpha=0.4, color="tab:red", label="fine")
        if (values > 0).all():
            ax.set_xscale("log")
        auc = analysis.summary["routers"][router]["auc"][indicator][_key(q)]
        ax.set(xlabel=f"region mean {indicator}", ylabel="router score",
               title=f"{router}: AUC {_fmt(auc, '.2f')} (top {q:.0%})")
    axes[0].legend(title=f"budget {budget:g}", markerscale=3)
    return fig


def figure_roc(analysis, q=None):
    """Mean ROC curves (over fields) of each router's score for the top ``q`` of each indicator."""
    q = _middle(analysis.summary["quantiles"]) if q is None else q
    fig, axes = _figure(len(analysis.regions), width=3.4, height=3.8)
    for ax, (name, values) in zip(axes, analysis.regions.items()):
        label = top_fraction(values.reshape(len(values), -1), q)
        for router, score in analysis.scores.items():
            fpr, tpr = mean_roc(score.reshape(len(score), -1), label)
            auc = analysis.summary["routers"][router]["auc"][name][_key(q)]
            ax.plot(fpr, tpr, label=f"{router} ({_fmt(auc, '.2f')})")
        ax.plot([0, 1], [0, 1], ls=":", color="0.5")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"top {q:.0%} by {name}",
               aspect="equal")
        ax.legend(fontsize="small", title="router (AUC)", title_fontsize="small")
    return fig


def figure_errors(analysis):
    """Mean squared reconstruction error by region type, one panel per budget, one bar per router."""
    summary = analysis.summary
    kinds = ["all"] + ([] if summary["area_fraction"] is None else list(REGION_TYPES))
    routers = list(summary["routers"])
    budgets = [_key(b) for b in summary["budgets"]]
    fig, axes = _figure(len(budgets), width=3.8)
    width = 0.8 / len(routers)
    for ax, b in zip(axes, budgets):
        for i, router in enumerate(routers):
            mse = [summary["routers"][router]["budgets"][b]["mse"][k] for k in kinds]
            ax.bar(np.arange(len(kinds)) + (i - (len(routers) - 1) / 2) * width,
                   [np.nan if m is None else m for m in mse], width, label=router)
        ax.set_xticks(np.arange(len(kinds)), kinds)
        ax.set(title=f"budget {b}", ylabel="MSE (normalised units)")
    axes[0].legend(fontsize="small")
    return fig
