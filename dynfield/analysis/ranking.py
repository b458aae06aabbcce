"""How well a router's scores and grains follow an indicator: ROC-AUC, precision and recall, fine/coarse ratios."""

import math

import numpy as np

from .flow import REGION_TYPES

QUANTILES = (0.1, 0.2, 0.5)


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


def value_key(value):
    return f"{value:g}"


def middle(values):
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
        auc = {name: {value_key(q): _nanmean(roc_auc(score, top[name, q])) for q in quantiles} for name in flat}
        budgets = {}
        for budget, grain in grains[router].items():
            fine = grain.reshape(len(grain), -1) < num_levels - 1
            pr = {(name, q): precision_recall(fine, top[name, q]) for name in flat for q in quantiles}
            budgets[value_key(budget)] = {
                "fine_fraction": float(fine.mean()),
                "fine_coarse_ratio": {name: fine_coarse_ratio(r, fine) for name, r in flat.items()},
                "precision": {name: {value_key(q): pr[name, q][0] for q in quantiles} for name in flat},
                "recall": {name: {value_key(q): pr[name, q][1] for q in quantiles} for name in flat},
            }
        out[router] = {"auc": auc, "budgets": budgets}
    return out
