"""Rate-distortion allocation: budgets are met, not passed, and bits go where they remove the most error."""

import itertools
import math

import numpy as np
import pytest
import torch

from dynfield.evaluation import nominal_bits
from dynfield.models import DQVAE
from dynfield.models.allocation import _greedy, random_allocate, rd_allocate, region_error_spread, side_bits, spread

COSTS = np.array([1.0, 2.0, 4.0, 8.0])  # one region's options, cheapest first


def planted(rng, n_regions=40, busy_fraction=0.25):
    """(R, 1, O) errors: busy regions lose most of their error with every doubling, quiet ones almost none."""
    busy = rng.random(n_regions) < busy_fraction
    base = np.where(busy, 100.0, 1.0) * rng.uniform(0.5, 1.5, n_regions)
    fall = np.where(busy, 0.3, 0.95)  # error kept per upgrade
    errors = base[:, None] * fall[:, None] ** np.arange(len(COSTS))[None]
    return errors[:, None, :], busy


def test_budget_is_spent_but_never_passed():
    rng = np.random.default_rng(0)
    errors, _ = planted(rng)
    for budget in (40.0, 55.0, 90.0, 200.0):
        choice = _greedy(COSTS, errors, np.ones(1), budget=budget)
        spent = COSTS[choice].sum()
        assert spent <= budget
        # no region could still take its next step up within what is left
        left = budget - spent
        steps = [COSTS[c + 1] - COSTS[c] for c in choice if c + 1 < len(COSTS)]
        assert not steps or min(steps) > left


def test_beats_random_allocation_on_planted_structure():
    rng = np.random.default_rng(1)
    errors, busy = planted(rng)
    budget = 80.0
    choice = _greedy(COSTS, errors, np.ones(1), budget=budget)
    rd_error = errors[np.arange(len(choice)), 0, choice].sum()
    spent = COSTS[choice].sum()
    # random allocations of the same bits: random regions get upgraded until the budget is spent
    random_errors = []
    for seed in range(50):
        r = np.random.default_rng(seed)
        pick = np.zeros(len(choice), np.int64)
        while True:
            open_ = [i for i in range(len(pick)) if pick[i] + 1 < len(COSTS)
                     and COSTS[pick].sum() - COSTS[pick[i]] + COSTS[pick[i] + 1] <= spent]
            if not open_:
                break
            pick[r.choice(open_)] += 1
        random_errors.append(errors[np.arange(len(pick)), 0, pick].sum())
    assert rd_error < 0.5 * np.mean(random_errors)
    assert (choice[busy] > 0).all() and choice[busy].mean() > choice[~busy].mean()


def test_greedy_matches_exhaustive_search_on_hull_budgets():
    rng = np.random.default_rng(2)
    errors = np.sort(rng.uniform(0, 10, (4, 1, 4)), axis=2)[:, :, ::-1] * rng.uniform(1, 5, (4, 1, 1))
    # convex ladders: on them greedy is the exact Lagrangian solution at every budget it stops on
    for budget in (6.0, 10.0, 16.0):
        choice = _greedy(COSTS, errors, np.ones(1), budget=budget)
        best = min(errors[np.arange(4), 0, list(c)].sum()
                   for c in itertools.product(range(4), repeat=4) if COSTS[list(c)].sum() <= COSTS[choice].sum())
        assert errors[np.arange(4), 0, choice].sum() <= best * 1.15


def test_target_stops_at_the_first_allocation_that_reaches_it():
    rng = np.random.default_rng(3)
    errors, _ = planted(rng)
    limit = 0.2 * errors[:, 0, 0].sum()
    choice = _greedy(COSTS, errors, np.ones(1), target=lambda total: total[0] <= limit)
    assert errors[np.arange(len(choice)), 0, choice].sum() <= limit
    cheaper = _greedy(COSTS, errors, np.ones(1), budget=COSTS[choice].sum() - 1)
    assert errors[np.arange(len(cheaper)), 0, cheaper].sum() > limit


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = DQVAE(in_channels=2, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, stages=3, periodic=True)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 2, 16, 16))  # codebooks initialised from data at every stage
    return model.eval()


def test_rd_tokens_meet_a_bit_budget(tiny_model):
    x = torch.randn(3, 2, 20, 24)
    values = 2 * 20 * 24
    grid = (5, 6)
    for bpv in (0.6, 1.2, 2.5):
        tokens = rd_allocate(tiny_model, x, bits_per_value=bpv).validate()
        bits = nominal_bits(tokens, tiny_model.quantizer.num_stages)
        assert (bits <= bpv * values + 1e-6).all()
        # the cheapest allocation: every region coarse at depth 1
        floor = grid[0] * grid[1] * math.log2(32) + side_bits(tiny_model, grid)
        assert (bits >= min(floor, bpv * values) - 1e-6).all()
    with pytest.raises(ValueError, match="exactly one"):
        rd_allocate(tiny_model, x)


def test_random_allocation_spends_the_budget_without_looking(tiny_model):
    """The baseline at equal bits: as close to the budget as one more step allows, blind to the field."""
    x, y = torch.randn(3, 2, 16, 16), 10 * torch.randn(3, 2, 16, 16)
    values, regions = 2 * 16 * 16, 4 * 4
    step = 4 * math.log2(32)  # the dearest step of the ladder: the last depth of the fine grain (4 codes)
    every_code = regions * 4 * 3 * math.log2(32) + side_bits(tiny_model, (4, 4))
    for bpv in (0.6, 1.2, 2.5):
        tokens = random_allocate(tiny_model, x, bits_per_value=bpv, seed=1).validate()
        bits = nominal_bits(tokens, tiny_model.quantizer.num_stages)
        assert (bits <= bpv * values + 1e-6).all()
        assert (bits > min(bpv * values, every_code) - step - 1e-6).all()
        other = random_allocate(tiny_model, y, bits_per_value=bpv, seed=1)
        assert torch.equal(tokens.grain, other.grain) and torch.equal(tokens.depth, other.depth)
    # one grain: uniform depth, the deeper step on regions drawn at random, anew for every field
    model = DQVAE(in_channels=2, factors=(4,), router="fixed", hidden=8, code_dim=8, codebook_size=32, stages=3,
                  periodic=True).eval()
    tokens = random_allocate(model, x, bits_per_value=0.3)  # 9 of the 16 regions at depth 2
    depth = tokens.depth.flatten(1)
    assert (depth.amax(1) - depth.amin(1) == 1).all() and not torch.equal(depth[0], depth[1])
    # 153.6 bits: 16 log2(3) for the depth map, 16 codes of 5 bits at depth 1, and 9 more
    assert ((depth == 2).sum(1) == 9).all()


def psnr_of(x, y):
    span = x.flatten(2).amax(2) - x.flatten(2).amin(2)
    return (10 * torch.log10(span**2 / (x - y).square().mean((2, 3)))).mean(1)


def test_rd_reaches_a_psnr_with_fewer_bits_than_every_code(tiny_model):
    x = torch.randn(2, 2, 20, 24, generator=torch.Generator().manual_seed(5))
    full = tiny_model.encode(x, fine_ratio=1.0)
    best = psnr_of(x, tiny_model.decode(full)).min().item()
    for ask in (best - 3.0, best - 1.0):
        tokens = rd_allocate(tiny_model, x, psnr=ask)
        assert (psnr_of(x, tiny_model.decode(tokens)) >= ask).all()
        assert (tokens.count() < full.count()).all()


def test_three_grain_levels():
    torch.manual_seed(0)
    model = DQVAE(in_channels=1, factors=(2, 4, 8), hidden=8, code_dim=8, codebook_size=16, stages=2,
                  target_ratios=(0.2, 0.3, 0.5), periodic=True)
    model.train()
    model(torch.randn(4, 1, 32, 32))
    tokens = rd_allocate(model.eval(), torch.randn(2, 1, 32, 32), bits_per_value=0.8).validate()
    assert (nominal_bits(tokens) <= 0.8 * 32 * 32 + 1e-6).all()


def test_rd_router_gives_the_fine_grain_where_it_measurably_pays(tiny_model):
    x = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(6))
    scores = tiny_model.region_scores(x, router="rd")
    tokens = tiny_model.encode(x, fine_ratio=0.5, router="rd").validate()
    assert (tokens.count() == 8 * 4 * 3 + 8 * 3).all()  # 16 regions: 8 fine (4 cells), 8 coarse, 3 stages each
    for b in range(2):
        fine = tokens.grain[b] == 0
        assert scores[b][fine].min() >= scores[b][~fine].max()
    with pytest.raises(ValueError, match="encode time only"):
        DQVAE(in_channels=1, factors=(2, 4), router="rd")


def test_spread_is_what_the_greedy_allocation_gains_over_uniform_depths():
    # every region's error halves per unit of cost; busy regions start 100 times higher
    amplitude = np.repeat([100.0, 1.0], 20)
    costs = np.arange(21, dtype=np.float64)
    errors = amplitude[:, None, None] * 0.5 ** costs[None, None, :]
    uniform = errors[:, 0, 10].sum()  # every region at cost 10
    choice = _greedy(costs, errors, np.ones(1), budget=10.0 * len(amplitude))
    gain = uniform / errors[np.arange(len(choice)), 0, choice].sum()
    # (100 + 1) / 2 over sqrt(100): 5.05, less what whole units of cost cannot split
    assert spread(amplitude) == pytest.approx(5.05)
    assert gain == pytest.approx(spread(amplitude), rel=0.05) and gain <= spread(amplitude)
    assert spread(np.full(7, 3.0)) == pytest.approx(1.0)


def test_region_error_spread_follows_where_the_field_varies(tiny_model):
    torch.manual_seed(0)
    flat = torch.randn(2, tiny_model.config["in_channels"], 32, 32)
    patchy = flat.clone()
    patchy[..., :16, :] *= 30.0  # half the regions carry 900 times the energy
    even, uneven = region_error_spread(tiny_model, flat), region_error_spread(tiny_model, patchy)
    assert even.shape == uneven.shape == (tiny_model.num_levels * tiny_model.quantizer.num_stages,)
    assert (even < 1.5).all() and (uneven > 5.0).all()
