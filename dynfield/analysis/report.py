"""Plain-text tables and figures of a grain analysis."""

import numpy as np

from .ranking import mean_roc, middle, top_fraction, value_key
from .flow import REGION_TYPES


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
    q = middle(summary["quantiles"]) if q is None else q
    qk = value_key(q)
    budgets = [value_key(b) for b in summary["budgets"]]
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
    budget = middle(analysis.grains[routers[0]]) if budget is None else budget
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
    budget = middle(analysis.grains[routers[0]]) if budget is None else budget
    q = middle(analysis.summary["quantiles"])
    values = analysis.regions[indicator].ravel()
    fig, axes = _figure(len(routers))
    for ax, router in zip(axes, routers):
        score = analysis.scores[router].ravel()
        fine = analysis.grains[router][budget].ravel() < len(analysis.factors) - 1
        ax.scatter(values[~fine], score[~fine], s=5, alpha=0.4, color="tab:blue", label="coarse")
        ax.scatter(values[fine], score[fine], s=5, alpha=0.4, color="tab:red", label="fine")
        if (values > 0).all():
            ax.set_xscale("log")
        auc = analysis.summary["routers"][router]["auc"][indicator][value_key(q)]
        ax.set(xlabel=f"region mean {indicator}", ylabel="router score",
               title=f"{router}: AUC {_fmt(auc, '.2f')} (top {q:.0%})")
    axes[0].legend(title=f"budget {budget:g}", markerscale=3)
    return fig


def figure_roc(analysis, q=None):
    """Mean ROC curves (over fields) of each router's score for the top ``q`` of each indicator."""
    q = middle(analysis.summary["quantiles"]) if q is None else q
    fig, axes = _figure(len(analysis.regions), width=3.4, height=3.8)
    for ax, (name, values) in zip(axes, analysis.regions.items()):
        label = top_fraction(values.reshape(len(values), -1), q)
        for router, score in analysis.scores.items():
            fpr, tpr = mean_roc(score.reshape(len(score), -1), label)
            auc = analysis.summary["routers"][router]["auc"][name][value_key(q)]
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
    budgets = [value_key(b) for b in summary["budgets"]]
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
