import math

import torch

from dynfield.models.transformer import Rotary, Transformer


def scores(rotary, q, k, q_at, k_at):
    """(T, T) products of queries and keys turned by their places."""
    q, k = (Rotary.rotate(x, Rotary.turns(rotary.angles(at))) for x, at in ((q, q_at), (k, k_at)))
    return (q @ k.transpose(-1, -2))[0, 0]


def test_rotary_scores_depend_on_the_offset_alone_and_on_its_direction():
    torch.manual_seed(0)
    rotary = Rotary(16)
    q, k = torch.randn(2, 1, 1, 5, 16).unbind(0)
    at = torch.rand(1, 5, 2) * 8
    shift = torch.tensor([2.75, -1.5])
    assert torch.allclose(scores(rotary, q, k, at, at), scores(rotary, q, k, at + shift, at + shift), atol=1e-4)
    # the same distance in another direction scores differently
    flipped = at.flip(-1)
    assert not torch.allclose(scores(rotary, q, k, at, at), scores(rotary, q, k, at, flipped), atol=1e-2)


def test_periodic_rotary_takes_offsets_on_the_torus():
    torch.manual_seed(0)
    rotary = Rotary(16, period=(8, 4))
    q, k = torch.randn(2, 1, 1, 5, 16).unbind(0)
    at = torch.rand(1, 5, 2) * 4
    wrapped = at + torch.tensor([8.0, -4.0])  # one period down each axis: the same places on the torus
    assert torch.allclose(scores(rotary, q, k, at, at), scores(rotary, q, k, at, wrapped), atol=1e-4)
    plain = Rotary(16)
    assert not torch.allclose(scores(plain, q, k, at, at), scores(plain, q, k, at, wrapped), atol=1e-2)


def test_markers_are_not_turned():
    rotary = Rotary(8)
    at = torch.tensor([[[3.0, 1.0], [2.0, 5.0]]])
    angles = rotary.angles(at, torch.tensor([[True, False]]))
    assert angles[0, 0, 1].abs().max() == 0 and angles[0, 0, 0].abs().max() > 0
    assert math.isclose(float(rotary.freqs[0, 0]), 2 * math.pi / 0.5, rel_tol=1e-6)


def two_stream_masks(rounds):
    """The additive (content, query) masks of tokens revealed at `rounds` (B, T): no later, strictly earlier."""
    query, key = rounds[:, None, :, None], rounds[:, None, None, :]
    blocked = torch.tensor(-math.inf)
    return torch.where(key <= query, 0.0, blocked), torch.where(key < query, 0.0, blocked)


def test_two_stream_predicts_each_token_from_the_earlier_rounds_alone():
    # the query output of a token must be what a decoder computes knowing only
    # the tokens of earlier rounds: dropping every other token changes nothing
    torch.manual_seed(0)
    model = Transformer(16, depth=2, heads=2, dropout=0.0).eval()
    T = 12
    rounds = torch.randint(4, (1, T))  # several tokens share a round
    content, query = torch.randn(2, 1, T, 16).unbind(0)
    with torch.no_grad():
        full = model.two_stream(content, query, *two_stream_masks(rounds))
        for t in range(T):
            keep = (rounds[0] < rounds[0, t]).nonzero()[:, 0].tolist() + [t]
            alone = model.two_stream(content[:, keep], query[:, keep], *two_stream_masks(rounds[:, keep]))
            assert torch.allclose(alone[0, -1], full[0, t], atol=1e-5)
        # and the earlier tokens' content does reach it
        later = rounds[0] > rounds[0].min()
        moved = model.two_stream(content + torch.randn_like(content), query, *two_stream_masks(rounds))
        assert not torch.allclose(moved[0, later], full[0, later], atol=1e-3)
