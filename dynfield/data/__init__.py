"""Data: files -> xarray.Dataset -> normalised (C, H, W) tensors, and the built-in turbulence set.

Dependency-light: numpy, xarray, dask, h5py, netCDF4 and torch; no Hydra.
"""

from .fields import (FieldDataset, compute_stats, denormalise, field_stats, load_stats, normalise, pad_to_multiple,
                     save_stats)
from .io import detect_layout, open_fields
from .builtin import ensure_dataset, generate
from .turbulence import NavierStokes2D

__all__ = [
    "FieldDataset",
    "NavierStokes2D",
    "compute_stats",
    "denormalise",
    "detect_layout",
    "ensure_dataset",
    "field_stats",
    "generate",
    "load_stats",
    "normalise",
    "open_fields",
    "pad_to_multiple",
    "save_stats",
]
