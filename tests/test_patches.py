import torch
import torch.nn.functional as F

from dynfield.models import DQVAE
from dynfield.models.patches import LinearPatches


def orthogonal_patches(channels, factors):
    """LinearPatches whose every level is an orthogonal block transform (code_dim = f_K^2 C) and its inverse."""
    D = channels * factors[-1] ** 2
    p = LinearPatches(channels, factors, D)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a, s, f in zip(p.analysis, p.synthesis, factors):
            n = channels * f * f
            q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
            a.weight.copy_(q[:, :n, None, None])  # (D, n): orthonormal columns
            s.weight.copy_(q[:, :n].T[:, :, None, None])  # its left inverse
            a.bias.zero_()
            s.bias.zero_()
    return p


def test_an_invertible_block_transform_returns_the_field_at_every_level_the_gate_picks():
    factors = (2, 4)
    p = orthogonal_patches(3, factors)
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(1))
    feats = p.encode(x)
    assert [tuple(f.shape) for f in feats] == [(2, 48, 8, 12), (2, 48, 4, 6)]
    grain = torch.randint(2, (2, 4, 6), generator=torch.Generator().manual_seed(2))
    gate = F.one_hot(grain, 2).permute(0, 3, 1, 2).float()
    assert 0 < grain.float().mean() < 1  # both levels in use
    torch.testing.assert_close(p.decode(gate, feats), x, atol=1e-5, rtol=0)


def test_each_region_is_decoded_from_its_own_level_only():
    p = orthogonal_patches(1, (2, 4))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    fine, coarse = p.encode(x)
    gate = torch.zeros(1, 2, 2, 2)
    gate[:, 1] = 1  # every region coarse
    gate[0, :, 0, 0] = torch.tensor([1.0, 0.0])  # but the top-left one fine
    spoiled = fine.clone()
    spoiled[..., 2:, :] = 1e3  # fine codes of regions that are coarse: must not matter
    spoiled[..., :, 2:] = 1e3
    torch.testing.assert_close(p.decode(gate, [spoiled, coarse]), x, atol=1e-4, rtol=0)


def test_a_model_with_the_linear_path_round_trips_its_config_and_tokens():
    torch.manual_seed(0)
    m = DQVAE(in_channels=2, factors=(4, 8), hidden=16, code_dim=16, codebook_size=32, stages=2,
              linear_patches=True).eval()
    assert m.config["linear_patches"] is True
    x = torch.randn(2, 2, 32, 40, generator=torch.Generator().manual_seed(4))
    tokens = m.encode(x, fine_ratio=0.5)
    again = DQVAE(**m.config).eval()
    again.load_state_dict(m.state_dict())
    torch.testing.assert_close(again.decode(tokens), m.decode(tokens))
    # the linear path is part of the decoded field: without it the output differs
    plain = DQVAE(**{**m.config, "linear_patches": False}).eval()
    plain.load_state_dict(m.state_dict(), strict=False)
    assert (plain.decode(tokens) - m.decode(tokens)).abs().max() > 1e-3
