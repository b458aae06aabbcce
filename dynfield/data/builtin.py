"""The built-in data set from the solver: snapshots of ``NavierStokes2D`` as a CF dataset, cached on disk by their parameters."""

import hashlib
import inspect
import json
import math
import os
import pathlib
import uuid
from datetime import datetime, timezone

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from dynfield.conventions import CF_CONVENTIONS, COORD_ATTRS, SAMPLE, VARIABLE_ATTRS, X, Y

from .turbulence import NavierStokes2D


def generate(n_samples=256, *, resolution=128, seed=0, viscosity=1e-3, hyperviscosity=2e-13, hyperviscosity_order=4,
             drag=0.1, forcing="kolmogorov", forcing_wavenumber=4, forcing_amplitude=1.0, injection_rate=0.1,
             forcing_bandwidth=1.0, scalar_diffusivity=1e-3, scalar_gradient=1.0, trajectories=16,
             spinup_time=15.0, snapshot_interval=1.5, cfl=0.8, spinup_resolution=None, refine_time=2.0,
             progress=True):
    """Generate decorrelated snapshots of forced 2D turbulence with a passive scalar.

    ``trajectories`` independent random initial conditions are integrated
    together, spun up for ``spinup_time`` to the statistically steady state,
    then sampled every ``snapshot_interval``; sample i belongs to trajectory
    i // ceil(n_samples / trajectories). See NavierStokes2D for the physical
    parameters; the defaults and their measured turnover and correlation
    times are in datasets/turbulence/README.md.

    With ``spinup_resolution`` below ``resolution`` the spin-up runs on that
    coarser grid (a step there costs a small fraction of a fine one); the
    state then moves to the fine grid and is integrated for ``refine_time``
    more (about two turnover times, for the small scales to fill in) before
    the first snapshot. ``spinup_time`` counts the whole spin-up.

    Returns
    -------
    xarray.Dataset
        ``u``, ``v``, ``vorticity``, ``scalar`` (float32, dims (sample, y, x))
        with CF attributes and every parameter as a global attribute.
    """
    params = dict(locals())
    del params["progress"]
    per_trajectory = math.ceil(n_samples / min(trajectories, n_samples))
    batch = math.ceil(n_samples / per_trajectory)  # no more trajectories than the samples need
    # float32 is three times faster than float64 here; round-off does not
    # change the statistics of a chaotic flow, and the data are stored in float32.
    coarse = resolution if spinup_resolution is None else int(spinup_resolution)
    if not 0 < coarse <= resolution or (coarse < resolution and not 0 < refine_time <= spinup_time):
        raise ValueError(f"need spinup_resolution <= resolution ({resolution}) and 0 < refine_time <= spinup_time, "
                         f"got {spinup_resolution} and {refine_time}")

    def solver_at(n):
        return NavierStokes2D(n, batch, viscosity=viscosity, hyperviscosity=hyperviscosity,
                              hyperviscosity_order=hyperviscosity_order, drag=drag, forcing=forcing,
                              forcing_wavenumber=forcing_wavenumber, forcing_amplitude=forcing_amplitude,
                              injection_rate=injection_rate, forcing_bandwidth=forcing_bandwidth,
                              scalar_diffusivity=scalar_diffusivity, scalar_gradient=scalar_gradient, cfl=cfl,
                              seed=seed, dtype=torch.float32)

    total = spinup_time + per_trajectory * snapshot_interval
    snapshots = []  # per_trajectory entries of (4, B, n, n)
    with tqdm(total=round(total, 6), disable=not progress, desc="turbulence", unit="t") as bar:
        def spin(solver, span):  # in pieces, so the bar moves
            done = 0.0
            while done < span - 1e-9:
                piece = min(snapshot_interval, span - done)
                solver.advance(piece)
                done += piece
                bar.update(piece)

        solver = solver_at(coarse)
        solver.randomize(energy=1.0, peak_wavenumber=forcing_wavenumber)
        if coarse < resolution:
            spin(solver, spinup_time - refine_time)
            fine = solver_at(resolution)
            fine.set_state_from(solver)
            solver = fine
        spin(solver, refine_time if coarse < resolution else spinup_time)
        for _ in range(per_trajectory):
            solver.advance(snapshot_interval)
            bar.update(snapshot_interval)
            u, v = solver.velocity()
            snapshots.append(torch.stack([u, v, solver.vorticity, solver.scalar]).float())
    # (4, n_samples, n, n), trajectory-major
    fields = torch.stack(snapshots, dim=2).flatten(1, 2)[:, :n_samples].numpy()
    sample = np.arange(n_samples)

    coord = np.arange(resolution) * (2 * np.pi / resolution)
    names = ("u", "v", "vorticity", "scalar")
    ds = xr.Dataset(
        {name: ((SAMPLE, Y, X), field, dict(VARIABLE_ATTRS[name])) for name, field in zip(names, fields)},
        coords={
            X: (X, coord, dict(COORD_ATTRS[X])),
            Y: (Y, coord, dict(COORD_ATTRS[Y])),
            SAMPLE: (SAMPLE, sample, dict(COORD_ATTRS[SAMPLE])),
            "trajectory": (SAMPLE, sample // per_trajectory, {"long_name": "index of the independent trajectory"}),
            "simulation_time": (SAMPLE, spinup_time + (sample % per_trajectory + 1) * snapshot_interval,
                                {"units": "1", "long_name": "time since the random initial condition"}),
        },
    )
    ds.attrs = {
        "Conventions": CF_CONVENTIONS,
        "title": ("Decaying 2D turbulence" if forcing in ("decaying", "none") else
                  f"Forced 2D turbulence ({forcing} forcing)") + " with a passive scalar",
        "source": ("dynfield pseudo-spectral 2D Navier-Stokes solver: vorticity form, 2/3-rule dealiasing, "
                   "integrating-factor RK4 with CFL time step; scalar is the periodic fluctuation about "
                   "a mean gradient scalar_gradient along y"),
        "history": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} generated by dynfield.data.builtin.generate",
        "periodic": 1,
        **{k: v for k, v in params.items() if v is not None},  # netCDF has no None
    }
    return ds


_GENERATE = inspect.signature(generate)


def _dataset_params(params):
    """``params`` completed with generate's defaults, floats as floats, without ``progress``."""
    unknown = sorted(set(params) - set(_GENERATE.parameters))
    if unknown:
        raise TypeError(f"unknown turbulence data set parameter(s) {unknown}; known: {sorted(_GENERATE.parameters)}")
    bound = _GENERATE.bind(**params)
    bound.apply_defaults()
    resolved = {}
    for name, value in bound.arguments.items():
        # a full-resolution spin-up has no refinement: those two are left out, so
        # the names of data sets made before they existed stay the same
        if name == "progress" or (bound.arguments["spinup_resolution"] is None
                                  and name in ("spinup_resolution", "refine_time")):
            continue
        # 0 and 0.0 are the same viscosity and must give the same file
        resolved[name] = float(value) if isinstance(_GENERATE.parameters[name].default, float) else value
    return resolved


def ensure_dataset(directory, **params):
    """Path of the cached data set for ``params`` under ``directory``, generating it if missing.

    The file name carries a hash of all parameters (defaults included), so
    different parameters never share a file; it is written to a temporary
    file first and renamed, so an interrupted run leaves no partial data set.
    ``progress`` is passed on to generate and is not part of the hash.
    """
    progress = params.pop("progress", True)
    params = _dataset_params(params)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    directory = pathlib.Path(directory)
    path = directory / f"turbulence_{params['resolution']}px_{params['n_samples']}_{digest}.nc"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    ds = generate(**params, progress=progress)
    tmp = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"  # unique, so concurrent writers never clash
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
