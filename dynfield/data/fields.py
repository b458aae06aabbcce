"""From field datasets to normalised (C, H, W) tensors: statistics, augmentation, a torch Dataset.

Channel order is always the order of ``variables``. Normalisation is per
channel, ``(x - mean) / std`` with statistics from one streaming pass over the
data. Augmentations that move space also transform the channels correctly: a
reflection of x negates the x velocity component and every pseudo-scalar
(vorticity), see ``reflection_signs``.

Missing values: by default a NaN or Inf anywhere is an error that names the
variable and the index. With ``mask=True`` non-finite values are left out of
the statistics, set to 0 in the normalised tensors, and ``FieldDataset``
returns ``(x_CHW, valid_CHW)`` where ``valid`` is False at those points.
"""

import json
import os

import dask
import dask.array as da
import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from dynfield.conventions import PSEUDO_SCALARS, SAMPLE, TIME, VELOCITY_COMPONENTS, X, Y, Z
from dynfield.data.io import open_fields

# --------------------------------------------------------------------------- statistics


def compute_stats(ds, variables=None, *, mask=False, block_bytes=64 * 2**20):
    """Per-variable mean, std, min and max in one streaming pass.

    Blocks of at most ``block_bytes`` are read once each; their moments are
    merged with Chan et al.'s parallel update, in float64, so the result is
    stable for large offsets and any number of blocks.

    Parameters
    ----------
    ds : xarray.Dataset
    variables : list of str, optional
        Default: all data variables.
    mask : bool
        Leave non-finite values out instead of raising.
    block_bytes : int
        Largest block read at once.

    Returns
    -------
    dict
        ``{name: {"mean", "std", "min", "max", "count", "masked"}}``; std is the
        population std (ddof=0), ``masked`` counts the values left out.
    """
    variables = list(ds.data_vars) if variables is None else list(variables)
    _check_variables(ds, variables)
    tasks, n_blocks = [], {}
    for v in variables:
        data = ds[v].data if isinstance(ds[v].data, da.Array) else da.from_array(np.asarray(ds[v].data))
        lead = {i for i, d in enumerate(ds[v].dims) if d in (SAMPLE, TIME)}
        data = data.rechunk({i: "auto" if i in lead else -1 for i in range(data.ndim)},
                            block_size_limit=block_bytes)
        starts = [np.cumsum((0, *c[:-1])) for c in data.chunks]
        blocks = data.to_delayed().ravel()
        offsets = [tuple(int(s[i]) for s, i in zip(starts, idx)) for idx in np.ndindex(*data.numblocks)]
        n_blocks[v] = len(blocks)
        tasks += [dask.delayed(_block_moments)(b, off) for b, off in zip(blocks, offsets)]
    results = iter(dask.compute(*tasks))  # every block of every variable, read once
    stats = {}
    for v in variables:
        moments = [next(results) for _ in range(n_blocks[v])]
        bad = next((m["bad"] for m in moments if m["bad"] is not None), None)
        if bad is not None and not mask:
            raise _nonfinite_error(v, ds[v].dims, *bad)
        stats[v] = _merge_moments(v, moments)
    return stats


def _block_moments(block, offset):
    """count, mean, M2, min, max of the finite values; the first non-finite one (global index, value)."""
    block = np.asarray(block, dtype=np.float64)
    finite = np.isfinite(block)
    bad = None
    if not finite.all():
        local = np.unravel_index(np.argmin(finite), block.shape)
        bad = (tuple(int(o + i) for o, i in zip(offset, local)), float(block[local]))
        block = block[finite]
    n = block.size
    if n == 0:
        return {"n": 0, "masked": int((~finite).sum()), "bad": bad}
    mean = block.mean()
    centred = (block - mean).ravel()
    return {"n": n, "mean": mean, "m2": float(centred @ centred), "min": float(block.min()),
            "max": float(block.max()), "masked": int((~finite).sum()), "bad": bad}


def _merge_moments(name, moments):
    n, mean, m2 = 0, 0.0, 0.0
    lo, hi = np.inf, -np.inf
    for m in moments:
        if m["n"] == 0:
            continue
        total = n + m["n"]
        delta = m["mean"] - mean
        mean += delta * m["n"] / total
        m2 += m["m2"] + delta**2 * n * m["n"] / total
        n, lo, hi = total, min(lo, m["min"]), max(hi, m["max"])
    if n == 0:
        raise ValueError(f"variable {name!r} has no finite value")
    return {"mean": float(mean), "std": float(np.sqrt(m2 / n)), "min": lo, "max": hi, "count": n,
            "masked": sum(m["masked"] for m in moments)}


def _nonfinite_error(name, dims, index, value):
    where = ", ".join(f"{d}={i}" for d, i in zip(dims, index))
    return ValueError(f"non-finite value ({value}) in variable {name!r} at {where}; fix the data "
                      f"or pass mask=True to leave non-finite values out")


def _check_variables(ds, variables):
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise KeyError(f"variable(s) {missing} not in the dataset; available: {sorted(ds.data_vars)}")


def save_stats(stats, path):
    """Write statistics from ``compute_stats`` to a JSON file."""
    with open(path, "w") as f:
        json.dump(stats, f, indent=2)


def load_stats(path):
    """Read statistics written by ``save_stats``, checking every entry has a mean and a std."""
    with open(path) as f:
        stats = json.load(f)
    for name, entry in stats.items():
        if not (np.isfinite(entry.get("mean", np.nan)) and entry.get("std", -1) >= 0):
            raise ValueError(f"statistics of {name!r} in {path} lack a finite mean and a std >= 0: {entry}")
    return stats


def _mean_std(stats, variables, like):
    """(C, 1, 1) mean and std tensors; a constant channel (std 0) is only centred."""
    missing = [v for v in variables if v not in stats]
    if missing:
        raise KeyError(f"no statistics for {missing}; statistics cover {sorted(stats)}")
    mean = torch.tensor([stats[v]["mean"] for v in variables], dtype=like.dtype, device=like.device)
    std = torch.tensor([stats[v]["std"] or 1.0 for v in variables], dtype=like.dtype, device=like.device)
    return mean[:, None, None], std[:, None, None]


def normalise(x, stats, variables):
    """(x - mean) / std per channel; x is (C, H, W) or (B, C, H, W), channels in ``variables`` order."""
    mean, std = _mean_std(stats, variables, x)
    return (x - mean) / std


def denormalise(x, stats, variables):
    """Inverse of ``normalise``: x * std + mean per channel."""
    mean, std = _mean_std(stats, variables, x)
    return x * std + mean


def field_stats(x):
    """Mean and standard deviation (float64) of the finite values of one field; (0, 1) without any.

    The normalisation of a channel-agnostic tokenizer: each 2D field on its own.
    """
    f = np.asarray(x)[np.isfinite(x)].astype(np.float64)
    scale = float(np.abs(f).max(initial=0.0))
    if not 0 < scale < np.inf:
        return 0.0, 1.0
    g = f / scale  # scaled first: sums of values near the float64 limit would overflow
    mean, std = float(g.mean()) * scale, float(g.std()) * scale
    return mean, (std if std > 0 else 1.0)


# --------------------------------------------------------------------------- geometry


def reflection_signs(variables, axis):
    """Sign each channel takes when ``axis`` ("x" or "y") is reflected, as a (C,) tensor.

    -1 for the velocity component along ``axis`` (``VELOCITY_COMPONENTS``) and
    for pseudo-scalars (``PSEUDO_SCALARS``, e.g. vorticity); for the vector and
    tensor components that open_fields names ``<field>_<axes>`` (The Well's
    ``velocity_x``, ``stress_xy``) -1 per occurrence of ``axis`` in the
    suffix; +1 for everything else (scalars).
    """
    return torch.tensor([_reflection_sign(v, axis) for v in variables], dtype=torch.float32)


def _reflection_sign(name, axis):
    lname = name.lower()
    if lname in PSEUDO_SCALARS or lname in VELOCITY_COMPONENTS[axis]:
        return -1.0
    if any(lname in names for names in VELOCITY_COMPONENTS.values()):
        return 1.0
    base, _, suffix = lname.rpartition("_")
    if base and suffix and set(suffix) <= {X, Y, Z}:
        return (-1.0) ** suffix.count(axis)
    return 1.0


def pad_to_multiple(x, multiple, periodic=False):
    """Pad the last two axes at the end (bottom, right) up to a multiple of ``multiple``.

    Circular for periodic data, reflect otherwise (replicate where the pad is
    too wide to reflect). Crop back with ``x[..., :H, :W]``.

    Returns
    -------
    (tensor, (pad_h, pad_w))
    """
    H, W = x.shape[-2:]
    pad_h, pad_w = -H % multiple, -W % multiple
    if pad_h == pad_w == 0:
        return x, (0, 0)
    if periodic and (pad_h > H or pad_w > W):
        raise ValueError(f"cannot pad a periodic {H}x{W} field circularly to a multiple of {multiple}")
    mode = "circular" if periodic else "reflect" if pad_h < H and pad_w < W else "replicate"
    batched = x[None] if x.dim() == 3 else x
    out = F.pad(batched, (0, pad_w, 0, pad_h), mode=mode)
    return (out[0] if x.dim() == 3 else out), (pad_h, pad_w)


# --------------------------------------------------------------------------- torch Dataset


class FieldDataset(torch.utils.data.Dataset):
    """Normalised float32 (C, H, W) fields, one item per sample and time step.

    Parameters
    ----------
    source : xarray.Dataset, or paths for ``open_fields``
        Given paths, files are opened lazily in each process (DataLoader
        worker) on first use; no open file handle is ever pickled.
    variables : list of str, optional
        Channels, in order; default all data variables.
    stats : dict, optional
        As from ``compute_stats``; computed over the whole source if omitted.
    crop : int or (int, int), optional
        Random crop size; None keeps the full field.
    periodic : bool
        The domain is periodic: random circular rolls in y and x, circular padding.
    flips : bool
        Random reflections of x and of y, each with probability 1/2, with the
        channel signs of ``reflection_signs``.
    min_size : int
        Smallest accepted height and width (after cropping), e.g. one region
        of the coarsest grain; smaller fields are refused.
    multiple : int
        Items are padded at the bottom and right to a multiple of this;
        ``pad_hw`` says by how much, ``size_hw`` is the size before padding.
    mask : bool
        Allow non-finite values; items are then ``(x_CHW, valid_CHW)``.
    seed : int, optional
        Augmentations are drawn from (seed, epoch, index), the same in any
        worker; call ``set_epoch`` to vary them. Without a seed they come from
        torch's global generator (which DataLoader seeds per worker).
    open_kwargs : dict, optional
        Keyword arguments for ``open_fields`` when ``source`` is paths.
    channel_agnostic : bool
        One item per sample and variable: a (1, H, W) field normalised by its
        own mean and std (``field_stats``), the input of a channel-agnostic
        tokenizer; ``stats`` are then not used. Reflections keep the sign
        (the field's name says nothing here), and the sign is flipped with
        probability 1/2 when ``flips`` is set.

    Fields with a ``z`` dimension are refused: select a level first.
    """

    def __init__(self, source, variables=None, *, stats=None, crop=None, periodic=False, flips=False,
                 min_size=1, multiple=1, mask=False, seed=None, open_kwargs=None, channel_agnostic=False):
        self.paths = None if isinstance(source, xr.Dataset) else source
        self.open_kwargs = dict(open_kwargs or {})
        ds = source if self.paths is None else open_fields(source, variables, **self.open_kwargs)
        self.variables = list(ds.data_vars) if variables is None else list(variables)
        _check_variables(ds, self.variables)
        for v in self.variables:
            if Z in ds[v].dims:
                raise ValueError(f"variable {v!r} is 3-D (z of size {ds.sizes[Z]}); FieldDataset takes 2-D "
                                 f"fields: select a level first, e.g. ds.isel(z=0)")
            if Y not in ds[v].dims or X not in ds[v].dims:
                raise ValueError(f"variable {v!r} has dims {ds[v].dims}; a field needs both y and x")
        self.lead_dims = [d for d in (SAMPLE, TIME) if d in ds.dims]
        self.lead_sizes = [ds.sizes[d] for d in self.lead_dims]
        self.field_hw = (ds.sizes[Y], ds.sizes[X])
        self.crop = None if crop is None else (int(crop),) * 2 if np.isscalar(crop) else tuple(crop)
        if self.crop and (self.crop[0] > self.field_hw[0] or self.crop[1] > self.field_hw[1]):
            raise ValueError(f"crop {self.crop} is larger than the {self.field_hw[0]}x{self.field_hw[1]} fields")
        self.size_hw = self.crop or self.field_hw
        if min(self.size_hw) < min_size:
            raise ValueError(f"items of {self.size_hw[0]}x{self.size_hw[1]} are smaller than one region of the "
                             f"coarsest grain ({min_size}x{min_size}); use larger fields or a larger crop")
        self.multiple = multiple
        self.pad_hw = (-self.size_hw[0] % multiple, -self.size_hw[1] % multiple)
        self.periodic, self.flips, self.mask, self.seed, self.epoch = periodic, flips, mask, seed, 0
        self.channel_agnostic = channel_agnostic
        channels = 1 if channel_agnostic else len(self.variables)
        if channel_agnostic:
            self.stats = None
        else:
            self.stats = compute_stats(ds, self.variables, mask=mask) if stats is None else stats
            # (C, 1, 1), once: also checks that every channel has statistics
            self._mean, self._std = _mean_std(self.stats, self.variables, torch.zeros(0))

        def signs(axis):
            return torch.ones(1) if channel_agnostic else reflection_signs(self.variables, axis)

        # mask channels ride along through the geometric transforms with sign +1
        extra = torch.ones(channels if mask else 0)
        self._signs = {axis: torch.cat([signs(axis), extra])[:, None, None] for axis in (Y, X)}
        if self.paths is not None:
            ds.close()
            ds = None
        self._ds, self._pid = ds, os.getpid()

    def __len__(self):
        return int(np.prod(self.lead_sizes)) * (len(self.variables) if self.channel_agnostic else 1)

    def set_epoch(self, epoch):
        """Draw different augmentations for this epoch (with a seed)."""
        self.epoch = epoch

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.paths is not None:
            state["_ds"] = None
        return state

    def _dataset(self):
        if self.paths is not None and (self._ds is None or self._pid != os.getpid()):
            self._ds, self._pid = open_fields(self.paths, self.variables, **self.open_kwargs), os.getpid()
        return self._ds

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        variables = self.variables
        lead = index
        if self.channel_agnostic:
            lead, c = divmod(index, len(self.variables))
            variables = [self.variables[c]]
        where = {d: int(i) for d, i in zip(self.lead_dims, np.unravel_index(lead, self.lead_sizes))}
        # synchronous: an item is a few small reads, DataLoader workers give the
        # parallelism, and dask's thread pool does not survive a fork into a worker
        planes = self._dataset()[variables].isel(where).compute(scheduler="synchronous")
        x = np.stack([planes[v].transpose(Y, X).values for v in variables])
        valid = torch.from_numpy(np.isfinite(x))  # (C, H, W)
        if not self.mask and not valid.all():
            c, i, j = np.unravel_index(int(torch.argmin(valid.to(torch.uint8))), x.shape)
            raise _nonfinite_error(variables[c], (*where, Y, X), (*where.values(), i, j), float(x[c, i, j]))
        rng = self._generator(index)
        if self.channel_agnostic:
            mean, std = field_stats(x)
            sign = -1.0 if self.flips and torch.rand((), generator=rng) < 0.5 else 1.0
            x = torch.from_numpy(((x - mean) * (sign / std)).astype(np.float32))
        else:
            x = (torch.from_numpy(x.astype(np.float32)) - self._mean) / self._std
        if not self.mask:
            return self._augment(x, rng)
        z = self._augment(torch.cat([torch.where(valid, x, 0.0), valid.float()]), rng)
        x, valid = z.chunk(2)
        return x, valid > 0.5

    def _generator(self, index):
        if self.seed is None:
            return None  # torch's global generator
        state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(state))

    def _augment(self, x, rng):
        """Roll (periodic), reflect, crop, pad: (C, H, W) -> (C, h + pad_h, w + pad_w)."""
        H, W = x.shape[-2:]
        if self.periodic:
            x = torch.roll(x, (_randint(H, rng), _randint(W, rng)), dims=(-2, -1))
        if self.flips:
            for axis, dim in ((Y, -2), (X, -1)):
                if torch.rand((), generator=rng) < 0.5:
                    x = x.flip(dim) * self._signs[axis]
        if self.crop:
            top, left = _randint(H - self.crop[0] + 1, rng), _randint(W - self.crop[1] + 1, rng)
            x = x[:, top:top + self.crop[0], left:left + self.crop[1]]
        return pad_to_multiple(x, self.multiple, self.periodic)[0]


def _randint(n, rng):
    return int(torch.randint(n, (), generator=rng))
