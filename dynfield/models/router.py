"""Grain selection: which level each region of the coarsest grid is coded at.

Routers, by name:
- ``learned``: a gate on the encoder features (the dynamic grained coding
  module). Training draws one level per region by hard Gumbel-softmax with a
  straight-through gradient; inference takes the argmax, or an exact budget.
- ``random``: uniformly random regions, from a seeded generator.
- ``enstrophy``: a physics prior without parameters, regions ranked by the
  gradient energy of the input field (or its squared vorticity).
- ``fixed``: every region at one given level.
- ``rd``: at encode time only, regions ranked by how much their error
  measurably falls with the finer grain (``allocation.rd_region_scores``);
  ``allocation.rd_allocate`` also chooses depths, for a bit budget or a PSNR.

Exact budget (every router but ``fixed``): the R regions of a sample are
ranked by a score, the top round(r_0 * R) get level 0 (the finest), the
next ones level 1, and so on; counts are rounded (halves up) on the
cumulative ratios so they add up to R. Every sample then has the same token
count. Scores: the learned router's expected fineness under its gate
probabilities (for K = 2 an increasing function of logit_fine -
logit_coarse), uniform noise, or the enstrophy score. A scalar
``fine_ratio`` r sets the fraction of regions finer than the coarsest: for
K = 2 the ratios are (r, 1 - r); for K > 2 r is split between the finer
levels in proportion to the target ratios.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import forward_differences

ROUTERS = ("learned", "random", "enstrophy", "fixed", "rd")


class Router(nn.Module):
    """Learned gate: per-level features -> (B, K, Hc, Wc) grain logits.

    Each level's features are layer-normalised over channels (the levels come
    out of different depths with different scales), the finer ones are
    average-pooled to the coarsest grid, and a per-location MLP maps their
    concatenation to one logit per level.
    """

    def __init__(self, factors, code_dim, hidden=None):
        super().__init__()
        hidden = hidden or code_dim
        self.pool = [factors[-1] // f for f in factors]
        self.norms = nn.ModuleList(nn.LayerNorm(code_dim) for _ in factors)
        K = len(factors)
        self.mlp = nn.Sequential(nn.Conv2d(K * code_dim, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, K, 1))

    def forward(self, feats):
        pooled = []
        for h, norm, p in zip(feats, self.norms, self.pool):
            h = norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            pooled.append(F.avg_pool2d(h, p) if p > 1 else h)
        return self.mlp(torch.cat(pooled, dim=1))


def gumbel_gate(logits_BKHW, temperature):
    """Hard Gumbel-softmax over levels: forward one-hot, gradient of the soft sample."""
    return F.gumbel_softmax(logits_BKHW, tau=temperature, hard=True, dim=1)


def gumbel_temperature(step, start=1.0, end=0.1, steps=10000):
    """Exponential anneal of the Gumbel temperature from `start` to `end` over `steps`, then flat."""
    t = min(max(step, 0) / max(steps, 1), 1.0)
    return start * (end / start) ** t


def budget_ratios(fine_ratio, target_ratios):
    """Per-level region fractions for a scalar fraction of regions finer than the coarsest."""
    if not 0.0 <= fine_ratio <= 1.0:
        raise ValueError(f"fine_ratio must lie in [0, 1], got {fine_ratio}")
    finer = torch.as_tensor(target_ratios[:-1], dtype=torch.float64)
    share = finer / finer.sum() if finer.sum() > 0 else torch.full_like(finer, 1.0 / len(finer))
    return tuple((share * fine_ratio).tolist()) + (1.0 - fine_ratio,)


def level_counts(num_regions, ratios):
    """Regions per level for the given fractions; rounded on cumulative sums so they add up exactly."""
    cum = [math.floor(c * num_regions + 0.5) for c in torch.as_tensor(ratios, dtype=torch.float64).cumsum(0).tolist()]
    cum[-1] = num_regions
    return [b - a for a, b in zip([0] + cum[:-1], cum)]


def rank_assign(score_BHW, ratios):
    """(B, Hc, Wc) grain: per sample, the highest scores get the finest levels in `ratios` proportions.

    Ties are broken by region order (stable sort), so the result is deterministic.
    """
    B, Hc, Wc = score_BHW.shape
    counts = torch.tensor(level_counts(Hc * Wc, ratios), device=score_BHW.device)
    level_of_rank = torch.repeat_interleave(torch.arange(len(counts), device=score_BHW.device), counts)  # (R,)
    order = score_BHW.flatten(1).argsort(dim=1, descending=True, stable=True)  # (B, R)
    grain = torch.empty_like(order).scatter_(1, order, level_of_rank.expand(B, -1))
    return grain.view(B, Hc, Wc)


def fineness_log_odds(logits_BKHW):
    """(B, Hc, Wc): ``log(E / (K - 1 - E))``, E the expected number of levels finer than the coarsest.

    The exact budget ranks the learned router's regions by this, an
    increasing function of E computed in log space so that it does not
    saturate (E itself rounds to K - 1 once a logit gap passes ~17, and the
    regions would then tie). With two levels it is the fine logit minus the
    coarse logit.
    """
    K = logits_BKHW.shape[1]
    logp = logits_BKHW.double().log_softmax(1)
    # level k is K - 1 - k levels finer than the coarsest; E = sum_k p_k (K-1-k) and K-1-E = sum_k p_k k
    finer = torch.arange(K - 1, -1, -1, dtype=logp.dtype, device=logp.device)[:, None, None]
    return torch.logsumexp(logp + finer.log(), 1) - torch.logsumexp(logp + (K - 1 - finer).log(), 1)


def enstrophy_score(x_BCHW, factor, periodic=True, vorticity_channel=None):
    """(B, H / factor, W / factor): mean over each region of |grad x|^2 summed over channels.

    With `vorticity_channel`, the mean of that channel squared instead (the
    local enstrophy, up to a factor 1/2).
    """
    if vorticity_channel is not None:
        energy = x_BCHW[:, vorticity_channel].square()
    else:
        dx, dy = forward_differences(x_BCHW, periodic)
        energy = (dx.square() + dy.square()).sum(1)
    return F.avg_pool2d(energy[:, None], factor)[:, 0]


def random_score(shape, generator, device):
    """Uniform random scores of the given shape, drawn on the CPU so a seed means the same on any device."""
    return torch.rand(shape, generator=generator).to(device)


def budget_loss(gate_BKHW, target_ratios, mode="batch"):
    """Squared deviation of the fraction of regions at each level from `target_ratios`.

    mode "batch" constrains the batch mean (as the reference implementation),
    "sample" every sample, averaged. Pass the straight-through gate: its value
    is the hard fraction and its gradient that of the soft probabilities.
    """
    target = torch.as_tensor(target_ratios, dtype=gate_BKHW.dtype, device=gate_BKHW.device)
    frac_BK = gate_BKHW.mean(dim=(2, 3))
    if mode == "batch":
        return (frac_BK.mean(0) - target).square().sum()
    if mode == "sample":
        return (frac_BK - target).square().sum(1).mean()
    raise ValueError(f"budget_mode must be 'batch' or 'sample', got {mode!r}")


def check_ratios(ratios, num_levels):
    """Return `ratios` as a tuple of floats after checking there is one per level and they sum to 1."""
    ratios = tuple(float(r) for r in ratios)
    if len(ratios) != num_levels or min(ratios) < 0 or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(f"target_ratios must be {num_levels} non-negative fractions summing to 1, got {ratios}")
    return ratios
