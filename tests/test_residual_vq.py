"""Residual VQ: every prefix of the ladder is a quantizer, deeper is closer, dropped stages learn nothing."""

import torch

from dynfield.models import DQVAE
from dynfield.models.quantizer import VectorQuantizer
from dynfield.models.residual_vq import ResidualVQ


def fitted(stages=3, n=2048, steps=60, seed=0):
    """A ladder fitted by its EMA updates to correlated Gaussian vectors, and those vectors."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(8, 8, generator=g)
    z = torch.randn(n, 8, generator=g) @ mix
    rvq = ResidualVQ(stages, codebook_size=32, dim=8, decay=0.8).train()
    for _ in range(steps):
        rvq(z)
    return rvq.eval(), z


def prefix_sums(rvq, idx):
    """(S, N, D): the depth-1, depth-2, ... sums of every stage's own code, from the stage codebooks."""
    return torch.stack([sum(rvq.stages[s].embed[idx[:, s]] for s in range(d)) for d in range(1, len(rvq.stages) + 1)])


def test_error_falls_with_every_stage():
    rvq, z = fitted(stages=4)
    idx = rvq.encode(z)
    errors = [(z - q).square().sum(1).mean().item() for q in prefix_sums(rvq, idx)]
    assert all(b < 0.8 * a for a, b in zip(errors, errors[1:])), errors
    # the prefix sum of stage codes is what lookup gives a row stopped at that depth
    for d in range(1, 5):
        stopped = torch.where(torch.arange(4) < d, idx, -1)
        assert torch.allclose(rvq.lookup(stopped), prefix_sums(rvq, idx)[d - 1])


def test_a_shallow_encode_searches_only_its_stages():
    rvq, z = fitted(stages=4)
    full, shallow = rvq.encode(z), rvq.encode(z, depth=2)
    assert torch.equal(shallow[:, :2], full[:, :2]) and (shallow[:, 2:] == 0).all()


def test_forward_quantizes_each_row_to_its_depth():
    rvq, z = fitted(stages=3)
    depth = torch.randint(1, 4, (len(z),), generator=torch.Generator().manual_seed(1))
    q, idx, loss = rvq(z, depth_N=depth)
    sums = prefix_sums(rvq, idx)  # (S, N, D)
    expected = sums[depth - 1, torch.arange(len(z))]
    assert torch.allclose(q, expected, atol=1e-6)
    assert torch.isclose(loss, 0.25 * (z - expected).square().mean(), rtol=1e-5)


def test_gradient_passes_straight_through_once():
    rvq, z = fitted(stages=3)
    z = z[:16].clone().requires_grad_()
    q, _, _ = rvq(z)
    q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # d(quantized)/dz = I, not I per stage


def test_stages_past_a_rows_depth_leave_their_codebook_alone():
    rvq, z = fitted(stages=3)
    rvq.train()
    before = [vq.cluster_size.clone() for vq in rvq.stages]
    rvq(z[:100], depth_N=torch.ones(100, dtype=torch.long))
    assert not torch.equal(rvq.stages[0].cluster_size, before[0])
    # nothing was assigned in stage 1: its counts only decayed, uniformly by the EMA factor
    assert torch.allclose(rvq.stages[1].cluster_size, before[1] * 0.8, rtol=1e-5)


def test_single_quantizer_checkpoints_load_into_the_first_stage():
    vq = VectorQuantizer(16, 4)
    vq.embed.normal_()
    old = {f"quantizer.{k}": v for k, v in vq.state_dict().items()}
    model = DQVAE(in_channels=1, factors=(2,), hidden=8, code_dim=4, codebook_size=16, router="fixed")
    model.load_state_dict({**{k: v for k, v in model.state_dict().items() if not k.startswith("quantizer.")}, **old})
    assert torch.equal(model.quantizer.stages[0].embed, vq.embed)
