import json
import math

import pytest
import torch

from dynfield.models import DQVAE, total_loss, vqvae

TINY = dict(hidden=16, code_dim=16, codebook_size=64)


def model(**kw):
    torch.manual_seed(0)
    return DQVAE(**{**TINY, **kw})


def field(B=2, C=4, H=40, W=56, seed=0):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("factors", [(4, 8), (2, 4, 8), (8,)])
@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("shape", [(40, 56), (32, 32)])
def test_shapes_and_valid_tokens(factors, periodic, shape):
    m = model(factors=factors, periodic=periodic)
    x = field(H=shape[0], W=shape[1])
    for mode in (m.train, m.eval):
        mode()
        out = m(x)
        assert out.recon.shape == x.shape
        t = out.tokens.validate()
        Hc, Wc = math.ceil(shape[0] / 8), math.ceil(shape[1] / 8)
        assert t.grain.shape == (2, Hc, Wc) and t.shape == shape
        assert [tuple(c.shape) for c in t.codes] == [(2, Hc * 8 // f, Wc * 8 // f) for f in factors]
        assert (out.probs is None) == (len(factors) == 1)
        assert set(out.losses) == {"vq", "budget"}
    assert m.decode(m.encode(x)).shape == x.shape


def test_fixed_grain_baseline_is_one_code_per_region():
    m = vqvae(8, **TINY)
    assert m.router is None and m.config["factors"] == [8]
    t = m.encode(field())
    assert (t.grain == 0).all() and (t.count() == 35).all() and m.tokens_per_field((40, 56)) == 35


def test_straight_through_gate_trains_the_router():
    m = model().train()
    x = field()
    out = m(x, temperature=0.7)
    # reconstruction only: the router's gradient can come only through the gate
    (out.recon - x).square().mean().backward()
    for name, p in m.router.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# 35 regions of 8x8 at factors (4, 8): round-half-up fine regions, 4 codes each, 1 for the rest
@pytest.mark.parametrize("fine_ratio, expected", [(0.0, 35), (0.1, 47), (0.37, 74), (0.5, 89), (0.9, 131), (1.0, 140)])
def test_exact_budget_hits_the_token_count_per_sample(fine_ratio, expected):
    x = field(B=3)
    m = model().eval()
    for router in ("learned", "random", "enstrophy"):
        t = m.encode(x, fine_ratio=fine_ratio, router=router)
        assert t.count().tolist() == [expected] * 3, router
    assert m.tokens_per_field((40, 56), fine_ratio) == expected
    m3 = model(factors=(2, 4, 8), target_ratios=(0.2, 0.3, 0.5)).eval()
    counts = {m3.encode(x, fine_ratio=fine_ratio).count().unique().tolist()[0] for _ in range(1)}
    assert counts == {m3.tokens_per_field((40, 56), fine_ratio)}


def test_random_router_is_seeded_and_differs_from_learned():
    x = field()
    m = model().eval()
    a, b = m.encode(x, fine_ratio=0.5, router="random"), m.encode(x, fine_ratio=0.5, router="random")
    assert torch.equal(a.grain, b.grain)
    assert not torch.equal(a.grain, m.encode(x, fine_ratio=0.5, router="learned").grain)
    other_seed = model(seed=1).eval()
    assert not torch.equal(a.grain, other_seed.encode(x, fine_ratio=0.5, router="random").grain)
    # a model trained with the random router draws new regions at every step,
    # while encode stays repeatable even in training mode
    r = model(router="random").train()
    assert r.router is None
    assert not torch.equal(r(x).tokens.grain, r(x).tokens.grain)
    assert torch.equal(r.encode(x).grain, r.encode(x).grain)
    with pytest.raises(ValueError, match="no learned router"):
        r.encode(x, router="learned")


def test_enstrophy_router_codes_the_active_region_finely():
    x = 0.05 * field(B=1)
    x[..., 8:16, 24:32] += torch.randn(1, 4, 8, 8) * 3  # region (1, 3)
    x[..., 32:40, 0:8] += torch.randn(1, 4, 8, 8) * 3  # region (4, 0)
    t = model(router="enstrophy").encode(x, fine_ratio=2 / 35)
    assert sorted(map(tuple, (t.grain[0] == 0).nonzero().tolist())) == [(1, 3), (4, 0)]


def test_fixed_router_override():
    m = model()
    for level, per_region in ((0, 4), (1, 1)):
        t = m.encode(field(), router="fixed", level=level)
        assert (t.grain == level).all() and (t.count() == 35 * per_region).all()
        assert m.tokens_per_field((40, 56), router="fixed", level=level) == 35 * per_region
    with pytest.raises(ValueError, match="level"):
        model().encode(field(), router="fixed", level=2)


def test_coarse_copies_count_once():
    m = model().eval()
    x = field()
    # put the chosen coarse vectors into the codebook: their error is zero, the fine ones' is not,
    # so counting each coarse vector once or once per covered cell gives different losses
    feats = m.features(m._pad(x))
    coarse = feats[1].permute(0, 2, 3, 1)[m.encode(x).codes[1] >= 0].detach()
    m.quantizer.stages[0].embed[: len(coarse)] = coarse
    out = m(x)
    t = out.tokens
    assert 0 < t.fine_fraction().mean() < 1  # both levels in use, or the test says nothing
    # the codebook statistics count tokens, not cells of the finest grid
    assert m.quantizer.stages[0].last_counts.sum() == t.count().sum()
    # commitment loss: the mean over the chosen per-level vectors, each coarse vector once
    chosen, replicated = [], []
    for k, (f, codes) in enumerate(zip(feats, t.codes)):
        z = f.permute(0, 2, 3, 1)[codes >= 0]
        err = (z - m.quantizer.stages[0].embed[codes[codes >= 0]]).square().mean(1)
        chosen.append(err)
        replicated.append(err.repeat_interleave((m.factors[k] // m.factors[0]) ** 2))
    expected = 0.25 * torch.cat(chosen).mean()
    assert out.losses["vq"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert chosen[1].max() < 1e-10 < chosen[0].min()
    assert out.losses["vq"].item() != pytest.approx(0.25 * torch.cat(replicated).mean().item(), rel=1e-2)


def test_encode_decode_deterministic_and_match_forward():
    m = model()
    x = field()
    m.train()
    m(x)  # initialise the codebook from data
    m.eval()
    t1, t2 = m.encode(x), m.encode(x)
    assert torch.equal(t1.grain, t2.grain) and all(torch.equal(a, b) for a, b in zip(t1.codes, t2.codes))
    y1, y2 = m.decode(t1), m.decode(t1)
    assert torch.equal(y1, y2)
    out = m(x)
    assert torch.equal(out.tokens.grain, t1.grain)
    assert torch.allclose(out.recon, y1, atol=1e-5)


@pytest.mark.parametrize("factors, stages", [((4, 8), 1), ((2, 4, 8), 3)])
def test_encode_searches_the_codebook_only_where_the_grain_needs_it_and_finds_the_same_codes(factors, stages):
    m = model(factors=factors, stages=stages)
    x = field()
    m.train()
    m(x)  # initialise the codebooks from data
    m.eval()
    tokens = m.encode(x, fine_ratio=0.5, router="random")
    # every vector searched, then masked by the grain and depth maps: the same tokens
    feats = m.features(m._pad(x))
    full = m._tokens(tokens.grain, tokens.depth, m.stage_indices(feats), x.shape[-2:])
    assert all(torch.equal(a, b) for a, b in zip(tokens.stage_codes(), full.stage_codes()))
    assert all((c[:, 0] >= 0).any() for c in tokens.stage_codes())  # every level is used somewhere


def test_periodic_model_commutes_with_rolls_by_whole_regions():
    m = model(factors=(2, 4, 8), periodic=True).eval()
    x = field(H=32, W=48)
    shift = (8, 16)
    roll = lambda t: torch.roll(t, shift, dims=(-2, -1))  # noqa: E731
    t, t_rolled = m.encode(x), m.encode(roll(x))
    assert torch.equal(t_rolled.grain, torch.roll(t.grain, (1, 2), dims=(-2, -1)))
    assert torch.allclose(m.decode(t_rolled), roll(m.decode(t)), atol=1e-5)


def test_decoder_tells_the_copies_of_a_coarse_code_apart():
    """One code everywhere, all regions coarse: only the offset embedding breaks the symmetry between copies."""
    m = model(periodic=True).eval()
    t = m.encode(field(H=32, W=32), router="fixed", level=1)
    t.codes = (t.codes[0], torch.full_like(t.codes[1], 5))
    y = m.decode(t.validate())
    assert torch.allclose(torch.roll(y, (8, 8), dims=(-2, -1)), y, atol=1e-5)  # one coarse block
    assert not torch.allclose(torch.roll(y, (4, 4), dims=(-2, -1)), y, atol=1e-3)  # one fine cell


@pytest.mark.parametrize("periodic", [True, False])
def test_padding_wraps_periodic_fields_and_extends_others(periodic):
    m = model(periodic=periodic)
    x = field(H=37, W=45)
    xp = m._pad(x)
    assert xp.shape[-2:] == (40, 48) and torch.equal(xp[..., :37, :45], x)
    if periodic:
        assert torch.equal(xp[..., 37:, :45], x[..., :3, :]) and torch.equal(xp[..., :37, 45:], x[..., :, :3])
    else:
        assert torch.equal(xp[..., 37:, :45], x[..., -1:, :].expand(-1, -1, 3, -1))


def test_checkpoint_round_trip_rebuilds_an_identical_model():
    m = model(factors=(2, 4, 8), budget_mode="sample", attention=True).train()
    x = field()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for _ in range(2):
        loss, _ = total_loss(m(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    config = json.loads(json.dumps(m.config))
    clone = DQVAE(**config)
    clone.load_state_dict(m.state_dict())
    m.eval(), clone.eval()
    for fine_ratio in (None, 0.4):
        a, b = m.encode(x, fine_ratio), clone.encode(x, fine_ratio)
        assert torch.equal(a.grain, b.grain) and all(torch.equal(p, q) for p, q in zip(a.codes, b.codes))
        assert torch.equal(m.decode(a), clone.decode(b))


def test_errors_name_the_problem():
    m = model()
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        m(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match="smaller than one coarsest region"):
        m.encode(torch.randn(1, 4, 6, 32))
    with pytest.raises(ValueError, match="factors"):
        model(factors=(8, 4))
    with pytest.raises(ValueError, match="target_ratios"):
        model(target_ratios=(0.7, 0.7))
    with pytest.raises(ValueError, match="router must be"):
        model(router="smart")
    with pytest.raises(ValueError, match="tokens were made with factors"):
        model(factors=(2, 8)).decode(m.encode(field()))


def test_budget_loss_steers_the_learned_router():
    """Trained on the budget loss alone, the router's sampled fine fraction moves to the target."""
    m = model(target_ratios=(0.8, 0.2)).train()
    x = field()
    opt = torch.optim.Adam(m.router.parameters(), 1e-2)
    sampled_fraction = lambda: sum(m(x).stats["fine_fraction"] for _ in range(20)) / 20  # noqa: E731
    before = sampled_fraction()
    for _ in range(40):
        out = m(x, temperature=0.5)
        opt.zero_grad()
        out.losses["budget"].backward()
        opt.step()
    assert abs(sampled_fraction() - 0.8) < 0.05 < abs(before - 0.8)


def smooth_field(B, C, n, seed=0):
    """Random periodic fields with a steep spectrum (amplitude ~ k^-2), unit variance."""
    g = torch.Generator().manual_seed(seed)
    k = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None] ** 2) * n
    coeffs = torch.view_as_complex(torch.randn(B, C, n, n // 2 + 1, 2, generator=g))
    x = torch.fft.irfft2(coeffs / (1 + k) ** 2, s=(n, n))
    return x / x.std()


def test_tiny_model_overfits_one_batch():
    m = model(factors=(4, 8))
    x = smooth_field(2, 4, 32)
    opt = torch.optim.Adam(m.parameters(), 3e-3)

    def eval_mse():
        m.eval()
        with torch.no_grad():
            return (m.decode(m.encode(x)) - x).square().mean().item()

    before = eval_mse()
    m.train()
    for step in range(300):
        loss, _ = total_loss(m(x, temperature=max(0.3, 1 - step / 200)), x, {"spectral": 0.0})
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_mse() < before / 10


def test_depth_cuts_the_ladder_per_region():
    torch.manual_seed(0)
    m = model(stages=3)
    m.train()
    m(field())  # initialise every stage's codebook from data
    m.eval()
    x = field()
    full = m.encode(x, fine_ratio=0.5)
    assert (full.depth == 3).all() and full.stages == 3
    depth = torch.randint(1, 4, full.grain.shape, generator=torch.Generator().manual_seed(2))
    cut = m.encode(x, fine_ratio=0.5, depth=depth).validate()
    assert torch.equal(cut.depth, depth) and torch.equal(cut.grain, full.grain)
    # the codes kept are the full ladder's, stopped at each region's depth
    for c_cut, c_full, k in zip(cut.stage_codes(), full.stage_codes(), range(2)):
        kept = c_cut >= 0
        assert torch.equal(c_cut[kept], c_full[kept])
        cell_depth = depth.repeat_interleave(8 // m.factors[k], 1).repeat_interleave(8 // m.factors[k], 2)
        assert torch.equal(kept.sum(1), cell_depth * full.level_mask(k))
    # a region's depth changes its reconstruction, so the depth map is information the decoder uses
    assert not torch.allclose(m.decode(cut), m.decode(full))
    assert torch.allclose(m.decode(m.encode(x, fine_ratio=0.5, depth=3)), m.decode(full))
    # a shallower ladder searches fewer stages and keeps the same codes in those it searches
    shallow = m.encode(x, fine_ratio=0.5, depth=2).validate()
    for c_shallow, c_full in zip(shallow.stage_codes(), full.stage_codes()):
        assert torch.equal(c_shallow[:, :2], c_full[:, :2]) and (c_shallow[:, 2] == -1).all()
    with pytest.raises(ValueError, match="depth must lie in"):
        m.encode(x, depth=4)


def test_a_router_trained_at_exact_ratios_routes_at_the_lowest_one_unless_told():
    # its gate was never trained to choose a budget by argmax (an untrained one makes ~half the regions fine)
    m = model(factors=(4, 8), train_fine_ratio=(0.25, 0.5)).eval()
    x = field(B=2, H=32, W=64)  # 32 coarse regions per field
    tokens = m.encode(x)
    assert tokens.fine_fraction().tolist() == [0.25, 0.25]
    assert m.encode(x, fine_ratio=0.5).fine_fraction().tolist() == [0.5, 0.5]
    assert m.tokens_per_field((32, 64)) == tokens.count()[0].item()
    # the random router keeps its target ratios
    assert m.encode(x, router="random").fine_fraction().tolist() == [0.5, 0.5]
