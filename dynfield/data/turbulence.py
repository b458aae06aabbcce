"""The built-in turbulence data set: forced 2D Navier-Stokes with a passive scalar.

A pseudo-spectral solver on the periodic box [0, 2pi)^2 for the vorticity

    dw/dt + u.grad w = nu lap w - nu_h (-lap)^p w - alpha w + f

and a passive scalar fluctuation s about a mean gradient G in y (the full
scalar is G*y + s, of which only the periodic part s is simulated and stored):

    ds/dt + u.grad s = kappa lap s - nu_h (-lap)^p s - G v

The mean gradient is what keeps the scalar statistically steady: the flow
stirs it down the gradient, producing variance that diffusion removes.

Fields are indexed [..., y, x]. Spectral arrays hold Fourier-series
coefficients (amplitudes independent of the resolution) in the rfft layout,
kept only for the columns 0 <= kx < n/3 that the 2/3 rule retains: shape
(..., n, c) with c = (n - 1) // 3 + 1. Dropping the other columns leaves a
third less work in every elementwise operation and in the y transforms.
The velocity comes from the stream function (u = dpsi/dy, v = -dpsi/dx,
w = -lap psi), so it is divergence-free by construction. ``dynfield.data.builtin`` turns
its snapshots into the data set.
"""

import math

import torch

FORCINGS = ("kolmogorov", "stochastic", "decaying")
# Solver seeds of the built-in splits: training uses 0 and validation 1
# (conf/dataset/turbulence.yaml); benchmarks and analyses evaluate on this one.
HELD_OUT_SEED = 2


class NavierStokes2D:
    """Batched pseudo-spectral solver for forced 2D Navier-Stokes in vorticity form.

    Parameters
    ----------
    resolution : int
        Grid points per side (n).
    batch : int
        Number of independent trajectories advanced together.
    viscosity, hyperviscosity, hyperviscosity_order : float, float, int
        nu, nu_h and p in -nu_h (-lap)^p; ``hyperviscosity=0`` turns it off.
    drag : float
        Linear (Rayleigh) drag alpha on the vorticity.
    forcing : {"kolmogorov", "stochastic", "decaying", "none"}
        ``kolmogorov``: body force ``forcing_amplitude * sin(k_f y)`` along x.
        ``stochastic``: white-in-time forcing in the shell
        ``|k - k_f| <= forcing_bandwidth`` injecting energy at ``injection_rate``.
        ``decaying`` (or ``none``): no force; with ``drag=0`` freely decaying
        turbulence, whose vortices merge into fewer, larger coherent ones.
    forcing_wavenumber : int
        k_f; also the peak of ``generate``'s random initial spectrum.
    scalar_diffusivity : float
        kappa (the default equals the viscosity: Schmidt number 1).
    scalar_gradient : float
        Mean scalar gradient G along y.
    cfl : float
        Courant number dt * max(|u| + |v|) / dx of the adaptive time step.
    max_dt : float
        Upper bound on the step, for nearly motionless states.
    seed : int
        Seeds the random initial condition and the stochastic forcing.
    """

    def __init__(self, resolution=128, batch=1, *, viscosity=1e-3, hyperviscosity=2e-13, hyperviscosity_order=4,
                 drag=0.1, forcing="kolmogorov", forcing_wavenumber=4, forcing_amplitude=1.0,
                 injection_rate=0.1, forcing_bandwidth=1.0, scalar_diffusivity=1e-3, scalar_gradient=1.0,
                 cfl=0.8, max_dt=0.05, seed=0, dtype=torch.float64, device="cpu"):
        if forcing not in FORCINGS + ("none",):
            raise ValueError(f"forcing must be one of {FORCINGS + ('none',)}, got {forcing!r}")
        if resolution < 8 or batch < 1:
            raise ValueError(f"need resolution >= 8 and batch >= 1, got {resolution} and {batch}")
        if min(viscosity, hyperviscosity, drag) < 0 or hyperviscosity_order < 1:
            raise ValueError("viscosity, hyperviscosity and drag must be >= 0 and hyperviscosity_order >= 1")
        if not 0 < cfl <= 1.3:
            # IF-RK4 is stable for |lambda dt| < 2.8 on the imaginary axis; with the
            # 2/3 cutoff k_max = n/3 that is a Courant number of about 1.35.
            raise ValueError(f"cfl must be in (0, 1.3], got {cfl}")
        n = resolution
        self.n, self.batch, self.forcing = n, batch, forcing
        self.cfl, self.max_dt, self.dx = cfl, max_dt, 2 * math.pi / n
        self.scalar_gradient = scalar_gradient
        self.injection_rate = injection_rate
        self.dtype, self.device = dtype, device
        self.generator = torch.Generator(device).manual_seed(seed)
        self.time, self.steps = 0.0, 0

        kw = dict(dtype=dtype, device=device)
        c = (n - 1) // 3 + 1  # retained columns, 3 kx < n
        self.kx = torch.arange(c, **kw)  # (c,)
        self.ky = torch.fft.fftfreq(n, 1.0 / n, **kw)[:, None]  # (n, 1), integer wavenumbers
        self.k2 = self.kx ** 2 + self.ky ** 2  # (n, c)
        # (2, 1, 1, n, c): i kx and i ky, broadcast against (fields, B, n, c)
        self.ikxy = torch.stack([1j * self.kx.expand(n, c), 1j * self.ky.expand(n, c)])[:, None, None]
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / self.k2.clamp(min=1.0), torch.zeros_like(self.k2))
        # a column kx > 0 stands for its mirror image -kx too; kx = 0 has none
        self.weights = torch.where(self.kx > 0, 2.0, 1.0)  # (c,)
        # 2/3 rule: a product of modes with |k_j| < n/3 aliases only onto modes
        # outside that square, so truncating the nonlinear term to it is exact.
        # The mean (k = 0) is excluded: it is zero for w and conserved for s.
        self.mask = (3 * self.ky.abs() < n) & (self.k2 > 0)  # (n, c)

        hyper = hyperviscosity * self.k2 ** hyperviscosity_order
        # (2, 1, n, c): linear operator of (vorticity, scalar), integrated exactly by the integrating factor
        self.linear = torch.stack([-viscosity * self.k2 - hyper - drag, -scalar_diffusivity * self.k2 - hyper])[:, None]

        self.forcing_hat = torch.zeros(n, c, dtype=self._complex, device=device)
        if forcing == "kolmogorov":
            y = torch.arange(n, **kw) * self.dx
            f_y = -forcing_wavenumber * forcing_amplitude * torch.cos(forcing_wavenumber * y)  # curl of A sin(k_f y) x
            self.forcing_hat = self._rfft(f_y[:, None].expand(n, n)) * self.mask
        k = self.k2.sqrt()
        self.forcing_shell = self.mask & ((k - forcing_wavenumber).abs() <= forcing_bandwidth)
        if forcing == "stochastic" and not self.forcing_shell.any():
            raise ValueError(f"the forcing shell around k_f={forcing_wavenumber} holds no resolved mode at n={n}")

        # (2, B, n, c): spectral vorticity and scalar, zero until set_state or randomize
        self.fields_hat = torch.zeros(2, batch, n, c, dtype=self._complex, device=device)

    @property
    def _complex(self):
        return torch.complex128 if self.dtype == torch.float64 else torch.complex64

    # Two 1-D transforms rather than rfft2/irfft2: about twice as fast on CPU,
    # and the y transforms see only the retained columns.
    def _rfft(self, x):
        """(..., n, n) real -> (..., n, c) retained coefficients."""
        return torch.fft.fft(torch.fft.rfft(x, norm="forward")[..., : self.kx.numel()], dim=-2, norm="forward")

    def _irfft(self, x_hat):
        """(..., n, c) coefficients -> (..., n, n); irfft pads the dropped columns with zeros."""
        return torch.fft.irfft(torch.fft.ifft(x_hat, dim=-2, norm="forward"), n=self.n, norm="forward")

    # ---------------------------------------------------------------- state
    def set_state(self, vorticity, scalar=None):
        """Set the fields from physical-space arrays of shape (B, n, n) or (n, n).

        Both are projected onto the dealiased modes with zero mean.
        """
        w = torch.as_tensor(vorticity, dtype=self.dtype, device=self.device).expand(self.batch, self.n, self.n)
        s = torch.zeros_like(w) if scalar is None else torch.as_tensor(scalar, dtype=self.dtype, device=self.device)
        self.fields_hat = self._rfft(torch.stack([w, s.expand_as(w)])) * self.mask

    def set_state_from(self, other):
        """Take the state of a solver on a coarser (or equal) grid: every mode it resolves, the rest zero.

        Coefficients are Fourier-series amplitudes, independent of the
        resolution, so the copy needs no rescaling; the finer grid then
        develops the small scales the coarse one could not hold.
        """
        if other.n > self.n or other.batch != self.batch:
            raise ValueError(f"can refine from a coarser grid with the same batch, got {other.n}x{other.n} "
                             f"(batch {other.batch}) into {self.n}x{self.n} (batch {self.batch})")
        rows = (torch.fft.fftfreq(other.n, 1.0 / other.n).long() % self.n).to(self.device)  # ky of each coarse row
        fields_hat = torch.zeros_like(self.fields_hat)
        fields_hat[:, :, rows, : other.kx.numel()] = other.fields_hat.to(fields_hat.dtype)
        self.fields_hat = fields_hat * self.mask
        self.time = other.time

    def randomize(self, energy=0.5, peak_wavenumber=4.0):
        """Random vorticity (Gaussian, spectrum peaked at ``peak_wavenumber``) of the given energy; zero scalar."""
        noise = torch.randn(self.batch, self.n, self.n, generator=self.generator, dtype=self.dtype, device=self.device)
        k = self.k2.sqrt()
        # energy spectrum ~ k^3 exp(-(k/k0)^2) per shell, i.e. |w_k|^2 ~ k^4 exp(-(k/k0)^2) per mode
        w_hat = self._rfft(noise) * k ** 2 * torch.exp(-0.5 * (k / peak_wavenumber) ** 2) * self.mask
        w_hat = w_hat * (energy / self._energy(w_hat))[:, None, None].sqrt()
        self.fields_hat = torch.stack([w_hat, torch.zeros_like(w_hat)])

    @property
    def vorticity(self):
        """Vorticity dv/dx - du/dy, (B, n, n)."""
        return self._irfft(self.fields_hat[0])

    @property
    def scalar(self):
        """Passive scalar fluctuation about the mean gradient, (B, n, n)."""
        return self._irfft(self.fields_hat[1])

    def velocity(self):
        """Velocity components (u, v), each (B, n, n)."""
        psi_hat = self.fields_hat[0] * self.inv_k2
        u_hat, v_hat = 1j * self.ky * psi_hat, -1j * self.kx * psi_hat
        return self._irfft(u_hat), self._irfft(v_hat)

    def _energy(self, w_hat):
        return 0.5 * (w_hat.abs() ** 2 * self.inv_k2 * self.weights).sum(dim=(-2, -1))

    def energy(self):
        """Kinetic energy per unit area, mean of (u^2 + v^2) / 2, (B,)."""
        return self._energy(self.fields_hat[0])

    def enstrophy(self):
        """Enstrophy per unit area, mean of w^2 / 2, (B,)."""
        return 0.5 * (self.fields_hat[0].abs() ** 2 * self.weights).sum(dim=(-2, -1))

    def energy_spectrum(self):
        """Energy per integer wavenumber shell |k| in [k - 1/2, k + 1/2).

        Returns
        -------
        k : (K,) tensor of shell wavenumbers 0..K-1
        spectrum_BK : (B, K) tensor; its sum over k is ``energy()``
        """
        shell = self.k2.sqrt().round().long().flatten()  # (n * c,)
        e = (0.5 * self.fields_hat[0].abs() ** 2 * self.inv_k2 * self.weights).flatten(1)  # (B, n * c)
        spectrum_BK = torch.zeros(self.batch, int(shell.max()) + 1, dtype=self.dtype, device=self.device)
        spectrum_BK.index_add_(1, shell, e)
        return torch.arange(spectrum_BK.shape[1], device=self.device), spectrum_BK

    # ---------------------------------------------------------------- dynamics
    def _tendency(self, z_hat):
        """Nonlinear and forcing terms of (w, s), and the maximum of |u| + |v|.

        Advection in Jacobian form, u.grad q = psi_y q_x - psi_x q_y, with all
        six derivatives of (w, s, psi) taken by one broadcast multiply and one
        batched inverse FFT: the step's cost is these FFTs.
        """
        psi_hat = z_hat[0] * self.inv_k2
        grads_hat = self.ikxy * torch.cat([z_hat, psi_hat[None]])  # (2, 3, B, n, c): d/dx, d/dy of w, s, psi
        grads = self._irfft(grads_hat)  # (2, 3, B, n, n)
        psi_x, psi_y = grads[0, 2], grads[1, 2]
        advection_hat = self._rfft(psi_y * grads[0, :2] - psi_x * grads[1, :2]) * self.mask  # (2, B, n, c)
        dw = self.forcing_hat - advection_hat[0]
        ds = self.scalar_gradient * grads_hat[0, 2] - advection_hat[1]  # -G v, with v = -psi_x
        return torch.stack([dw, ds]), (psi_x.abs() + psi_y.abs()).amax()

    def step(self, dt=None, *, max_dt=None):
        """Advance one step of integrating-factor RK4; returns the step taken.

        The integrating factor exp(L dt) solves viscosity, hyperviscosity, drag
        and diffusion exactly, so their stiffness sets no step limit and a
        decaying mode decays at its exact rate. Classical RK4 for the rest is
        fourth order and its stability region covers the imaginary axis up to
        2.8, enough for advection at the Courant numbers allowed here. Without
        ``dt`` the step is the CFL step, capped by ``max_dt`` (default: the
        solver's).
        """
        k1, speed = self._tendency(self.fields_hat)
        if dt is None:
            cap = self.max_dt if max_dt is None else max_dt
            dt = cap if speed == 0 else min(cap, self.cfl * self.dx / float(speed))
        e = torch.exp(self.linear * (dt / 2))  # (2, 1, n, c): exp(L dt/2)
        z = self.fields_hat
        ez = e * z
        k2, _ = self._tendency(ez + dt / 2 * (e * k1))
        k3, _ = self._tendency(ez + dt / 2 * k2)
        k4, _ = self._tendency(e * (ez + dt * k3))
        z = e * (ez + dt / 6 * (e * k1 + 2 * (k2 + k3))) + dt / 6 * k4
        if self.forcing == "stochastic":
            z[0] += math.sqrt(dt) * self._forcing_increment()
        self.fields_hat = z
        self.time += dt
        self.steps += 1
        return dt

    def _forcing_increment(self):
        """A white-noise vorticity draw in the forcing shell, scaled to inject exactly ``injection_rate``.

        Adding sqrt(dt) * xi raises the expected energy by dt * sum |xi_k|^2 / (2 k^2),
        whatever the state, since the cross term has zero mean. Normalising every
        draw makes that sum equal the injection rate exactly rather than on average.
        """
        noise = torch.randn(self.batch, self.n, self.n, generator=self.generator, dtype=self.dtype, device=self.device)
        xi_hat = self._rfft(noise) * self.forcing_shell
        return xi_hat * (self.injection_rate / self._energy(xi_hat))[:, None, None].sqrt()

    def advance(self, t):
        """Integrate over a time span ``t``, landing on it exactly; returns the number of steps."""
        end, steps = self.time + t, 0
        while end - self.time > 1e-9 * self.max_dt:
            self.step(max_dt=min(self.max_dt, end - self.time))
            steps += 1
        self.time = end
        return steps
