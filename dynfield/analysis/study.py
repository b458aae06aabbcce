"""The whole grain analysis of a tokenizer on a set of fields, and the fields it reads."""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from dynfield.conventions import AGNOSTIC_CHANNEL
from dynfield.data import FieldDataset, denormalise, ensure_dataset, open_fields
from dynfield.data.turbulence import HELD_OUT_SEED
from dynfield.paths import BUNDLED_TOKENIZER, default_data_dir

from .ranking import QUANTILES, alignment, error_by_region, value_key
from .flow import OW_THRESHOLD, REGION_TYPES, FlowDiagnostics, flow_diagnostics, region_means

ROUTERS = ("learned", "rd", "random", "enstrophy")
BUDGETS = (0.25, 0.5, 0.75)


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
            summary["routers"][r]["budgets"][value_key(b)]["mse"] = mse
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
