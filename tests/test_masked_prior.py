import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tokens as shared_tokens
from conftest import same_tokens

from dynfield.models.level_grids import grid_distance, grids_to_tokens, level_grids
from dynfield.models.masked_prior import MaskedPrior
from dynfield.models.reveal import lattice_order, lattice_rounds
from dynfield.models.tokens import Tokens, repeat_cells

TINY = dict(dim=32, depth=2, heads=2, spacing=2)


def make_tokens(factors=(2, 4), shape=(10, 18), codebook_size=4, B=3, grain="random", seed=0, nested=False):
    """Small tokens: the sizes these tests enumerate and overfit."""
    return shared_tokens(grain, factors, shape, codebook_size, B, seed, nested)


def prior(factors=(2, 4), shape=(10, 18), codebook_size=4, **kw):
    torch.manual_seed(0)
    return MaskedPrior(order="bidirectional", factors=factors, shape=shape, codebook_size=codebook_size, **{**TINY, **kw})


@pytest.mark.parametrize("factors, shape", [((8,), (16, 24)), ((4, 8), (40, 56)), ((2, 4, 8), (16, 24))])
@pytest.mark.parametrize("grain", ["random", "coarse", "fine"])
@pytest.mark.parametrize("nested", [False, True])
def test_level_grids_round_trip(factors, shape, grain, nested):
    t = make_tokens(factors, shape, codebook_size=8, grain=grain, nested=nested)
    grids = level_grids(t)
    for k, grid in enumerate(grids):
        g = repeat_cells(t.grain, factors[-1] // factors[k])
        if nested:  # codes down to the region's level, PASS just below it, closed further down
            assert torch.equal(grid == 8, g == k + 1) and torch.equal(grid == -1, g > k + 1)
            assert torch.equal((grid >= 0) & (grid < 8), g <= k)
        else:  # PASS where the region goes finer, closed (-1) where a coarser level took it
            assert torch.equal(grid == 8, g < k) and torch.equal(grid == -1, g > k)
    assert not (grids[-1 if nested else 0] == 8).any()
    back = grids_to_tokens(grids, factors, shape, 8, nested).validate()
    assert same_tokens(back, t) and back.shape == t.shape and back.nested == nested


def test_lattice_order_is_coarse_first_and_complete():
    assert lattice_order(1) == [(0, 0)]
    assert lattice_order(2) == [(0, 0), (1, 1), (0, 1), (1, 0)]
    order = lattice_order(8)
    assert sorted(order) == sorted(itertools.product(range(8), repeat=2))
    # the first 16 offsets are the spacing-4 order, doubled: a coarse lattice before any finer cell
    assert order[:16] == [(2 * i, 2 * j) for i, j in lattice_order(4)]
    for r, (i, j) in enumerate(order[1:], start=1):
        # every new offset has known cells on both sides along a row, a column or a diagonal
        known = set(order[:r])
        sides = [((i - a) % 8, (j - b) % 8) in known and ((i + a) % 8, (j + b) % 8) in known
                 for d in (1, 2, 4) for a, b in ((d, 0), (0, d), (d, d), (d, -d))]
        assert any(sides), (i, j)
    rounds = lattice_rounds(5, 6, 4).view(5, 6)
    assert rounds[0, 0] == 0 and rounds[4, 4] == 0 and rounds[2, 2] == 1 and rounds[1, 0] == 12
    with pytest.raises(ValueError, match="power of 2"):
        lattice_order(3)


def test_nested_lattice_reveals_the_coarsest_cells_one_at_a_time():
    flat, nested = lattice_rounds(16, 16, 4).view(16, 16), lattice_rounds(16, 16, 4, nested=True).view(16, 16)
    assert torch.equal(nested.flatten().unique(), torch.arange(31))  # 16 rounds of one cell, then 15 offsets
    first = nested < 16
    assert torch.equal(first, flat == 0) and torch.equal(nested[first].sort().values, torch.arange(16))
    assert torch.equal(nested[::4, ::4], lattice_rounds(4, 4, 4).view(4, 4))  # the same order, one level up
    assert torch.equal(nested[~first], flat[~first] + 15)
    # rounds no cell falls in are dropped: a 3 x 3 grid has 9 rounds
    assert torch.equal(lattice_rounds(3, 3, 4, nested=True).sort().values, torch.arange(9))


@pytest.mark.parametrize("nested", [False, True])
def test_each_cell_is_predicted_from_the_cells_revealed_before_it(nested):
    # one pass predicts every cell; what the cells of round r and later hold
    # must not reach the predictions of round r, what earlier cells hold must
    m = prior(codebook_size=6, spacing=4, nested=nested)
    t = make_tokens(codebook_size=6, B=8, seed=5, nested=nested)
    grids = level_grids(t)
    g = torch.Generator().manual_seed(0)
    for k in range(m.num_levels):
        grid = grids[k].flatten(1)
        reveal, context = m._reveal(k, grid), m._context(grids, k)
        with torch.no_grad():
            clean = m._logits(k, grid, reveal, context)
            for r in range(m.level_rounds[k]):
                garbage = torch.randint(m.PASS + 1, grid.shape, generator=g)
                later = torch.where((reveal >= r) & (grid >= 0), garbage, grid)
                now = reveal == r
                assert torch.allclose(m._logits(k, later, reveal, context)[now], clean[now], atol=1e-5)
                earlier = torch.where((reveal < r) & (grid >= 0), garbage, grid)
                if now.any() and (earlier != grid).any():
                    assert not torch.allclose(m._logits(k, earlier, reveal, context)[now], clean[now], atol=1e-3)


@pytest.mark.parametrize("nested", [False, True])
def test_training_loss_is_the_code_length_and_trains_the_cells_that_pay(nested):
    m = prior(codebook_size=6, nested=nested)
    t = make_tokens(codebook_size=6, seed=1, nested=nested)
    bits = m.bits(t)
    logits = []

    def keep_logits(mod, args, out):
        out.retain_grad()
        logits.append(out)
    m.head.register_forward_hook(keep_logits)
    m.train()
    out = m(t)
    out.loss.backward()
    assert torch.allclose(out.loss * t.count().sum(), bits.sum().float() * math.log(2))
    assert torch.allclose(out.parts["grain"] + out.parts["code"], out.loss)
    idle = 0
    for k, z in zip(reversed(range(2)), logits):  # levels go coarse to fine
        grid = level_grids(t)[k].flatten(1)
        _, lead, _ = m._schedule(k)
        pays = (grid >= 0) & (lead | (grid != m.PASS))  # a region's lead, and every cell of a coded region
        assert torch.equal(z.grad.abs().sum(-1) > 0, pays)
        idle += (~pays).sum()
    assert idle > 0


def all_tokens(factors, shape, N, nested=False):
    """Every valid token set of a tiny field, as one batch (`nested`: a region also carries the coarser codes)."""
    K, f_K = len(factors), factors[-1]
    Hc, Wc = shape[0] // f_K, shape[1] // f_K
    grains, codes = [], [[] for _ in factors]
    for grain in itertools.product(range(K), repeat=Hc * Wc):
        grain = torch.tensor(grain).view(1, Hc, Wc)
        used = [repeat_cells(grain <= k if nested else grain == k, f_K // f) for k, f in enumerate(factors)]
        slots = [u.nonzero() for u in used]
        for values in itertools.product(range(N), repeat=sum(len(s) for s in slots)):
            values = iter(values)
            grains.append(grain)
            for k, (u, s) in enumerate(zip(used, slots)):
                c = torch.full_like(u, -1, dtype=torch.long)
                for i in s:
                    c[tuple(i)] = next(values)
                codes[k].append(c)
    return Tokens(torch.cat(grains), [torch.cat(c) for c in codes], factors, shape, N, nested=nested).validate()


@pytest.mark.parametrize("factors, shape, extra", [((2,), (4, 4), {}), ((2, 4), (8, 4), {}),
                                                   ((2, 4), (8, 4), {"rotary": True, "periodic": True}),
                                                   ((2, 4), (8, 4), {"nested": True}),
                                                   ((2, 4), (8, 4), {"nested": True, "periodic": True})])
def test_bits_is_a_complete_code(factors, shape, extra):
    # the code lengths of all valid token sets satisfy Kraft's equality: the
    # prior is a normalised distribution over valid tokens, so the code is
    # achievable and wastes nothing on invalid grain maps
    m = prior(factors, shape, codebook_size=2, **extra)
    bits = m.bits(all_tokens(factors, shape, 2, extra.get("nested", False)))
    assert torch.allclose(torch.exp2(-bits).sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)


def reveal_rounds(H, W, a, nested):
    """The cells (i, j) of each reveal round, as a decoder would list them.

    Nested, the cells of the first offset are revealed in the rounds of their
    own (H / a, W / a) grid, scaled up by a.
    """
    rounds = [[(i, j) for i in range(di, H, a) for j in range(dj, W, a)] for di, dj in lattice_order(a)]
    if nested and H * W > 1:
        rounds = [[(a * i, a * j) for i, j in r] for r in reveal_rounds(-(-H // a), -(-W // a), a, True)] + rounds[1:]
    return [r for r in rounds if r]


def replay_bits(m, t):
    """Code length recomputed as a decoder would replay it, one sample and one cell at a time."""
    N, a = m.codebook_size, m.config["spacing"]
    bits = []
    for b in range(t.batch_size):
        grids = [g[b:b + 1] for g in level_grids(t)]
        total = 0.0
        for k in reversed(range(m.num_levels)):
            H, W = m.grid_shapes[k]
            s = m.factors[-1] // m.factors[k]
            grid = grids[k].flatten()
            known = grid < 0
            garbage = torch.randint(N + 1, grid.shape, generator=torch.Generator().manual_seed(k))
            region = [(i // W // s, i % W // s) for i in range(H * W)]
            finer = {}  # grain decisions so far, per region
            for cells in reveal_rounds(H, W, a, nested=k == m.num_levels - 1):
                now = sorted(i * W + j for i, j in cells if not known[i * W + j])
                # the decoder knows nothing of the cells still to come: any symbols there, at their own rounds
                shown = torch.where(known, grid, m.MASK)
                with torch.no_grad():
                    logp = m._logits(k, torch.where(known, grid, garbage)[None], m._reveal(k, shown[None]),
                                     m._context(grids, k))[0].double().log_softmax(-1)
                for i in now:  # raster order inside a round
                    if region[i] not in finer:  # the region's first cell carries its grain
                        total -= logp[i, grid[i]].item()
                        finer[region[i]] = grid[i].item() == N
                    elif not finer[region[i]]:
                        total -= (logp[i, grid[i]] - logp[i, :N].logsumexp(0)).item()
                for i in range(H * W):
                    known[i] = known[i] or i in now or finer.get(region[i], False)
        bits.append(total / math.log(2))
    return torch.tensor(bits, dtype=torch.float64)


@pytest.mark.parametrize("extra", [{}, {"code_dim": 3, "periodic": True},
                                   {"code_dim": 3, "periodic": True, "rotary": True}, {"nested": True}])
def test_bits_deterministic_replayable_and_rebuilt(extra):
    m = prior(codebook_size=6, **extra)
    if "code_dim" in extra:
        m.tok_emb.set_vectors(torch.randn(6, 3))
    t = make_tokens(codebook_size=6, seed=2, nested=extra.get("nested", False))
    m.train()
    bits = m.bits(t)
    assert m.training and torch.equal(bits, m.bits(t)) and bits.dtype == torch.float64
    assert torch.allclose(bits, replay_bits(m, t), rtol=1e-5)
    m.eval()
    out = m(t)
    assert torch.allclose(out.bits.double(), bits) and torch.equal(out.count, t.count())
    assert torch.allclose(out.loss * t.count().sum(), bits.sum().float() * math.log(2))
    rebuilt = MaskedPrior(**m.config)
    rebuilt.load_state_dict(m.state_dict())
    assert torch.equal(rebuilt.bits(t), bits)


def test_overfits_four_samples():
    # 4 random token sets of 32 regions (~80 tokens each). Memorised, they cost
    # only what tells them apart: the first cell the schedule reveals, at most
    # log2(4) = 2 bits per sample, 0.025 bit/token; we ask for 4 times that. An
    # untrained prior pays about log2(16 codes + FINER) bit/token.
    torch.manual_seed(0)
    m = MaskedPrior(order="bidirectional", factors=(2, 4), shape=(16, 32), codebook_size=16, dim=64, depth=2, heads=2)
    t = make_tokens((2, 4), (16, 32), codebook_size=16, B=4, seed=4)
    before = (m.bits(t) / t.count()).mean()
    twice = Tokens(t.grain.repeat(2, 1, 1), [c.repeat(2, 1, 1) for c in t.codes], t.factors, t.shape, 16)  # two masks each
    steps = 400
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        loss = m(twice).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    after = (m.bits(t) / t.count()).mean()
    assert before > 3.5 and after < 0.1, (before, after)


def diagonal_tokens(B, factors, shape, N, seed):
    """Tokens whose codes run along diagonals, (row + col + offset) mod N, each field its own offset.

    Every code is equally frequent, so only a prior that reads a cell's
    neighbours beats log2(N) bits per code.
    """
    g = torch.Generator().manual_seed(seed)
    f_K = factors[-1]
    grain = torch.randint(len(factors), (B, shape[0] // f_K, shape[1] // f_K), generator=g)
    offset = torch.randint(N, (B, 1, 1), generator=g)
    codes = []
    for k, f in enumerate(factors):
        H, W = shape[0] // f, shape[1] // f
        code = (torch.arange(H)[:, None] + torch.arange(W) + offset) % N
        codes.append(torch.where(repeat_cells(grain == k, f_K // f), code, -1))
    return Tokens(grain, codes, factors, shape, N).validate()


def train_on_diagonals(m, steps):
    """Fit prior `m` to fresh diagonal tokens of its own factors and shape, 16 fields a step."""
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        loss = m(diagonal_tokens(16, m.factors, m.shape, m.codebook_size, seed=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_learns_from_neighbours():
    # Without a locality bias the prior stayed at the symbol frequencies here
    # (3.40 bit/token after 150 steps): its cells found their neighbours too late.
    factors, shape, N = (2, 4), (16, 32), 8
    m = prior(factors, shape, codebook_size=N)
    held_out = diagonal_tokens(16, factors, shape, N, seed=999)
    # what knowing only the frequencies costs: log2(N) per code, a uniform grain per region
    frequencies = (math.log2(N) + held_out.grain[0].numel() * math.log2(len(factors)) / held_out.count()).mean()
    train_on_diagonals(m, 150)
    rate = m.bits(held_out).sum() / held_out.count().sum()
    assert rate < frequencies / 2, (rate, frequencies)


def test_distances_wrap_around_on_periodic_grids():
    # cells (0, 0) and (0, W - 1) of an (H, W) = (4, 6) grid: 5 apart on the
    # plane, neighbours on the torus; (0, 0) and (2, 3) are as far apart as the torus allows
    plane, torus = (grid_distance(4, 6, "cpu", periodic) for periodic in (False, True))
    assert plane[0, 5] == 5 and torus[0, 5] == 1
    assert torus[0, 2 * 6 + 3] == plane[0, 2 * 6 + 3] == torus.max() == math.hypot(2, 3)
    assert torch.equal(torus, torus.T)


def wave_tokens(B, shape, levels, seed):
    """One-level tokens (factor 4) of plane waves, a random direction and phase per field, quantised to
    `levels` values: the code of a cell is ``levels[value]``, so its id says nothing of its value."""
    g = torch.Generator().manual_seed(seed)
    theta, phase = (torch.rand(B, 1, 1, generator=g) * 2 * math.pi for _ in range(2))
    H, W = shape[0] // 4, shape[1] // 4
    y, x = torch.arange(H)[:, None] + 0.5, torch.arange(W) + 0.5
    value = torch.sin(2 * math.pi * (y * theta.cos() + x * theta.sin()) / 6 + phase)
    level = ((value + 1) / 2 * len(levels)).long().clamp(0, len(levels) - 1)
    return Tokens(torch.zeros(B, H, W, dtype=torch.long), [levels[level]], (4,), shape, len(levels)).validate()


def test_code_vectors_teach_what_codes_have_in_common():
    # 256 codes stand for the values of smooth waves, in shuffled order. With
    # free embeddings the prior must learn code by code which codes are close;
    # given vectors in which close values are close (Fourier features of the
    # value), it knows from the start. 50 steps: 7.7 bit/token without the
    # vectors, 6.5 with them (log2 256 = 8).
    shape, N = (32, 32), 256
    levels = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    value = torch.empty(N)
    value[levels] = (torch.arange(N) + 0.5) / N
    phase = value[:, None] * torch.arange(1, 9) * math.pi
    held_out = wave_tokens(16, shape, levels, seed=999)
    rates = {}
    for code_dim in (0, 16):
        m = prior((4,), shape, codebook_size=N, code_dim=code_dim)
        if code_dim:
            m.tok_emb.set_vectors(torch.cat([phase.cos(), phase.sin()], 1))
        opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
        for step in range(50):
            loss = m(wave_tokens(16, shape, levels, seed=step)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates[code_dim] = (m.bits(held_out).sum() / held_out.count().sum()).item()
    assert rates[16] < 0.9 * rates[0], rates


def test_samples_keep_one_phase_across_the_field():
    # Diagonal codes with a random offset per field: the offset is a field-wide
    # phase. Drawn together, the 16 cells of a flat first round disagree on it
    # (0.32 of a sample's cells agreed with its most common phase, 400 steps);
    # the nested lattice draws one cell first and the rest follow it.
    factors, shape, N = (4,), (32, 32), 8
    m = prior(factors, shape, codebook_size=N)
    train_on_diagonals(m, 400)
    codes = m.sample(64, seed=0).codes[0]
    phase = (codes - torch.arange(8)[:, None] - torch.arange(8)) % N
    agree = torch.stack([torch.bincount(p.flatten(), minlength=N).max() for p in phase]) / 64
    assert agree.mean() > 0.7, agree.mean()


@pytest.mark.parametrize("factors, shape", [((2, 4), (10, 18)), ((2, 4, 8), (16, 24)), ((4,), (12, 8))])
@pytest.mark.parametrize("nested", [False, True])
def test_sample_valid_seeded_and_within_budget(factors, shape, nested):
    m = prior(factors, shape, nested=nested)
    calls = []
    m.head.register_forward_hook(lambda *args: calls.append(1))  # one transformer pass, one call
    a = m.sample(5, seed=1).validate()
    assert 0 < len(calls) <= sum(m.level_rounds)
    assert a.shape == shape and a.factors == factors and a.batch_size == 5 and a.nested == nested
    assert same_tokens(a, m.sample(5, seed=1))
    assert not same_tokens(a, m.sample(5, seed=2))
    m.sample(5, seed=1, temperature=0.5, top_k=2, top_p=0.8).validate()
    assert m.training  # the mode is restored


@pytest.mark.parametrize("nested", [False, True])
def test_samples_follow_the_distribution_bits_measures(nested):
    # one region, coarse (2 token sets) or fine (16, nested 32): sampling must
    # draw each of the 18 (34) token sets with probability 2 ** -bits
    factors, shape, N, n = (2, 4), (4, 4), 2, 20000
    m = prior(factors, shape, codebook_size=N, nested=nested)
    with torch.no_grad():
        m.head.weight.normal_(std=0.5)  # a distribution far from uniform
    every = all_tokens(factors, shape, N, nested)
    p = torch.exp2(-m.bits(every))
    a = m.sample(n, seed=3)
    key = lambda t: [tuple(x) for x in torch.cat([t.grain.flatten(1)] + [c.flatten(1) for c in t.codes], 1).tolist()]
    index = {k: i for i, k in enumerate(key(every))}
    freq = torch.bincount(torch.tensor([index[k] for k in key(a)]), minlength=len(p)).double() / n
    uniform = torch.full_like(p, 1 / len(p))
    assert (p - uniform).abs().sum() / 2 > 0.15  # the test can tell distributions apart
    assert (freq - p).abs().sum() / 2 < 0.04, (freq, p)


def test_mismatch_refused():
    m = prior()
    for t in (make_tokens(shape=(12, 18)), make_tokens(factors=(4, 8)), make_tokens(codebook_size=5),
              make_tokens(nested=True)):
        for call in (m, m.bits):
            with pytest.raises(ValueError, match="the prior models"):
                call(t)
    with pytest.raises(ValueError, match="bidirectional"):
        MaskedPrior(order="raster", factors=(4, 8), shape=(16, 16), codebook_size=8)
    with pytest.raises(ValueError, match="multiple of heads"):
        MaskedPrior(order="bidirectional", factors=(4, 8), shape=(16, 16), codebook_size=8, dim=30, heads=4)
    with pytest.raises(ValueError, match="top_p"):
        m.sample(2, top_p=0.0)
