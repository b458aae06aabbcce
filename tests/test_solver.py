"""The pseudo-spectral Navier-Stokes solver and the turbulence data set built on it."""

import inspect
import math

import numpy as np
import pytest
import torch
import xarray as xr

from dynfield.conventions import CF_CONVENTIONS, COORD_ATTRS, VARIABLE_ATTRS
from dynfield.data import builtin
from dynfield.data import NavierStokes2D, ensure_dataset, generate

UNFORCED = dict(forcing="none", drag=0.0, hyperviscosity=0.0, scalar_gradient=0.0)  # only viscosity left
TINY = dict(resolution=32, trajectories=2, spinup_time=0.5, snapshot_interval=0.25, progress=False)


def grid(n):
    x = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    return x[None, :], x[:, None]  # x varies along the last axis, y along the one before


def spectral_derivatives(f):
    """rfft2 coefficients of d/dx and d/dy of a periodic (..., n, n) field."""
    n = f.shape[-1]
    f_hat = torch.fft.rfft2(f)
    kx = torch.arange(n // 2 + 1, dtype=f.dtype)
    ky = torch.fft.fftfreq(n, 1.0 / n, dtype=f.dtype)[:, None]
    return 1j * kx * f_hat, 1j * ky * f_hat


@pytest.mark.parametrize("viscosity, hyperviscosity, order, drag", [(1e-2, 0.0, 4, 0.0), (1e-3, 1e-5, 2, 0.1)])
def test_taylor_green_vortex_decays_at_the_analytic_rate(viscosity, hyperviscosity, order, drag):
    # w = 2k cos(kx) cos(ky) is an exact Euler steady state (w is a function of
    # psi), so only the linear terms act on it: w(t) = w(0) exp(-rate t), with
    # |k|^2 = 2k^2. The integrating factor solves those exactly, so the error
    # is round-off, not truncation.
    n, k, t = 32, 3, 2.0
    solver = NavierStokes2D(n, viscosity=viscosity, hyperviscosity=hyperviscosity, hyperviscosity_order=order,
                            drag=drag, forcing="none", scalar_gradient=0.0)
    x, y = grid(n)
    solver.set_state(2 * k * torch.cos(k * x) * torch.cos(k * y))
    solver.advance(t)
    rate = viscosity * 2 * k**2 + hyperviscosity * (2 * k**2) ** order + drag
    decay = math.exp(-rate * t)
    u, v = solver.velocity()
    assert solver.time == t and solver.steps > 10
    exact = dict(rtol=0, atol=1e-10)  # amplitudes are O(1)-O(6): a relative error below 1e-10
    torch.testing.assert_close(solver.vorticity[0], 2 * k * torch.cos(k * x) * torch.cos(k * y) * decay, **exact)
    torch.testing.assert_close(u[0], -torch.cos(k * x) * torch.sin(k * y) * decay, **exact)
    torch.testing.assert_close(v[0], torch.sin(k * x) * torch.cos(k * y) * decay, **exact)


def test_kolmogorov_flow_approaches_the_laminar_profile():
    # From rest, the flow stays a single mode w(y) with v = 0, so advection
    # vanishes and w(t) = w_lam (1 - exp(-lambda t)), w_lam = -k_f A cos(k_f y) / lambda,
    # lambda = nu k_f^2 + alpha. This pins the sign and size of the forcing.
    n, k_f, amplitude, viscosity, drag, t = 32, 4, 0.5, 0.05, 0.1, 3.0
    solver = NavierStokes2D(n, viscosity=viscosity, hyperviscosity=0.0, drag=drag, forcing_wavenumber=k_f,
                            forcing_amplitude=amplitude, scalar_gradient=1.0, max_dt=0.01)
    solver.advance(t)
    lam = viscosity * k_f**2 + drag
    _, y = grid(n)
    expected = -k_f * amplitude * torch.cos(k_f * y) / lam * (1 - math.exp(-lam * t))
    # IF-RK4 integrates the constant forcing with an O(dt^4) error: ~1e-9 at dt = 0.01.
    torch.testing.assert_close(solver.vorticity[0], expected.expand(n, n), rtol=0, atol=1e-8)
    assert solver.scalar.abs().max() < 1e-12  # v = 0 carries no scalar across the gradient


def test_velocity_is_divergence_free_and_its_curl_is_the_vorticity():
    n = 64
    solver = NavierStokes2D(n, batch=3, seed=5)
    solver.randomize(energy=1.0, peak_wavenumber=6)
    u, v = solver.velocity()
    u_x, u_y = spectral_derivatives(u)
    v_x, v_y = spectral_derivatives(v)
    scale = u_x.abs().amax() + v_y.abs().amax()
    assert (u_x + v_y).abs().amax() / scale < 1e-12
    w_hat = torch.fft.rfft2(solver.vorticity)
    assert (v_x - u_y - w_hat).abs().amax() / w_hat.abs().amax() < 1e-12
    assert u.mean().abs() < 1e-14 and v.mean().abs() < 1e-14


def test_inviscid_unforced_run_conserves_energy_enstrophy_and_scalar_variance():
    # The 2/3-rule truncation makes the semi-discrete system a Galerkin
    # truncation of Euler, which conserves energy, enstrophy and scalar variance
    # exactly; what drifts is the time integrator. For advection (eigenvalues
    # on the imaginary axis) RK4 loses |R(iy)|^2 - 1 = -y^6/72 per step, so the
    # drift per unit time goes as dt^5: halving the step must shrink it ~32x.
    # Smooth start (spectral peak at k=3, u_rms=1, turnover 2pi/3) over ~3
    # turnovers, by which the enstrophy cascade has reached the cutoff. At
    # Courant number 0.2 the measured drifts are 2.6e-7, 6.2e-6 and 1.5e-5.
    def drifts(cfl):
        solver = NavierStokes2D(64, batch=2, viscosity=0.0, scalar_diffusivity=0.0, cfl=cfl, seed=1, **UNFORCED)
        solver.randomize(energy=0.5, peak_wavenumber=3)
        solver.fields_hat[1] = solver.fields_hat[0].roll(1, dims=0)  # some scalar: another trajectory's vorticity
        before = solver.energy(), solver.enstrophy(), solver.scalar.square().mean((1, 2))
        solver.advance(6.0)
        after = solver.energy(), solver.enstrophy(), solver.scalar.square().mean((1, 2))
        return np.array([((a - b) / b).abs().max().item() for a, b in zip(after, before)])

    fine, coarse = drifts(0.2), drifts(0.4)
    print("relative drift (energy, enstrophy, scalar variance):", fine, "order ratios:", coarse / fine)
    assert fine[0] < 1e-6 and fine[1] < 1e-5 and fine[2] < 3e-5
    assert np.all(coarse / fine > 16), "drift does not shrink at the integrator's order"


def test_scalar_with_the_vorticity_equation_stays_equal_to_the_vorticity():
    # Without forcing, drag and mean gradient, and with kappa = nu, the scalar
    # obeys the vorticity equation; started equal, the two must stay equal.
    solver = NavierStokes2D(64, batch=2, viscosity=2e-3, scalar_diffusivity=2e-3, seed=2, **UNFORCED)
    solver.randomize(energy=1.0, peak_wavenumber=4)
    solver.set_state(solver.vorticity, solver.vorticity)
    solver.advance(1.0)
    scale = solver.vorticity.abs().max().item()
    torch.testing.assert_close(solver.scalar, solver.vorticity, rtol=0, atol=1e-12 * scale)


def test_mean_gradient_feeds_the_scalar_through_v():
    # ds/dt = -G v at the first instant when s = 0.
    gradient, dt = 2.0, 1e-6
    solver = NavierStokes2D(32, batch=2, scalar_gradient=gradient, seed=4)
    solver.randomize(energy=1.0)
    _, v = solver.velocity()
    solver.step(dt)
    expected = -gradient * v * dt  # up to O(dt^2)
    torch.testing.assert_close(solver.scalar, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_stochastic_forcing_injects_energy_at_the_set_rate():
    # With no dissipation, the expected energy grows as injection_rate * t
    # (the nonlinear term conserves energy, the forcing is white in time).
    # The ensemble mean of 32 trajectories has a standard error of ~3 %.
    rate, t = 0.1, 2.0
    solver = NavierStokes2D(32, batch=32, viscosity=0.0, hyperviscosity=0.0, drag=0.0, forcing="stochastic",
                            injection_rate=rate, forcing_wavenumber=4, scalar_gradient=0.0, seed=3)
    solver.advance(t)
    energy = solver.energy()
    assert abs(energy.mean().item() / (rate * t) - 1) < 0.1
    k, spectrum = solver.energy_spectrum()
    torch.testing.assert_close(spectrum.sum(1), energy)
    # injected in the shell 3 <= |k| <= 5; the nonlinear transfer has moved ~5 % out by now
    assert spectrum.mean(0)[3:6].sum() > 0.9 * energy.mean()


def test_same_seed_gives_identical_runs_and_another_seed_does_not():
    def run(seed):
        solver = NavierStokes2D(32, batch=2, forcing="stochastic", seed=seed, dtype=torch.float32)
        solver.randomize()
        solver.advance(0.5)
        return solver.vorticity

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_bad_parameters_fail_early_with_their_name():
    with pytest.raises(ValueError, match="forcing"):
        NavierStokes2D(32, forcing="sinusoidal")
    with pytest.raises(ValueError, match="cfl"):
        NavierStokes2D(32, cfl=2.0)
    with pytest.raises(ValueError, match="shell"):
        NavierStokes2D(16, forcing="stochastic", forcing_wavenumber=12)
    with pytest.raises(TypeError, match="viscocity"):
        ensure_dataset("unused", viscocity=1e-3)


@pytest.mark.parametrize("forcing", ["kolmogorov", "stochastic"])
def test_generate_writes_cf_fields_that_match_each_other(forcing):
    ds = generate(5, seed=7, forcing=forcing, **TINY)
    assert dict(ds.sizes) == {"sample": 5, "y": 32, "x": 32}
    for name in ("u", "v", "vorticity", "scalar"):
        assert ds[name].dims == ("sample", "y", "x") and ds[name].dtype == np.float32
        for key in ("units", "long_name"):
            assert ds[name].attrs[key] == VARIABLE_ATTRS[name][key]
    for name in ("x", "y", "sample"):
        assert ds[name].attrs == COORD_ATTRS[name]
    np.testing.assert_allclose(ds.x.values, np.arange(32) * 2 * np.pi / 32)
    assert ds.attrs["Conventions"] == CF_CONVENTIONS and ds.attrs["periodic"] == 1
    assert {"title", "source", "history"} <= set(ds.attrs)
    assert ds.attrs["seed"] == 7 and ds.attrs["viscosity"] == 1e-3 and ds.attrs["forcing"] == forcing
    # 5 samples from 2 trajectories: 3 + 2, trajectory-major, one interval apart
    assert ds.trajectory.values.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(ds.simulation_time.values, [0.75, 1.0, 1.25, 0.75, 1.0])
    # the stored vorticity is the curl of the stored velocity (no channel mixed up)
    _, u_y = spectral_derivatives(torch.from_numpy(ds.u.values).double())
    v_x, _ = spectral_derivatives(torch.from_numpy(ds.v.values).double())
    curl = torch.fft.irfft2(v_x - u_y, s=(32, 32)).numpy()
    np.testing.assert_allclose(curl, ds.vorticity.values, atol=1e-5 * np.abs(ds.vorticity.values).max())
    assert np.abs(ds.scalar.values).max() > 0


def test_generate_runs_at_256():
    ds = generate(1, resolution=256, trajectories=1, spinup_time=0.05, snapshot_interval=0.05, progress=False)
    assert ds.vorticity.shape == (1, 256, 256) and np.isfinite(ds.vorticity.values).all()
    np.testing.assert_allclose(ds.x.values[1], 2 * np.pi / 256)


def test_generate_is_bitwise_deterministic_for_a_seed():
    a, b, c = generate(2, seed=3, **TINY), generate(2, seed=3, **TINY), generate(2, seed=4, **TINY)
    for name in ("u", "v", "vorticity", "scalar"):
        assert np.array_equal(a[name].values, b[name].values)
        assert not np.array_equal(a[name].values, c[name].values)


def test_ensure_dataset_caches_by_parameters(tmp_path, monkeypatch):
    params = dict(n_samples=2, **TINY)
    path = ensure_dataset(tmp_path, **params)
    assert path.exists() and path.parent == tmp_path
    with xr.open_dataset(path, engine="netcdf4") as ds:
        assert ds.vorticity.shape == (2, 32, 32) and ds.attrs["periodic"] == 1 and ds.attrs["resolution"] == 32

    def no_generation(*args, **kwargs):
        raise AssertionError("regenerated a cached data set")

    monkeypatch.setattr(builtin, "generate", no_generation)
    assert ensure_dataset(tmp_path, **params) == path
    assert ensure_dataset(tmp_path, **{**params, "forcing_amplitude": 1}) == path  # a default spelled out as an int
    with pytest.raises(AssertionError, match="regenerated"):
        ensure_dataset(tmp_path, **{**params, "seed": 1})
    monkeypatch.undo()
    other = ensure_dataset(tmp_path, **{**params, "seed": 1})
    assert other != path and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])  # no temporary left


def test_refinement_keeps_every_resolved_mode():
    coarse = NavierStokes2D(32, 2, seed=0)
    coarse.randomize(energy=0.7)
    coarse.advance(0.3)
    fine = NavierStokes2D(64, 2, seed=0)
    fine.set_state_from(coarse)
    assert fine.time == coarse.time
    torch.testing.assert_close(fine.energy(), coarse.energy(), rtol=1e-12, atol=0)
    torch.testing.assert_close(fine.enstrophy(), coarse.enstrophy(), rtol=1e-12, atol=0)
    # the same band-limited field: the fine grid's even points are the coarse grid's points
    torch.testing.assert_close(fine.vorticity[:, ::2, ::2], coarse.vorticity, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="coarser grid"):
        coarse.set_state_from(fine)


def test_coarse_spinup_changes_the_data_set_name_and_only_then(tmp_path):
    params = dict(n_samples=2, **{**TINY, "resolution": 64, "spinup_time": 0.6})
    default = ensure_dataset(tmp_path, **params)
    # a data set made before refinement existed keeps its name: the unused parameters are not hashed
    assert ensure_dataset(tmp_path, **params, spinup_resolution=None, refine_time=5.0) == default
    refined = ensure_dataset(tmp_path, **params, spinup_resolution=32, refine_time=0.3)
    assert refined != default
    with xr.open_dataset(refined) as ds:
        assert ds.vorticity.shape == (2, 64, 64) and np.isfinite(ds.vorticity.values).all()
        assert ds.attrs["spinup_resolution"] == 32 and ds.attrs["refine_time"] == 0.3
    with pytest.raises(ValueError, match="spinup_resolution"):
        generate(2, **{**TINY, "spinup_resolution": 64})


@pytest.mark.slow
def test_forced_turbulence_has_an_enstrophy_cascade_and_is_resolved():
    # Default Kolmogorov flow at the default resolution (generate's physics),
    # energy spectrum averaged over 10 time units after the 15-unit spin-up.
    solver = NavierStokes2D(128, batch=4, seed=0, dtype=torch.float32, **_default_physics())
    solver.randomize(energy=1.0, peak_wavenumber=4)
    solver.advance(15.0)
    spectra, fluxes = [], []
    for _ in range(20):
        solver.advance(0.5)
        spectra.append(solver.energy_spectrum()[1].double().mean(0))
        fluxes.append((solver.velocity()[1] * solver.scalar).mean().item())
    spectrum = torch.stack(spectra).mean(0).numpy()
    k = np.arange(len(spectrum))
    cutoff = 128 // 3  # last complete shell inside the 2/3-rule square

    def slope(k_min, k_max):
        fit = (k >= k_min) & (k <= k_max)
        return np.polyfit(np.log(k[fit]), np.log(spectrum[fit]), 1)[0]

    cascade, dissipation = slope(8, 25), slope(30, cutoff)  # forcing at 4; dissipation from ~30 on
    enstrophy_spectrum = k**2 * spectrum
    print(f"energy spectrum slope: {cascade:.2f} for 8 <= k <= 25, {dissipation:.2f} for 30 <= k <= {cutoff}; "
          f"enstrophy spectrum at the cutoff / peak: {enstrophy_spectrum[cutoff] / enstrophy_spectrum.max():.1e}")
    # steeper than k^-3 (Kraichnan) because the drag removes enstrophy at every scale
    assert -5.0 < cascade < -3.0
    # Resolved: the spectrum steepens into a dissipation range before the cutoff
    # (at 256^2, -5.6 over the same k). Without hyperviscosity at this
    # resolution a pile-up at the cutoff flattens it instead (measured -4.2).
    assert dissipation < cascade - 0.5
    assert enstrophy_spectrum[cutoff] < 2e-3 * enstrophy_spectrum.max()
    assert np.mean(fluxes) < 0  # the scalar is carried down its mean gradient (G > 0)


def _default_physics():
    """generate's defaults for the solver's parameters."""
    solver_names = inspect.signature(NavierStokes2D).parameters
    return {name: p.default for name, p in inspect.signature(generate).parameters.items()
            if name in solver_names and name not in ("resolution", "seed")}


def vortex_count(u, v, min_cells=4):
    """Connected Okubo-Weiss vortex regions (W < -0.2 sigma_W) of at least `min_cells` cells."""
    from scipy import ndimage

    from dynfield.physics import vortex_mask

    labels, n = ndimage.label(vortex_mask(u, v))
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= min_cells).sum())


@pytest.mark.slow
def test_decaying_turbulence_loses_energy_and_its_vortices_merge():
    ds = generate(16, resolution=64, trajectories=2, forcing="decaying", drag=0.0, forcing_wavenumber=12,
                  spinup_time=1.0, snapshot_interval=1.5, progress=False)
    assert ds.attrs["title"].startswith("Decaying")
    u, v = ds.u.values.astype(np.float64), ds.v.values.astype(np.float64)
    energy = 0.5 * (u**2 + v**2).mean((1, 2))
    for t in range(2):
        e = energy[ds.trajectory.values == t]
        assert (np.diff(e) < 0).all(), e  # no force: energy only falls
        assert e[-1] > 0.2 * e[0]  # but slowly: the inverse cascade keeps it in large vortices
    counts = [[vortex_count(u[i], v[i]) for i in np.flatnonzero(ds.trajectory.values == t)] for t in range(2)]
    for c in counts:
        assert c[-1] < 0.6 * c[0], counts  # merging leaves fewer, larger vortices
