"""Physics diagnostics against closed-form fields, invariants and known values."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from dynfield import physics


def grid(n, m=None, Ly=2 * math.pi, Lx=None):
    """Periodic grid (y, x) of shape (n, m) on a box Ly x Lx (default 2 pi square)."""
    m = n if m is None else m
    Lx = Ly if Lx is None else Lx
    return np.meshgrid(np.arange(n) * Ly / n, np.arange(m) * Lx / m, indexing="ij")


def taylor_green(n=32):
    """Stream function sin(x) sin(y): u = sin x cos y, v = -cos x sin y."""
    y, x = grid(n)
    return np.sin(x) * np.cos(y), -np.cos(x) * np.sin(y), x, y


def gaussian_vortex(n, centre, sigma=0.4):
    """Velocity of the Gaussian stream function exp(-r^2 / (2 sigma^2)) centred at (y0, x0)."""
    y, x = grid(n)
    dy, dx = y - centre[0], x - centre[1]
    psi = np.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return -dy / sigma**2 * psi, dx / sigma**2 * psi  # u = dpsi/dy, v = -dpsi/dx


def random_phase_field(n, slope, seed=0):
    """Real field whose shell-summed spectrum goes as k**slope: |f_hat| = |k|**((slope - 1) / 2)."""
    k1 = np.fft.fftfreq(n, 1 / n)
    k = np.sqrt(k1[:, None] ** 2 + k1[None, :] ** 2)
    k[0, 0] = np.inf  # zero mean
    noise_hat = np.fft.fft2(np.random.default_rng(seed).standard_normal((n, n)))
    # Unit-modulus Hermitian phases keep the field real and the amplitudes exact.
    return np.fft.ifft2(noise_hat / np.abs(noise_hat) * k ** ((slope - 1) / 2)).real


def minus_three_spectrum(k):
    """k**-3 with an empty k = 0 shell."""
    E = np.zeros_like(k)
    E[1:] = k[1:] ** -3.0
    return E


# ---------------------------------------------------------------------------
# Derivatives


def test_spectral_derivatives_are_exact_for_band_limited_fields():
    # Non-square grid on a box that is not 2*pi, to exercise dx and dy.
    Ly, Lx = 3.0, 5.0
    y, x = grid(24, 40, Ly, Lx)
    ax, ay = 2 * np.pi / Lx, 2 * np.pi / Ly
    f = np.sin(3 * ax * x) * np.cos(2 * ay * y) + np.cos(7 * ax * x)
    df_dy, df_dx = physics.gradient(f, dx=Lx / 40, dy=Ly / 24)
    np.testing.assert_allclose(
        df_dx, 3 * ax * np.cos(3 * ax * x) * np.cos(2 * ay * y) - 7 * ax * np.sin(7 * ax * x), atol=1e-10
    )
    np.testing.assert_allclose(df_dy, -2 * ay * np.sin(3 * ax * x) * np.sin(2 * ay * y), atol=1e-10)


def test_default_spacing_is_the_2pi_box():
    y, x = grid(16)
    np.testing.assert_allclose(physics.derivative(np.sin(x + 2 * y), axis=-2), 2 * np.cos(x + 2 * y), atol=1e-10)


def test_nyquist_mode_differentiates_to_zero():
    # cos(4x) on 8 points is the alternating Nyquist mode; its derivative is not resolvable.
    _, x = grid(1, 8)
    assert np.abs(physics.derivative(np.cos(4 * x), axis=-1)).max() < 1e-12


def test_finite_differences_converge_at_second_order():
    def max_error(n):
        # Non-periodic field on [0, 1]^2, grid including both ends.
        s = np.linspace(0, 1, n)
        y, x = np.meshgrid(s, s, indexing="ij")
        f = np.sin(3 * x) * np.exp(y)
        df_dy, df_dx = physics.gradient(f, dx=s[1], dy=s[1], periodic=False)
        return max(np.abs(df_dx - 3 * np.cos(3 * x) * np.exp(y)).max(), np.abs(df_dy - f).max())

    ratio = max_error(33) / max_error(65)
    assert 3.5 < ratio < 4.5


def test_finite_differences_are_exact_for_quadratics_including_boundaries():
    s = np.linspace(-1, 1, 9)
    y, x = np.meshgrid(s, s, indexing="ij")
    df_dy, df_dx = physics.gradient(x**2 + x * y, dx=0.25, dy=0.25, periodic=False)
    np.testing.assert_allclose(df_dx, 2 * x + y, atol=1e-12)
    np.testing.assert_allclose(df_dy, x, atol=1e-12)


def test_finite_differences_need_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        physics.derivative(np.zeros((2, 8)), axis=-2, periodic=False)


# ---------------------------------------------------------------------------
# Vorticity, divergence, Okubo-Weiss, Q


def test_taylor_green_closed_forms():
    u, v, x, y = taylor_green()
    omega = physics.vorticity(u, v)
    np.testing.assert_allclose(omega, 2 * np.sin(x) * np.sin(y), atol=1e-10)
    np.testing.assert_allclose(physics.divergence(u, v), 0, atol=1e-10)
    # s_n = 2 cos x cos y, s_s = 0, omega = 2 sin x sin y
    W = physics.okubo_weiss(u, v)
    np.testing.assert_allclose(W, 4 * np.cos(x) ** 2 * np.cos(y) ** 2 - 4 * np.sin(x) ** 2 * np.sin(y) ** 2, atol=1e-10)
    centre = (8, 8)  # (pi/2, pi/2): a vortex core, W = -omega^2
    assert W[centre] == pytest.approx(-4)
    np.testing.assert_allclose(physics.enstrophy(omega), 2 * np.sin(x) ** 2 * np.sin(y) ** 2, atol=1e-10)
    np.testing.assert_allclose(
        physics.palinstrophy(omega), 2 * (np.sin(x) ** 2 * np.cos(y) ** 2 + np.cos(x) ** 2 * np.sin(y) ** 2), atol=1e-10
    )
    assert physics.kinetic_energy(u, v).mean() == pytest.approx(0.25)
    assert physics.enstrophy(omega).mean() == pytest.approx(0.5)


def test_stream_function_velocity_is_divergence_free():
    psi = random_phase_field(64, slope=-3)
    dpsi_dy, dpsi_dx = physics.gradient(psi)
    u, v = dpsi_dy, -dpsi_dx
    div = physics.divergence(u, v)
    assert np.abs(div).max() < 1e-10 * np.abs(u).max()
    # The vorticity of that velocity is minus the Laplacian of psi.
    lap = physics.derivative(dpsi_dx, -1) + physics.derivative(dpsi_dy, -2)
    np.testing.assert_allclose(physics.vorticity(u, v), -lap, atol=1e-10 * np.abs(lap).max())


def test_finite_difference_vorticity_agrees_with_spectral_on_smooth_field():
    u, v, _, _ = taylor_green(64)
    err = np.abs(physics.vorticity(u, v, periodic=False) - physics.vorticity(u, v)).max()
    assert 1e-5 < err < 0.05  # second-order error at this resolution, not zero


def test_vortex_mask_marks_each_gaussian_core():
    n, sigma = 64, 0.4
    centres = [(np.pi, np.pi), (2.0, 4.5)]
    u, v = map(np.stack, zip(*(gaussian_vortex(n, c, sigma) for c in centres)))  # (2, n, n)
    mask = physics.vortex_mask(u, v)
    assert mask.shape == (2, n, n) and mask.dtype == bool
    y, x = grid(n)
    for c, m in zip(centres, mask):
        r = np.hypot(y - c[0], x - c[1])
        assert m[r < 0.5 * sigma].all()  # the core
        assert not m[r > 2 * sigma].any()  # far field and strain ring
        assert m.sum() > 0


def test_vortex_mask_threshold_uses_the_population_std_per_field():
    u, v = np.random.default_rng(7).standard_normal((2, 64, 6, 6))
    W = physics.okubo_weiss(u, v)
    expected = W < -0.2 * W.std(axis=(-2, -1), keepdims=True)
    np.testing.assert_array_equal(physics.vortex_mask(u, v, threshold=0.2), expected)


def test_q_criterion_of_rotation_is_positive_and_of_strain_negative():
    s = np.linspace(-1, 1, 5)
    z, y, x = np.meshgrid(s, s, s, indexing="ij")
    zero = np.zeros_like(x)
    h = dict(dx=0.5, dy=0.5, dz=0.5, periodic=False)
    rate = 1.5
    q_rot = physics.q_criterion(-rate * y, rate * x, zero, **h)  # solid-body rotation
    q_strain = physics.q_criterion(rate * x, -rate * y, zero, **h)  # pure strain
    np.testing.assert_allclose(q_rot, rate**2, atol=1e-12)
    np.testing.assert_allclose(q_strain, -(rate**2), atol=1e-12)


def test_q_criterion_of_a_2d_flow_is_minus_a_quarter_of_okubo_weiss():
    # For an incompressible planar flow Q = -W / 4; tests the periodic path and the z axis.
    u, v, _, _ = taylor_green(16)
    u3, v3 = np.broadcast_to(u, (8, 16, 16)), np.broadcast_to(v, (8, 16, 16))
    q = physics.q_criterion(u3, v3, np.zeros_like(u3))
    np.testing.assert_allclose(q, np.broadcast_to(-physics.okubo_weiss(u, v) / 4, q.shape), atol=1e-10)


def test_mismatched_components_are_rejected():
    with pytest.raises(ValueError, match="same shape"):
        physics.vorticity(np.zeros((8, 8)), np.zeros((8, 9)))


# ---------------------------------------------------------------------------
# Spectra


def test_power_spectrum_of_a_single_mode():
    y, x = grid(32)
    f = 2 * np.cos(3 * x + 4 * y)  # |k| = 5
    k, P = physics.power_spectrum(f)
    assert k[5] == 5 and P.shape == k.shape
    assert P[5] == pytest.approx(2.0)  # mean(f^2) = 2
    np.testing.assert_allclose(np.delete(P, 5), 0, atol=1e-20)


def test_power_spectrum_shells_round_to_nearest_integer():
    y, x = grid(32)
    _, P = physics.power_spectrum(np.cos(2 * x + 3 * y))  # |k| = 3.61: shell 4
    assert P[4] == pytest.approx(0.5) and P.argmax() == 4


def test_power_spectrum_shells_are_in_units_of_the_fundamental():
    # Box 4 pi wide and 2 pi tall at equal spacing: the fundamental is 1/2, and a
    # mode with 4 waves along x and 2 along y is in shell |(4, 4)| = 5.66 -> 6.
    y, x = grid(32, 64, Ly=2 * np.pi, Lx=4 * np.pi)
    f = np.cos(2 * x) * np.cos(2 * y)
    k, P = physics.power_spectrum(f, dx=4 * np.pi / 64, dy=2 * np.pi / 32)
    assert P.argmax() == 6 and P[6] == pytest.approx(0.25)


def test_power_spectrum_parseval_on_non_square_grid():
    f = np.random.default_rng(1).standard_normal((3, 24, 40)) + 0.3
    k, P = physics.power_spectrum(f)
    assert P.shape == (3, len(k))
    np.testing.assert_allclose(P.sum(-1), (f**2).mean(axis=(-2, -1)), rtol=1e-12)
    np.testing.assert_allclose(P[:, 0], f.mean(axis=(-2, -1)) ** 2, rtol=1e-12)


def test_energy_spectrum_parseval_and_taylor_green_shell():
    u, v, _, _ = taylor_green()
    k, E = physics.energy_spectrum(u, v)
    assert E.sum() == pytest.approx(physics.kinetic_energy(u, v).mean())
    assert E[1] == pytest.approx(0.25)  # all energy at |k| = sqrt(2), shell 1
    rng = np.random.default_rng(2)
    u, v = rng.standard_normal((2, 2, 32, 32))
    _, E = physics.energy_spectrum(u, v)
    np.testing.assert_allclose(E.sum(-1), physics.kinetic_energy(u, v).mean(axis=(-2, -1)), rtol=1e-12)


def test_spectral_slope_recovers_minus_three():
    k, P = physics.power_spectrum(random_phase_field(128, slope=-3))
    assert physics.spectral_slope(k, P, 4, 32) == pytest.approx(-3, abs=0.1)
    k, P = physics.power_spectrum(random_phase_field(128, slope=-5 / 3))
    assert physics.spectral_slope(k, P, 4, 32) == pytest.approx(-5 / 3, abs=0.1)


def test_spectral_slope_is_exact_on_a_power_law_and_keeps_batch_dims():
    k = np.arange(40.0)
    E = np.stack([minus_three_spectrum(k), 7 * k * minus_three_spectrum(k)])  # E[:, 0] = 0: outside the fit
    np.testing.assert_allclose(physics.spectral_slope(k, E, 2, 30), [-3, -2], atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 shells"):
        physics.spectral_slope(k, E, 5, 5)


def test_spectrum_error_is_the_mean_absolute_log_ratio():
    k = np.arange(20.0)
    E_ref = minus_three_spectrum(k)
    E = E_ref * np.exp(np.where(k % 2 == 0, 0.2, -0.2))
    assert physics.spectrum_error(E_ref, E) == pytest.approx(0.2)
    assert physics.spectrum_error(E_ref, E_ref) == 0
    # Only shells 3..5 off by a factor e: error 3/5 over shells 1..5.
    E = E_ref * np.where((k >= 3) & (k <= 5), np.e, 1)
    assert physics.spectrum_error(E_ref, E, kmax=5) == pytest.approx(3 / 5)
    E_zero_ref = E_ref.copy()
    E_zero_ref[7] = 0  # an empty reference shell is skipped, not a NaN
    assert np.isfinite(physics.spectrum_error(E_zero_ref, E))


def test_spectrum_match_wavenumber_on_constructed_spectra():
    k = np.arange(33.0)
    E_ref = minus_three_spectrum(k)
    factor = np.where(k <= 10, 1.05, 1.5)
    factor[20] = 1.0  # a later matching shell does not extend the run
    E = np.stack([E_ref * factor, E_ref * 0.98, E_ref * 1.2])
    np.testing.assert_array_equal(physics.spectrum_match_wavenumber(k, E_ref, E, tol=0.1), [10, 32, 0])
    assert physics.spectrum_match_wavenumber(k, E_ref, E[2], tol=0.25) == 32
    assert physics.spectrum_match_wavenumber(k, E_ref, E[1], kmax=16) == 16


def test_spectrum_error_is_differentiable_for_spectral_losses():
    u = torch.randn(2, 16, 16, dtype=torch.float64)
    u_hat = (u + 0.1 * torch.randn_like(u)).requires_grad_()
    _, P_ref = physics.power_spectrum(u)
    _, P = physics.power_spectrum(u_hat)
    physics.spectrum_error(P_ref, P).sum().backward()
    assert torch.isfinite(u_hat.grad).all() and u_hat.grad.abs().sum() > 0


# ---------------------------------------------------------------------------
# Distributions and metrics


def test_vorticity_pdf_is_a_normalised_density():
    omega = np.random.default_rng(3).standard_normal(200_000)
    centres, density = physics.vorticity_pdf(omega, bins=40, range=(-5, 5))
    assert centres.shape == density.shape == (40,)
    assert (density * 10 / 40).sum() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(density, scipy.stats.norm.pdf(centres), atol=0.01)


def test_wasserstein1_of_a_shift_is_the_shift():
    a = np.random.default_rng(4).standard_normal(1000)
    assert physics.wasserstein1(a, a + 0.7) == pytest.approx(0.7)
    b = np.random.default_rng(5).standard_normal((10, 37)) * 2
    assert physics.wasserstein1(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b.ravel()))


def test_psnr_and_relative_l2_known_values_per_channel():
    ref = np.zeros((2, 3, 8, 8))
    ref[..., 0, 0], ref[..., 1, 1] = -1, 1  # range 2 in every field
    offsets = np.array([0.1, 0.01, 1.0])[None, :, None, None]
    checkerboard = (-1.0) ** np.add.outer(np.arange(8), np.arange(8))
    est = ref + offsets * checkerboard  # changes the range, not the reference's
    expected = 10 * np.log10(4 / offsets[0, :, 0, 0] ** 2)  # 26.02, 46.02, 6.02 dB
    np.testing.assert_allclose(physics.psnr(ref, est), np.broadcast_to(expected, (2, 3)))
    np.testing.assert_allclose(physics.psnr(ref, est, data_range=1.0), np.broadcast_to(expected - 10 * np.log10(4), (2, 3)))
    ones = np.ones((4, 4))
    assert physics.relative_l2(ones, 1.1 * ones) == pytest.approx(0.1)
    assert physics.psnr(ref, ref)[0, 0] == np.inf


# ---------------------------------------------------------------------------
# Array kinds and batch dims


def test_numpy_in_numpy_out_torch_in_torch_out():
    u, v, _, _ = taylor_green(16)
    omega_np = physics.vorticity(u, v)
    omega_pt = physics.vorticity(torch.from_numpy(u), torch.from_numpy(v))
    assert isinstance(omega_np, np.ndarray) and isinstance(omega_pt, torch.Tensor)
    np.testing.assert_allclose(omega_pt.numpy(), omega_np)
    k, E = physics.energy_spectrum(torch.from_numpy(u).float(), torch.from_numpy(v).float())
    assert isinstance(k, torch.Tensor) and E.dtype == torch.float32
    k, E = physics.energy_spectrum(u, v)
    assert isinstance(k, np.ndarray) and isinstance(E, np.ndarray)
    assert isinstance(physics.vortex_mask(u, v), np.ndarray)
    assert isinstance(physics.wasserstein1(torch.zeros(3), torch.ones(3)), torch.Tensor)
    assert physics.kinetic_energy(np.ones((4, 4), dtype=int), np.ones((4, 4), dtype=int)).dtype == np.float64


@pytest.mark.parametrize(
    "fn",
    [physics.vorticity, physics.divergence, physics.okubo_weiss, physics.vortex_mask, physics.kinetic_energy],
)
def test_batch_dims_are_kept_and_samples_independent(fn):
    u, v = (torch.from_numpy(random_phase_field(16, -3, seed=s)) for s in (1, 2))
    u_B, v_B = torch.stack([u, 2 * v]).reshape(2, 1, 16, 16), torch.stack([v, u]).reshape(2, 1, 16, 16)
    out = fn(u_B, v_B)
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out[0, 0], fn(u, v))
    torch.testing.assert_close(out[1, 0], fn(2 * v, u))
