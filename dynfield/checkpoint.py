"""Checkpoints: state dicts plus everything needed to rebuild and use a model.

A checkpoint never holds a pickled module: it stores the model's class name
and constructor arguments, so it loads with ``weights_only=True`` and keeps
working when the code around it changes. A checkpoint alone is enough to
encode and decode: it carries the normalisation statistics and the channel
names too.
"""

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "dynfield-checkpoint"
VERSION = 1


def _model_classes():
    # Imported lazily so that reading a checkpoint's metadata needs no model code.
    from .models import DQVAE

    return {"DQVAE": DQVAE}


def atomic_save(obj, path):
    """``torch.save`` to a temporary file in the same directory, then rename.

    A crash mid-write leaves the previous file (or none), never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_checkpoint(path, model, *, kind, stats, variables, periodic, train_state=None, metrics=None):
    """Write a checkpoint.

    Parameters
    ----------
    model : nn.Module with a ``config`` dict of its constructor arguments.
    kind : "tokenizer" or "prior".
    stats : per-variable normalisation statistics ``{name: {"mean":, "std":, ...}}``.
    variables : channel names, in channel order.
    train_state : optimizer/step/RNG state needed to resume training (optional).
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model_class": type(model).__name__,
        "model_config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "stats": stats,
        "variables": list(variables),
        "periodic": bool(periodic),
        "metrics": metrics or {},
    }
    if train_state is not None:
        state["train_state"] = train_state
    atomic_save(state, path)


def read_checkpoint(path, map_location="cpu"):
    """Load and validate a checkpoint's dictionary (no model is built)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file
        raise ValueError(f"{path} is not a readable dynfield checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dynfield checkpoint")
    if state["version"] > VERSION:
        raise ValueError(f"{path} has checkpoint format version {state['version']}; this dynfield reads up to {VERSION}")
    return state


def load_model(path, map_location="cpu"):
    """Rebuild the model stored in a checkpoint, in eval mode.

    Returns
    -------
    model, state : the module and the checkpoint dictionary (stats, variables, ...).
    """
    state = read_checkpoint(path, map_location)
    classes = _model_classes()
    if state["model_class"] not in classes:
        raise ValueError(f"unknown model class {state['model_class']!r} in {path}; known: {sorted(classes)}")
    model = classes[state["model_class"]](**state["model_config"])
    model.load_state_dict(state["state_dict"])
    return model.to(map_location).eval(), state

