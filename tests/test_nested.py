"""Nested tokens: a coarse code in every region, finer grains as refinements of it."""

import math

import pytest
import torch

from dynfield import checkpoint
from dynfield.evaluation import nominal_bits
from dynfield.models import DQVAE, Tokens, total_loss
from dynfield.models.allocation import rd_allocate, side_bits


def nested_model(factors=(4, 8), stages=2, **kw):
    torch.manual_seed(0)
    m = DQVAE(in_channels=2, factors=factors, hidden=16, code_dim=16, codebook_size=32, stages=stages,
              nested=True, train_fine_ratio=(0.0, 1.0), **kw)
    m.train()
    for seed in range(3):
        m(torch.randn(4, 2, 32, 32, generator=torch.Generator().manual_seed(seed)))  # every codebook from data
    return m.eval()


def smooth(B, n, seed=0):
    """Periodic fields with a steep spectrum and unit variance, two channels."""
    g = torch.Generator().manual_seed(seed)
    k = torch.sqrt(torch.fft.fftfreq(n)[:, None] ** 2 + torch.fft.rfftfreq(n)[None] ** 2) * n
    coeffs = torch.view_as_complex(torch.randn(B, 2, n, n // 2 + 1, 2, generator=g))
    x = torch.fft.irfft2(coeffs / (1 + k) ** 1.5, s=(n, n))
    return x / x.std()


def test_every_region_carries_the_coarse_codes_of_the_all_coarse_encoding():
    m = nested_model(factors=(2, 4, 8), stages=2)
    x = torch.randn(2, 2, 24, 40)
    coarse = m.encode(x, router="fixed", level=2).validate()
    mixed = m.encode(x, fine_ratio=0.6, router="random").validate()
    assert mixed.nested and (mixed.grain < 2).any() and (mixed.grain == 2).any()
    # the coarsest level is coded in every region, with the very codes of the all-coarse tokens
    assert torch.equal(mixed.stage_codes()[2], coarse.stage_codes()[2])
    # a finer level is present exactly where the grain map reaches it
    for k in (0, 1):
        assert torch.equal((mixed.stage_codes()[k] >= 0).any(1), mixed.level_mask(k))
        assert torch.equal(mixed.level_mask(k), (mixed.grain <= k).repeat_interleave(8 // m.factors[k], 1)
                           .repeat_interleave(8 // m.factors[k], 2))


@pytest.mark.parametrize("level, depth, codes", [(2, 1, 1), (2, 2, 2), (1, 1, 2 + 4), (1, 2, 2 + 8),
                                                   (0, 1, 2 + 8 + 16), (0, 2, 2 + 8 + 32)])
def test_a_region_pays_for_the_coarser_levels_at_full_depth(level, depth, codes):
    m = nested_model(factors=(2, 4, 8), stages=2)
    assert m.region_codes(level, depth) == codes
    t = m.encode(torch.randn(1, 2, 16, 24), router="fixed", level=level, depth=depth).validate()
    assert (t.count() == 6 * codes).all()
    assert m.tokens_per_field((16, 24), router="fixed", level=level, depth=depth) == 6 * codes


def test_tokens_of_the_other_kind_are_refused():
    m = nested_model()
    x = torch.randn(1, 2, 16, 16)
    t = m.encode(x, fine_ratio=0.5, router="random")
    flat = Tokens(t.grain, t.codes, t.factors, t.shape, t.codebook_size, t.depth, t.residual, nested=False)
    with pytest.raises(ValueError, match="grain map does not use level 1"):
        flat.validate()
    alternative = DQVAE(in_channels=2, factors=(4, 8), hidden=16, code_dim=16, codebook_size=32, stages=2).eval()
    with pytest.raises(ValueError, match="alternative levels"):
        alternative.decode(t)


def test_fine_regions_teach_the_coarse_encoder():
    """The residual a finer level codes is taken without gradient, so the coarse map learns from fine regions too."""
    m = nested_model()
    m.train()
    out = m(torch.randn(2, 2, 16, 16))
    assert (out.tokens.grain == 0).any()
    fine_only = DQVAE(in_channels=2, factors=(4, 8), hidden=16, code_dim=16, codebook_size=32, stages=2,
                      nested=True, router="fixed", fixed_level=0)
    fine_only.load_state_dict(m.state_dict(), strict=False)
    fine_only.train()
    loss = fine_only(torch.randn(2, 2, 16, 16)).recon.square().mean()
    loss.backward()
    coarse_head = fine_only.encoder.branches[-1]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in coarse_head.parameters())


@pytest.mark.slow
def test_refinements_lower_the_error_after_training():
    torch.manual_seed(0)
    m = DQVAE(in_channels=2, factors=(4, 8), hidden=16, code_dim=16, codebook_size=8, stages=2, nested=True,
              train_fine_ratio=(0.0, 1.0), linear_patches=True)
    x = smooth(4, 32)
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    m.train()
    for _ in range(250):
        loss, _ = total_loss(m(x), x, {"spectral": 0.0})
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    err = {(k, d): (m.decode(m.encode(x, router="fixed", level=k, depth=d)) - x).square().mean().item()
           for k in (0, 1) for d in (1, 2)}
    # a second coarse stage lowers the error, and the fine refinements on top of the full coarse ladder lower it again
    assert err[1, 1] > err[1, 2] > max(err[0, 1], err[0, 2])


def test_rd_allocation_counts_the_coarse_codes_under_a_fine_region():
    m = nested_model()
    x = torch.randn(2, 2, 16, 24)
    for bpv in (0.2, 0.5, 1.0):
        tokens = rd_allocate(m, x, bits_per_value=bpv).validate()
        bits = nominal_bits(tokens, m.quantizer.num_stages)
        assert (bits <= bpv * 2 * 16 * 24 + 1e-6).all()
        assert (bits >= 6 * math.log2(32) + side_bits(m, (2, 3)) - 1e-6).all()


def test_checkpoint_round_trip_keeps_the_refiners(tmp_path):
    m = nested_model()
    path = tmp_path / "nested.pt"
    checkpoint.save_checkpoint(path, m, kind="tokenizer", stats={}, variables=["a", "b"], periodic=True)
    loaded, _ = checkpoint.load_model(path)
    x = torch.randn(1, 2, 16, 16)
    t = m.encode(x, fine_ratio=0.5, router="random")
    assert loaded.nested and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), m.state_dict().values()))
    # the loaded model runs channels-last on a CPU, which changes the convolutions' rounding only
    assert torch.allclose(loaded.decode(t), m.decode(t), rtol=1e-5, atol=1e-5)


def test_nested_tokens_survive_the_codec(tmp_path):
    """Nested tokens go through the entropy coder and back: rate control spends more codes for more bits, and a
    bounded file, whose residual is taken against the encoder's own decoding of its tokens, keeps its bound."""
    import numpy as np
    import xarray as xr

    from dynfield.codec import compress_file, decompress_file
    from dynfield.data.dummy import dummy_dataset

    torch.manual_seed(0)
    model = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, periodic=False, stages=2,
                  nested=True)
    model.train()
    for _ in range(3):
        model(torch.randn(4, 1, 16, 16))
    ckpt = tmp_path / "nested.pt"
    checkpoint.save_checkpoint(ckpt, model.eval(), kind="tokenizer", stats={"field": {"mean": 0.0, "std": 1.0}},
                               variables=["field"], periodic=False)
    dummy_dataset(n_sample=2, n_time=2, ny=16, nx=24)[["u", "v"]].to_netcdf(tmp_path / "in.nc")
    codes = {}
    for bits in (0.8, 2.0):
        s = compress_file(tmp_path / "in.nc", tmp_path / "t.dfz", checkpoint=ckpt, bits_per_value=bits, progress=False)
        codes[bits] = s["tokens"]["codes"]
        decompress_file(tmp_path / "t.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    assert codes[2.0] > codes[0.8]
    compress_file(tmp_path / "in.nc", tmp_path / "b.dfz", checkpoint=ckpt, bits_per_value=2.0, rel_error=1e-3,
                  progress=False)
    decompress_file(tmp_path / "b.dfz", tmp_path / "back.nc", checkpoint=ckpt, progress=False)
    with xr.open_dataset(tmp_path / "in.nc") as ref, xr.open_dataset(tmp_path / "back.nc") as out:
        for v in ("u", "v"):
            a, b = ref[v].values, out[v].values
            assert np.abs(a - b).max() <= 1e-3 * (a.max() - a.min())
