import pytest
import torch

from dynfield.models import VectorQuantizer


def seeded(seed=0):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def test_nearest_is_the_squared_distance_argmin():
    g = seeded()
    vq = VectorQuantizer(codebook_size=50, dim=8)
    z = torch.randn(300, 8, generator=g)
    assert torch.equal(vq.nearest(z, chunk=64), torch.cdist(z, vq.embed).argmin(1))


def test_first_training_batch_initialises_the_codebook_from_data():
    g = seeded()
    vq = VectorQuantizer(codebook_size=16, dim=4).train()
    z = 5 + torch.randn(40, 4, generator=g)
    q, idx, loss = vq(z)
    # every code is one of the batch vectors, moved by one EMA step (1 %) toward its cluster
    spread = torch.cdist(z, z).mean()
    assert torch.cdist(vq.embed, z).min(1).values.max() < 0.01 * spread
    assert bool(vq.initialised)


def test_straight_through_and_commitment_gradients():
    g = seeded()
    vq = VectorQuantizer(codebook_size=8, dim=4).eval()
    z = torch.randn(2, 5, 4, generator=g, requires_grad=True)
    q, idx, loss = vq(z)
    assert q.shape == z.shape and idx.shape == (2, 5)
    assert torch.allclose(q, vq.embed[idx], atol=1e-6)
    (grad,) = torch.autograd.grad(q.sum(), z)
    assert torch.equal(grad, torch.ones_like(z))
    # the commitment loss pulls z toward its code: beta * mean |z - q|^2
    assert loss.item() == pytest.approx(0.25 * (z - vq.embed[idx]).square().mean().item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.allclose(grad, 0.25 * 2 * (z - vq.embed[idx]).detach() / z.numel(), atol=1e-7)


def test_eval_mode_leaves_the_codebook_alone():
    vq = VectorQuantizer(codebook_size=8, dim=4).eval()
    before = {k: v.clone() for k, v in vq.state_dict().items()}
    vq(torch.randn(30, 4))
    assert all(torch.equal(before[k], v) for k, v in vq.state_dict().items())


def test_ema_codebook_moves_toward_the_data():
    g = seeded()
    vq = VectorQuantizer(codebook_size=4, dim=3, decay=0.8, dead_code_threshold=0.0).train()
    vq(torch.randn(64, 3, generator=g))  # initialise from a cloud around 0
    target = torch.tensor([3.0, -2.0, 1.0])
    data = target + 0.01 * torch.randn(32, 3, generator=g)
    code = vq.nearest(data[:1]).item()
    distances = []
    for _ in range(15):
        assert (vq.nearest(data) == code).all()
        distances.append((vq.embed[code] - data.mean(0)).norm().item())
        vq(data)
    assert all(a > b for a, b in zip(distances, distances[1:]))
    assert distances[-1] < 0.1 * distances[0]


def test_dead_codes_are_restarted_on_batch_vectors():
    g = seeded()
    vq = VectorQuantizer(codebook_size=32, dim=4, decay=0.5, dead_code_threshold=0.1).train()
    vq(torch.randn(256, 4, generator=g))  # initialised on a wide cloud
    # now every input sits near one point: all but a few codes fall out of use
    data = lambda: 10 + 0.1 * torch.randn(256, 4, generator=g)  # noqa: E731
    vq.eval()
    usage_before = (vq.nearest(data()).unique().numel())
    vq.train()
    for _ in range(6):
        vq(data())
    # the restarted codes now lie on the data cloud, and the data uses many of them
    near = (vq.embed - 10).norm(dim=1) < 1.0
    assert near.sum() > 16
    vq.eval()
    vq(data())
    assert usage_before <= 2
    assert vq.codebook_stats()["usage"] * 32 > 8


def test_masked_rows_count_nowhere():
    """Rows outside the mask change neither the loss, nor the counts, nor the codebook."""
    g = seeded()
    z = torch.randn(100, 4, generator=g)
    mask = torch.rand(100, generator=g) < 0.4
    z_other = torch.where(mask[:, None], z, 7 * torch.randn(100, 4, generator=g))
    results = []
    for data in (z, z_other):
        torch.manual_seed(1)
        vq = VectorQuantizer(codebook_size=16, dim=4, decay=0.9).train()
        vq(z[mask])  # same initialisation for both
        _, _, loss = vq(data, mask)
        results.append((loss, vq.last_counts.clone(), vq.embed.clone(), vq.cluster_size.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[0][1].sum() == mask.sum()


def test_codebook_stats_for_a_known_assignment():
    vq = VectorQuantizer(codebook_size=8, dim=2).eval()
    vq.embed.copy_(torch.arange(16.0).view(8, 2) * 10)
    z = torch.cat([vq.embed[1].expand(5, 2), vq.embed[6].expand(5, 2)])
    vq(z)
    stats = vq.codebook_stats()
    assert stats["usage"] == pytest.approx(2 / 8)
    assert stats["perplexity"] == pytest.approx(2.0)


def test_rejects_wrong_vector_size():
    with pytest.raises(ValueError, match="vectors of size 4"):
        VectorQuantizer(codebook_size=8, dim=4)(torch.randn(3, 5))
