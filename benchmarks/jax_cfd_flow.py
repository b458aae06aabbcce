"""Turbulence from another solver: jax-cfd's forced 2D Kolmogorov flow, written as netCDF.

The benchmarks compare codecs and tokenizers on data that dynfield's own
solver did not make. This runs jax-cfd's pseudo-spectral Navier-Stokes
solver (Crank-Nicolson RK4 on the vorticity), Kolmogorov forcing sin(4y)
with linear drag 0.1, viscosity 1e-3 (Re ~ 1000), on a periodic 2 pi box,
from a band-limited random initial velocity; after a spin-up it writes one
snapshot every `interval` time units: u, v and vorticity on (time, y, x),
float32, with the solver settings as attributes.

jax-cfd is not one of dynfield's dependencies; run this in an environment
that has it (``make bench-data`` makes one):

    python benchmarks/jax_cfd_flow.py --out datasets/jax_cfd/kolmogorov_256.nc \\
        [--resolution 256 --snapshots 40 --interval 2 --spinup 20 --seed 0]
"""

import argparse
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jax_cfd.base as cfd
import jax_cfd.spectral as spectral
import numpy as np
import xarray as xr

VISCOSITY = 1e-3
MAX_VELOCITY = 7.0  # sets the time step (CFL 0.5) and the initial condition's amplitude
PEAK_WAVENUMBER = 4  # of the initial condition


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="netCDF file to write")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--snapshots", type=int, default=40)
    p.add_argument("--interval", type=float, default=2.0, help="time units between snapshots")
    p.add_argument("--spinup", type=float, default=20.0, help="time units before the first snapshot")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    n = args.resolution
    grid = cfd.grids.Grid((n, n), domain=((0, 2 * jnp.pi), (0, 2 * jnp.pi)))
    dt = cfd.equations.stable_time_step(MAX_VELOCITY, 0.5, VISCOSITY, grid)
    equation = spectral.equations.ForcedNavierStokes2D(VISCOSITY, grid, smooth=True)  # sin(4y), drag 0.1
    step = spectral.time_stepping.crank_nicolson_rk4(equation, dt)
    steps_between = max(1, int(round(args.interval / dt)))
    advance = jax.jit(cfd.funcutils.repeated(step, steps_between))
    velocity = cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(args.seed), grid, MAX_VELOCITY,
                                                              PEAK_WAVENUMBER)
    w_hat = jnp.fft.rfftn(cfd.finite_differences.curl_2d(velocity).data)
    for _ in range(int(np.ceil(args.spinup / (steps_between * dt)))):
        w_hat = advance(w_hat)
    to_velocity = spectral.utils.vorticity_to_velocity(grid)
    u, v, w, t = [], [], [], []
    for i in range(args.snapshots):
        w_hat = advance(w_hat)
        u_hat, v_hat = to_velocity(w_hat)
        for out, field in ((u, u_hat), (v, v_hat), (w, w_hat)):
            # jax-cfd's arrays are indexed [x, y]: transposed, the last two dims are (y, x)
            out.append(np.asarray(jnp.fft.irfftn(field, s=(n, n)), dtype=np.float32).T)
        t.append((i + 1) * steps_between * dt)
        print(f"snapshot {i + 1}/{args.snapshots}", flush=True)
    coords = {"time": np.asarray(t) + args.spinup, "y": np.arange(n) * 2 * np.pi / n, "x": np.arange(n) * 2 * np.pi / n}
    dims = ("time", "y", "x")
    ds = xr.Dataset({"u": (dims, np.stack(u)), "v": (dims, np.stack(v)), "vorticity": (dims, np.stack(w))}, coords)
    ds.attrs.update(solver="jax-cfd pseudo-spectral (crank_nicolson_rk4)", forcing="kolmogorov sin(4y), drag 0.1",
                    viscosity=VISCOSITY, dt=float(dt), resolution=n, seed=args.seed, spinup=args.spinup,
                    interval=float(steps_between * dt))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".nc.tmp")
    os.close(fd)
    ds.to_netcdf(tmp)
    os.replace(tmp, out)
    print(f"wrote {out}: {args.snapshots} snapshots of {n}x{n}, dt {dt:.2e}, {steps_between} steps apart")


if __name__ == "__main__":
    main()
