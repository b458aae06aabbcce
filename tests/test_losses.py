import math
from types import SimpleNamespace

import pytest
import torch

from dynfield.models import gradient_loss, reconstruction_loss, spectral_loss, total_loss
from dynfield.models.losses import forward_differences


def test_spectral_loss_zero_positive_and_finite_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 40, generator=g)
    assert spectral_loss(x, x) == 0
    y = (x + 0.3 * torch.randn(x.shape, generator=g)).requires_grad_()
    loss = spectral_loss(y, x)
    assert loss > 0
    loss.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_spectral_loss_of_a_scaled_field_is_log_of_the_power_ratio_squared():
    x = torch.randn(1, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    assert spectral_loss(2 * x, x, eps=0.0).item() == pytest.approx(math.log(4) ** 2, rel=1e-5)
    # the relative floor only matters for shells far below the mean power
    assert spectral_loss(2 * x, x).item() == pytest.approx(math.log(4) ** 2, rel=1e-3)


def test_spectral_loss_floor_mutes_shells_without_power():
    """A target without small scales: noise in its empty shells costs little, a wrong large scale costs much."""
    n = 32
    y, x = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    target = torch.sin(2 * math.pi * x / n)[None, None]
    noisy = target + 1e-3 * torch.randn(1, 1, n, n)
    assert spectral_loss(noisy, target) < 0.01 * spectral_loss(0.5 * target, target)


def test_forward_differences_periodic_and_not():
    ramp = torch.arange(6.0).expand(1, 1, 4, 6)
    dx, dy = forward_differences(ramp, periodic=False)
    assert torch.equal(dx[..., :-1], torch.ones(1, 1, 4, 5)) and (dx[..., -1] == 0).all() and (dy == 0).all()
    dx, _ = forward_differences(ramp, periodic=True)
    assert (dx[..., -1] == -5).all()  # wraps around to the first column


def test_gradient_loss_ignores_offsets_and_respects_periodicity():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 2, 16, 20, generator=g), torch.randn(2, 2, 16, 20, generator=g)
    assert gradient_loss(x + 3.0, x) < 1e-6
    assert gradient_loss(y, x) > 0
    rolled = lambda t: torch.roll(t, (5, 7), dims=(-2, -1))  # noqa: E731
    assert gradient_loss(rolled(y), rolled(x), periodic=True).item() == pytest.approx(gradient_loss(y, x, periodic=True).item(), rel=1e-6)
    assert gradient_loss(rolled(y), rolled(x), periodic=False).item() != pytest.approx(gradient_loss(y, x, periodic=False).item(), rel=1e-3)


def test_reconstruction_loss_kinds():
    x, y = torch.zeros(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0)
    assert reconstruction_loss(y, x, "l1") == 2 and reconstruction_loss(y, x, "mse") == 4
    with pytest.raises(ValueError, match="'l1' or 'mse'"):
        reconstruction_loss(y, x, "huber")


def test_total_loss_weights_and_skips_terms():
    x = torch.randn(1, 2, 16, 16)
    out = SimpleNamespace(recon=x + 1.0, losses={"vq": torch.tensor(0.5), "budget": torch.tensor(0.25)})
    total, parts = total_loss(out, x, {"recon": 2.0, "spectral": 0.0, "gradient": 1.0, "vq": 1.0, "budget": 4.0}, recon_kind="mse")
    assert set(parts) == {"recon", "gradient", "vq", "budget"}
    assert parts["gradient"] == pytest.approx(0.0, abs=1e-6)
    assert total.item() == pytest.approx(2.0 * 1.0 + 0.5 + 4 * 0.25, rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss weights"):
        total_loss(out, x, {"perceptual": 1.0})
