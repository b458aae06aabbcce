# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Where does the tokenizer spend its codes?
#
# The dynamic-grain tokenizer cuts every field into square regions (the coarsest grid) and codes
# each region either with one coarse code or with several fine ones. A router makes the choice:
# under an exact budget, the regions it scores highest get the fine grain. This notebook asks
# whether those are the regions a fluid dynamicist would single out (vortex cores, vorticity
# filaments, scalar fronts) and what the choice does to the reconstruction error in each kind of
# flow region.
#
# The learned router is compared at the same budgets with two references: the **random** router,
# which knows nothing (the floor), and the **enstrophy** router, which ranks regions by the squared
# vorticity (or gradient energy) of the input: a physics prior without any training.
#
# Everything here comes from `dynfield.analysis`; `python -m dynfield.analyze DATA --out DIR [--checkpoint C]`
# writes the same tables and figures without Jupyter.

# %% tags=["parameters"]
checkpoint = None  # tokenizer checkpoint; None: the tokenizer bundled with the package, if there is one
data = "builtin"  # "builtin" (held-out built-in turbulence) or a file that dynfield.data.open_fields reads
n_fields = 16  # snapshots analysed
resolution = 128  # grid of the built-in snapshots (use the training resolution)
seed = 2  # solver seed of the built-in snapshots: training uses 0 and validation 1
budgets = [0.25, 0.5, 0.75]  # fractions of the regions coded finer than the coarsest grain
sample = 0  # snapshot shown in the maps

# %%
# %matplotlib inline
from dynfield import analysis
from dynfield.checkpoint import load_model

path = analysis.resolve_checkpoint(checkpoint)
model, state = load_model(path)
x, variables, stats = analysis.load_fields(data, state, n_fields, resolution=resolution, seed=seed)
result = analysis.analyse(model, x, variables, stats, state["periodic"], budgets=budgets)
summary = result.summary
print(f"{path.name}: {len(x)} snapshots of {summary['field_shape'][0]} x {summary['field_shape'][1]}, "
      f"channels {variables}, grain factors {summary['factors']}, "
      f"{summary['regions_per_field']} regions per snapshot")
print(summary["note"])

# %% [markdown]
# ## The grain map on the vorticity
#
# One snapshot's vorticity, with the borders of the codes each router chooses at the middle budget.
# Every square of the coarse grid is one region; a region cut into smaller squares is coded at the
# fine grain (one code per small square), an uncut one by a single code. A router that has learned
# the flow puts the cut regions on the vortex cores and on the thin vorticity filaments wound up
# between them, and leaves the smooth background coarse. The random router's cuts ignore the flow.

# %%
analysis.figure_grain_maps(result, sample)

# %% [markdown]
# ## Rotation against strain: the Okubo-Weiss field
#
# $W = s_n^2 + s_s^2 - \omega^2$ weighs the strain (normal $s_n = u_x - v_y$ and shear
# $s_s = v_x + u_y$) against the rotation $\omega$. Where $W < 0$ rotation wins: the coherent vortex
# cores, which trap fluid and live long. Where $W > 0$ strain wins: the regions around and between
# the vortices that stretch vorticity and scalar into filaments, and where the small scales are made.
# Points with $|W| < 0.2\,\mathrm{std}(W)$ are background. This partition (right) splits the
# reconstruction error at the end of the notebook. There is no such figure for data without a
# velocity (or a periodic vorticity).

# %%
analysis.figure_okubo_weiss(result, sample)

# %% [markdown]
# ## Router score against enstrophy
#
# Each dot is one region of one snapshot: its mean enstrophy $\frac{1}{2}\omega^2$ against the score
# the router ranks it by (for the learned router the fine logit minus the coarse logit). Under the
# budget the highest-scoring regions are coded fine (red). The enstrophy router's score grows with
# the enstrophy by construction; the random router's does not depend on it at all. A learned router
# that has found the physics gives a rising cloud: the more enstrophy, the higher the score. A flat
# cloud means it refines something else (look at the other indicators below).

# %%
analysis.figure_scores(result)

# %% [markdown]
# ## ROC curves: does the ranking find the active regions?
#
# For each indicator, the regions in the top 20 % of their snapshot are the positives. Raising the
# budget from 0 to 1 refines more and more regions in the order of the router's score; the ROC
# curve follows the share of positives refined (true positive rate) against the share of the other
# regions refined too (false positive rate). Its area, the AUC, is the chance that a positive region
# outscores a negative one: 0.5 is the random router, 1 a perfect ranking.
#
# - *enstrophy* $\frac{1}{2}\omega^2$: strong rotation or shear, vortex cores;
# - *palinstrophy* $\frac{1}{2}|\nabla\omega|^2$: vorticity gradients, the filaments and vortex
#   edges where the enstrophy cascade works;
# - *vortex fraction*: the share of the region's area with $W < -0.2\,\mathrm{std}(W)$;
# - *kinetic energy*: large in the jets, not necessarily where the detail is (a useful contrast);
# - *scalar gradient*: the fronts of the passive scalar (when the data carry one).

# %%
analysis.figure_roc(result)

# %% [markdown]
# ## The alignment table
#
# AUC as above, for the top 10, 20 and 50 % of the regions. At each budget b: P and R are the
# precision and recall of the fine regions against the top regions (at a budget b larger than q,
# recall can reach 1 but precision at most q / b), and f/c is the indicator's mean over the fine
# regions divided by its mean over the coarse ones, how much more of it the fine codes cover
# (1: no preference).

# %%
for q in summary["quantiles"]:
    print(analysis.alignment_table(summary, q), end="\n\n")

# %% [markdown]
# ## Where the reconstruction error sits
#
# Mean squared reconstruction error (normalised units, averaged over the channels) over all points
# and over the vortex-dominated, strain-dominated and background points. Vortex cores usually carry
# the largest error: they hold the extreme values and steep gradients. At the same budget, a router
# that spends its fine codes well lowers the vortex and strain errors below the random router's,
# and as the budget grows the errors fall where the new fine codes land.

# %%
print(analysis.error_table(summary))
analysis.figure_errors(result)
