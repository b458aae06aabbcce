import math

import pytest
import torch

from dynfield.models import Router, budget_loss, enstrophy_score, gumbel_temperature
from dynfield.models.router import budget_ratios, fineness_log_odds, gumbel_gate, level_counts, rank_assign


# regions per level out of 35, rounded half up on the cumulative ratios (3.5 -> 4, 12.95 -> 13, 17.5 -> 18)
@pytest.mark.parametrize("ratios, counts", [
    ((0.0, 1.0), [0, 35]), ((0.1, 0.9), [4, 31]), ((0.37, 0.63), [13, 22]), ((0.5, 0.5), [18, 17]),
    ((1.0, 0.0), [35, 0]), ((0.2, 0.3, 0.5), [7, 11, 17]), ((0.5, 0.0, 0.5), [18, 0, 17]),
])
def test_rank_assign_meets_the_ratios_exactly_and_prefers_high_scores(ratios, counts):
    score = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1))
    grain = rank_assign(score, ratios)
    assert level_counts(35, ratios) == counts
    for b in range(3):
        assert torch.bincount(grain[b].flatten(), minlength=len(ratios)).tolist() == counts
        # every region at a finer level outscores every region at a coarser one
        for k in range(len(ratios) - 1):
            finer, coarser = score[b][grain[b] <= k], score[b][grain[b] > k]
            if len(finer) and len(coarser):
                assert finer.min() > coarser.max()


def test_budget_ratios_split_the_fine_share_by_the_targets():
    assert budget_ratios(0.3, (0.5, 0.5)) == pytest.approx((0.3, 0.7))
    assert budget_ratios(0.6, (0.1, 0.3, 0.6)) == pytest.approx((0.15, 0.45, 0.4))
    with pytest.raises(ValueError, match="fine_ratio"):
        budget_ratios(1.5, (0.5, 0.5))


def test_budget_loss_zero_at_target_and_batch_vs_sample():
    target = (0.25, 0.75)
    gate = torch.zeros(2, 2, 4, 4)
    gate[:, 0, 0, :] = 1  # 4 of 16 regions fine in each sample
    gate[:, 1] = 1 - gate[:, 0]
    assert budget_loss(gate, target, "batch") == 0
    assert budget_loss(gate, target, "sample") == 0
    # one sample all fine, one all coarse: the batch mean meets (0.5, 0.5), no sample does
    gate = torch.zeros(2, 2, 4, 4)
    gate[0, 0], gate[1, 1] = 1, 1
    assert budget_loss(gate, (0.5, 0.5), "batch") == 0
    assert budget_loss(gate, (0.5, 0.5), "sample") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="budget_mode"):
        budget_loss(gate, (0.5, 0.5), "mean")


def test_budget_loss_pushes_the_gate_toward_the_target():
    logits = torch.zeros(2, 2, 4, 4, requires_grad=True)
    budget_loss(logits.softmax(1), (0.9, 0.1)).backward()
    # raising the fine logit lowers the loss
    assert (logits.grad[:, 0] < 0).all() and (logits.grad[:, 1] > 0).all()


def test_gumbel_gate_is_one_hot_with_soft_gradient():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    gate = gumbel_gate(logits, temperature=0.5)
    assert torch.equal(gate.sum(1), torch.ones(2, 4, 5))
    assert set(gate.detach().unique().tolist()) == {0.0, 1.0}
    (gate * torch.randn_like(gate)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_gumbel_temperature_anneals_from_start_to_end():
    temps = [gumbel_temperature(s, 1.0, 0.1, 100) for s in range(0, 150, 10)]
    assert temps[0] == pytest.approx(1.0) and temps[10] == pytest.approx(0.1) and temps[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(temps[:11], temps[1:11]))


def test_fineness_log_odds_orders_by_probability_of_the_fine_levels():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]]).T.reshape(1, 3, 1, 3)
    e = fineness_log_odds(logits)[0, 0]
    assert e[0] > e[1] > e[2]


def _field_with_blobs(regions, factor=8, shape=(40, 56), C=4):
    """Smooth large-scale field plus strong small-scale noise inside the given coarse regions."""
    g = torch.Generator().manual_seed(0)
    y, x = torch.meshgrid(torch.arange(shape[0]), torch.arange(shape[1]), indexing="ij")
    field = 0.1 * torch.sin(2 * math.pi * x / shape[1]).expand(1, C, *shape).clone()
    for i, j in regions:
        block = field[..., i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
        block += torch.randn(block.shape, generator=g)
    return field


@pytest.mark.parametrize("vorticity_channel", [None, 2])
def test_enstrophy_router_finds_planted_blobs(vorticity_channel):
    blobs = [(1, 2), (3, 5), (4, 0)]
    field = _field_with_blobs(blobs)
    score = enstrophy_score(field, 8, periodic=True, vorticity_channel=vorticity_channel)
    assert score.shape == (1, 5, 7)
    grain = rank_assign(score, (3 / 35, 32 / 35))
    assert sorted(map(tuple, (grain[0] == 0).nonzero().tolist())) == sorted(blobs)


def test_router_logits_shape_and_gradient():
    factors, D = (2, 4, 8), 6
    router = Router(factors, D)
    feats = [torch.randn(2, D, 40 // f, 56 // f, requires_grad=True) for f in factors]
    logits = router(feats)
    assert logits.shape == (2, 3, 5, 7)
    logits.square().sum().backward()
    assert all(f.grad.abs().sum() > 0 for f in feats)


def expected_fineness(logits_BKHW):
    """Reference: expected number of levels finer than the coarsest, E = sum_k p_k (K - 1 - k)."""
    K = logits_BKHW.shape[1]
    steps = torch.arange(K - 1, -1, -1, dtype=logits_BKHW.dtype)
    return torch.einsum("bkhw,k->bhw", logits_BKHW.softmax(1), steps)


def test_fineness_log_odds_is_the_logit_difference_and_ranks_by_expected_fineness():
    logits = torch.randn(2, 2, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fineness_log_odds(logits), (logits[:, 0] - logits[:, 1]).double(), atol=1e-6)
    logits3 = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    e = expected_fineness(logits3.double()).flatten(1)
    order = fineness_log_odds(logits3).flatten(1).argsort(1)
    assert (e.gather(1, order).diff(dim=1) >= 0).all()
    # saturated gates: the expected fineness rounds to 1 in float32, the log-odds still tell them apart
    saturated = torch.tensor([[[[40.0, 50.0]]], [[[0.0, 0.0]]]]).permute(1, 0, 2, 3)  # (1, 2, 1, 2)
    assert expected_fineness(saturated)[0, 0, 0] == expected_fineness(saturated)[0, 0, 1]
    assert fineness_log_odds(saturated)[0, 0, 1] > fineness_log_odds(saturated)[0, 0, 0]
