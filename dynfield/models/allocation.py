"""Rate-distortion-optimal allocation of grains and depths at encode time (the ``rd`` router).

The encoder has the field, so it can measure what each choice buys. For every
option o = (grain level k, depth d) the field is decoded with every region at
o, which gives each region's squared error e_r(o) and its cost
c(o) = (f_K / f_k)^2 d log2(codebook_size) bits (with nested levels, plus
the coarser levels' codes at full depth). Per region the options on
the lower convex hull of (c, e) form a ladder of upgrades, each with a slope
(error removed per bit); the allocation takes upgrades in order of falling
slope, the greedy solution of the Lagrangian problem min sum e + lambda c,
until the bit budget is spent (``bits_per_value``) or the field reaches a
target quality (``psnr``). An upgrade that does not fit the budget is passed
over and smaller ones after it are still taken, so what is left of the budget
is less than any upgrade still open.

Errors are measured with every region at one option, so a region's error
ignores how its neighbours' choices leak into it through the decoder; the
decoder is local and that leak is small next to the region's own code.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _options(model):
    """[(level, depth)] of every choice, and the (O,) code count each costs per region."""
    S = model.quantizer.num_stages
    options = [(k, d) for k in range(model.num_levels) for d in range(1, S + 1)]
    codes = np.array([model.region_codes(k, d) for k, d in options], dtype=np.float64)
    return options, codes


@torch.no_grad()
def option_errors(model, x_pad, feats, idx_levels):
    """(B, C, Hc, Wc, O) squared error summed over each region's cells, per channel, for every option."""
    options, _ = _options(model)
    f_K = model.factors[-1]
    B, _, Hc, Wc = feats[-1].shape
    errors = []
    for k, d in options:
        grain = torch.full((B, Hc, Wc), k, dtype=torch.long, device=x_pad.device)
        depth = torch.full_like(grain, d)
        recon = model.decode(model._tokens(grain, depth, idx_levels, x_pad.shape[-2:]))
        sq = (recon.float() - x_pad.float()).square()
        errors.append(F.avg_pool2d(sq, f_K) * f_K**2)
    return torch.stack(errors, -1)


def _hull(costs, errors_RO):
    """Per region the upgrades along the lower convex hull of (cost, error).

    Returns (region, from_option, to_option, slope) arrays over every upgrade.
    Every region's ladder starts at the cheapest option.
    """
    order = np.argsort(costs, kind="stable")
    regions, src, dst, slopes = [], [], [], []
    for r, e in enumerate(errors_RO):
        hull = [order[0]]
        for o in order[1:]:
            if e[o] >= e[hull[-1]] or costs[o] == costs[hull[-1]]:
                continue  # costs more for no less error
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # b lies on or above the chord from a to o: it is no corner of the hull
                if (e[a] - e[b]) * (costs[o] - costs[a]) <= (e[a] - e[o]) * (costs[b] - costs[a]):
                    hull.pop()
                else:
                    break
            hull.append(o)
        for a, b in zip(hull, hull[1:]):
            regions.append(r), src.append(a), dst.append(b)
            slopes.append((e[a] - e[b]) / (costs[b] - costs[a]))
    return np.array(regions, np.int64), np.array(src, np.int64), np.array(dst, np.int64), np.array(slopes)


def _greedy(costs, errors_RCO, weights_C, budget=None, target=None):
    """(R,) chosen option per region: upgrades by falling slope until `budget` bits or error `target` (C,).

    ``errors_RCO`` are per-channel errors; the slopes use their sum weighted by
    ``weights_C``. With a target the upgrades stop as soon as ``done(err_C)``
    holds for the field's per-channel total error.
    """
    weighted = (errors_RCO * weights_C[None, :, None]).sum(1)  # (R, O)
    regions, src, dst, slopes = _hull(costs, weighted)
    choice = np.full(len(weighted), np.argmin(costs), dtype=np.int64)
    total_C = errors_RCO[np.arange(len(choice)), :, choice].sum(0)
    if target is not None and target(total_C):
        return choice
    order = np.argsort(-slopes, kind="stable")
    for r, a, b in _upgrades(costs, choice, regions[order], src[order], dst[order], budget):
        total_C += errors_RCO[r, :, b] - errors_RCO[r, :, a]
        if target is not None and target(total_C):
            break
    return choice


def _upgrades(costs, choice, regions, src, dst, budget=None):
    """Take the upgrades (region, from, to) in the order given, updating `choice` (R,) in place, and yield each
    one taken: one whose region has moved on to another option is passed over (an earlier step of its ladder
    was), and so is one that does not fit what is left of `budget` bits (smaller ones after it are still taken)."""
    spent = costs[choice].sum()
    for r, a, b in zip(regions, src, dst):
        step = costs[b] - costs[a]
        if choice[r] != a or (budget is not None and spent + step > budget + 1e-9):
            continue
        choice[r], spent = b, spent + step
        yield r, a, b


def _range_weighted_errors(model, x_pad, feats=None):
    """(B, Hc, Wc, O) ``option_errors`` summed over channels, each weighted by its field's squared value range
    (as PSNR weighs it); `feats` are the model's features of x_pad when the caller has them."""
    feats = model.features(x_pad) if feats is None else feats
    errors = option_errors(model, x_pad, feats, model.stage_indices(feats))  # (B, C, Hc, Wc, O)
    span = x_pad.flatten(2).amax(2) - x_pad.flatten(2).amin(2)  # (B, C)
    return (errors / span.square().clamp(min=1e-30)[:, :, None, None, None]).sum(1)


@torch.no_grad()
def rd_region_scores(model, x_pad, feats=None):
    """(B, Hc, Wc): how much each region's error falls from the coarsest grain to the finest, at full depth.

    The score by which the ``rd`` router ranks regions for an exact fine
    ratio: the measured gain of going finer, each channel's squared error
    weighted by its field's squared value range (as PSNR weighs it).
    `feats` are the model's features of x_pad when the caller has them.
    """
    weighted = _range_weighted_errors(model, x_pad, feats)
    options, _ = _options(model)
    S = model.quantizer.num_stages
    coarse, fine = options.index((model.num_levels - 1, S)), options.index((0, S))
    return weighted[..., coarse] - weighted[..., fine]


def spread(errors):
    """Arithmetic over geometric mean of positive errors along the last axis: the headroom of allocation.

    When every region's error falls by the same factor per bit, an optimal
    allocation of a fixed number of bits divides the total squared error of a
    uniform one by this ratio (the high-rate result of classical bit
    allocation), so its relative L2 falls by at most ``1 - spread**-0.5``.
    Regions of equal error leave nothing to allocate (1.0).
    """
    e = np.maximum(np.asarray(errors, dtype=np.float64), 1e-300)
    return e.mean(-1) / np.exp(np.log(e).mean(-1))


@torch.no_grad()
def region_error_spread(model, x):
    """(O,) mean over fields x (B, C, H, W) of the ``spread`` of the regions' errors with every region at
    each option of ``_options`` (channels weighted by their squared value range, as PSNR and ``rd`` weigh them)."""
    weighted = _range_weighted_errors(model, model._pad(x)).double()
    return spread(weighted.flatten(1, 2).transpose(1, 2).cpu().numpy()).mean(0)


def side_bits(model, grid):
    """Bits of the grain and depth maps of a field with `grid` = (Hc, Wc) regions, at log2(K) + log2(S) a region."""
    return grid[0] * grid[1] * (math.log2(model.num_levels) + math.log2(model.quantizer.num_stages))


@torch.no_grad()
def rd_allocate(model, x, bits_per_value=None, psnr=None):
    """Tokens of fields x (B, C, H, W) with rate-distortion-optimal grains and depths.

    Parameters
    ----------
    model : DQVAE (any number of levels and stages) in eval mode.
    x : normalised fields.
    bits_per_value : the bit budget of each field, per value (C H W values),
        counting ``log2(codebook_size)`` per code and the grain and depth maps
        (``side_bits``); the allocation spends as much of it as it can and never
        more (at least one code per region is always spent).
    psnr : instead, the fewest bits for which the field's PSNR (by each
        channel's value range, averaged over channels) reaches `psnr` dB, or
        every code if it never does.
    """
    if (bits_per_value is None) == (psnr is None):
        raise ValueError("give exactly one of bits_per_value and psnr")
    if bits_per_value is not None and bits_per_value <= 0:
        raise ValueError(f"bits_per_value must be positive, got {bits_per_value}")
    (B, C, H, W), x_pad = x.shape, model._pad(x)
    feats = model.features(x_pad)
    idx_levels = model.stage_indices(feats)
    errors = option_errors(model, x_pad, feats, idx_levels).double().cpu().numpy()  # (B, C, Hc, Wc, O)
    Hc, Wc, O = errors.shape[2:]
    options, costs = _option_bits(model)
    valid = _field_regions(model, x_pad, (H, W))  # only the field's own cells count, not the padding
    x_np = x.double().cpu().numpy()
    choices = []
    for b in range(B):
        err_RCO = errors[b].transpose(1, 2, 0, 3).reshape(Hc * Wc, C, O)
        err_RCO = np.where(valid[:, None, None], err_RCO, 0.0)
        span = x_np[b].reshape(C, -1)
        range_sq = np.maximum((span.max(1) - span.min(1)) ** 2, 1e-30)  # PSNR's peak per channel
        if psnr is None:
            budget = bits_per_value * C * H * W - side_bits(model, (Hc, Wc))
            choices.append(_greedy(costs, err_RCO, 1.0 / range_sq, budget=budget))
        else:
            field_idx = [i[b : b + 1] for i in idx_levels]
            choices.append(_reach_psnr(model, x[b : b + 1], field_idx, costs, err_RCO, range_sq, psnr, options))
    return _choice_tokens(model, choices, options, idx_levels, (Hc, Wc), (H, W))


@torch.no_grad()
def random_allocate(model, x, bits_per_value, seed=0):
    """Tokens of fields x (B, C, H, W) that spend the same bit budget as ``rd_allocate`` without looking
    at the field: the allocation that rd must beat at equal bits.

    Every region climbs one ladder of options by rising cost (ties to the
    coarser grain): each in turn, in a random order, takes its next step
    while the budget allows, so the regions' depths differ by at most one
    step and which regions get the deeper one is chance. With one grain
    this is uniform depth, the deeper step spread at random to spend the
    budget exactly.
    """
    if bits_per_value <= 0:
        raise ValueError(f"bits_per_value must be positive, got {bits_per_value}")
    (B, C, H, W), x_pad = x.shape, model._pad(x)
    idx_levels = model.stage_indices(model.features(x_pad))
    grid = tuple(idx_levels[-1].shape[1:3])
    options, costs = _option_bits(model)
    ladder = sorted(range(len(options)), key=lambda o: (costs[o], -options[o][0]))
    ladder = [o for i, o in enumerate(ladder) if i == 0 or costs[o] > costs[ladder[i - 1]]]
    regions = np.flatnonzero(_field_regions(model, x_pad, (H, W)))
    budget = bits_per_value * C * H * W - side_bits(model, grid)
    rng = np.random.default_rng(seed)
    choices = []
    for _ in range(B):
        order = rng.permutation(regions)
        steps = [(order, np.full(len(order), a), np.full(len(order), b)) for a, b in zip(ladder, ladder[1:])]
        choice = np.full(grid[0] * grid[1], ladder[0], dtype=np.int64)
        for _ in _upgrades(costs, choice, *map(np.concatenate, zip(*steps)), budget):
            pass
        choices.append(choice)
    return _choice_tokens(model, choices, options, idx_levels, grid, (H, W))


def _option_bits(model):
    """[(level, depth)] of every option and the (O,) bits each costs a region."""
    options, codes = _options(model)
    return options, codes * math.log2(model.quantizer.codebook_size)


def _field_regions(model, x_pad, shape):
    """(Hc * Wc,) whether each coarsest region of the padded fields holds any of the field's own (H, W) cells."""
    H, W = shape
    inside = F.pad(torch.ones(1, 1, H, W), (0, x_pad.shape[-1] - W, 0, x_pad.shape[-2] - H))
    return F.avg_pool2d(inside, model.factors[-1]).numpy().reshape(-1) > 0


def _choice_tokens(model, choices, options, idx_levels, grid, shape):
    """Tokens of one option choice (R,) per field of ``idx_levels``."""
    device = idx_levels[0].device
    levels = torch.tensor(np.array([[options[o][0] for o in c] for c in choices]), device=device).view(-1, *grid)
    depths = torch.tensor(np.array([[options[o][1] for o in c] for c in choices]), device=device).view(-1, *grid)
    return model._tokens(levels, depths, idx_levels, shape)


def _reach_psnr(model, x, idx_levels, costs, err_RCO, range_sq, psnr, options, tries=4):
    """The cheapest choice for one field x (1, C, H, W) whose decoded PSNR reaches `psnr`.

    The per-region errors ignore the neighbours' choices, so the PSNR they
    predict can miss the decoded one by a little; each try asks for the
    shortfall more and decodes again. A field that cannot reach `psnr` gets
    every upgrade worth taking.
    """
    H, W = x.shape[-2:]
    grid = tuple(idx_levels[-1].shape[1:3])
    ask, choice = psnr, None
    for _ in range(tries):
        limit = range_sq * 10 ** (-ask / 10) * H * W  # squared error that gives PSNR `ask` on one channel

        def target(total_C, limit=limit):
            # a channel's PSNR is ask - 10 log10(error / limit); their mean reaches ask when the mean log ratio is <= 0
            return np.log10(np.maximum(total_C, 1e-300) / limit).mean() <= 0

        previous, choice = choice, _greedy(costs, err_RCO, 1.0 / range_sq, target=target)
        if previous is not None and np.array_equal(previous, choice):
            break  # asking for more buys nothing more
        tokens = _choice_tokens(model, [choice], options, idx_levels, grid, (H, W))
        err_C = (model.decode(tokens).double() - x.double()).square().sum((0, 2, 3)).cpu().numpy()
        reached = np.mean(10 * np.log10(range_sq * H * W / np.maximum(err_C, 1e-300)))
        if reached >= psnr:
            break
        ask += psnr - reached
    return choice
