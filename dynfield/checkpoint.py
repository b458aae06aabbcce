"""Checkpoints: state dicts plus everything needed to rebuild and use a model.

A checkpoint never holds a pickled module: it stores the model's class name
and constructor arguments, so it loads with ``weights_only=True`` and keeps
working when the code around it changes. A checkpoint alone is enough to
encode and decode: it carries the normalisation statistics and the channel
names too.

A prior (stage 2) checkpoint also carries its tokenizer: the tokenizer
checkpoint's content, its path and the SHA-256 of its weights, so a prior
checkpoint alone is enough to sample fields.
"""

import hashlib
import importlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from dynfield import paths
from dynfield.models import precision

FORMAT = "dynfield-checkpoint"
VERSION = 1


# Class name -> module. Imported only when a checkpoint of that class is loaded,
# so reading metadata (or a tokenizer) needs no prior code, and the reverse.
MODEL_CLASSES = {
    "DQVAE": "dynfield.models.dqvae",
    "ARPrior": "dynfield.models.prior",
    "MaskedPrior": "dynfield.models.masked_prior",
}


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


def save_checkpoint(path, model, *, kind, stats, variables, periodic, train_state=None, metrics=None, extra=None):
    """Write a checkpoint.

    Parameters
    ----------
    model : nn.Module with a ``config`` dict of its constructor arguments.
    kind : "tokenizer" or "prior".
    stats : per-variable normalisation statistics ``{name: {"mean":, "std":, ...}}``.
    variables : channel names, in channel order.
    train_state : optimizer/step/RNG state needed to resume training (optional).
    extra : further entries (plain values and tensors), e.g. a prior's
        ``tokenizer`` (see ``tokenizer_entry``) and ``data`` description.
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
    state.update(extra or {})
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


def build_model(state, map_location="cpu", where="checkpoint"):
    """The model of a checkpoint dictionary, in eval mode (on a CPU channels-last, ``precision.prepare``);
    `where` names it in errors."""
    name = state["model_class"]
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model class {name!r} in {where}; known: {sorted(MODEL_CLASSES)}")
    model = getattr(importlib.import_module(MODEL_CLASSES[name]), name)(**state["model_config"])
    model.load_state_dict(state["state_dict"])
    return precision.prepare(model, map_location)


def load_model(path, map_location="cpu"):
    """Rebuild the model stored in a checkpoint, in eval mode.

    Returns
    -------
    model, state : the module and the checkpoint dictionary (stats, variables, ...).
    """
    state = read_checkpoint(path, map_location)
    return build_model(state, map_location, path), state


def weights_hash(model):
    """SHA-256 (hex) of a model's state dict: names, dtypes, shapes and bytes of every tensor.

    A single-stage quantizer's buffers are named as before residual stages
    existed (``quantizer.embed``, not ``quantizer.stages.0.embed``), so files
    made with such a model still find it.
    """
    state = model.state_dict()
    if len(getattr(getattr(model, "quantizer", None), "stages", ())) == 1:
        state = {k.replace("quantizer.stages.0.", "quantizer.", 1): v for k, v in state.items()}
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def retire_bundled():
    """Keep the bundled tokenizer among the retired ones (``paths.retired_tokenizer``) before another
    replaces it, so that the files made with it still decode; its path there, or None if none is bundled."""
    if not paths.BUNDLED_TOKENIZER.is_file():
        return None
    model, state = load_model(paths.BUNDLED_TOKENIZER)
    target = paths.retired_tokenizer(weights_hash(model))
    atomic_save(state, target)
    return target


def bundle(run_dir, command, note=None):
    """Make a training run's tokenizer the bundled one (``make pretrained``).

    The tokenizer bundled before it is retired first (``retire_bundled``).
    Beside the new one go the run's metrics and ``provenance.json``: the
    `command`, the data settings, the steps, the training time, the machine
    and the SHA-256 of the weights (and a `note`, for what the command does
    not say). Returns the provenance.
    """
    from omegaconf import OmegaConf  # only here: the package's core reads checkpoints without Hydra

    run_dir, dest = Path(run_dir), paths.BUNDLED_TOKENIZER.parent
    model, state = load_model(run_dir / "tokenizer.pt")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = run_dir / ".hydra" / "config.yaml"
    provenance = {
        "command": command,
        "weights_sha256": weights_hash(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": metrics["steps"],
        "train_time_s": round(metrics["train_time_s"]),
        "dataset": OmegaConf.to_container(OmegaConf.load(config).dataset) if config.is_file() else None,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        **({"note": note} if note else {}),
    }
    retire_bundled()
    atomic_save(state, paths.BUNDLED_TOKENIZER)
    shutil.copyfile(run_dir / "metrics.csv", dest / "metrics.csv")
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (dest / "provenance.json").write_text(json.dumps(provenance, indent=2))
    return provenance


def tokenizer_entry(path, fine_ratio=None):
    """The ``tokenizer`` entry of a prior checkpoint, from a tokenizer checkpoint file.

    Holds the file's absolute ``path``, the ``sha256`` of its weights
    (``weights_hash``), the ``fine_ratio`` its tokens were
    encoded with (None: the router's own choice) and the ``checkpoint``
    content itself, less any training state.

    Returns
    -------
    entry, model : the dictionary and the tokenizer, in eval mode on the CPU.
    """
    state = read_checkpoint(path)
    if state["kind"] != "tokenizer":
        raise ValueError(f"{path} is a {state['kind']!r} checkpoint; expected a stage-1 tokenizer")
    model = build_model(state, where=path)
    content = {k: v for k, v in state.items() if k != "train_state"}
    entry = {"path": str(Path(path).resolve()), "sha256": weights_hash(model), "fine_ratio": fine_ratio,
             "checkpoint": content}
    return entry, model


def load_prior(path, map_location="cpu"):
    """Rebuild a prior and the tokenizer stored with it, both in eval mode.

    The stored tokenizer's weights must still hash to the recorded SHA-256.

    Returns
    -------
    prior, tokenizer, state : the two modules and the prior's checkpoint dictionary.
    """
    state = read_checkpoint(path, map_location)
    if state["kind"] != "prior":
        raise ValueError(f"{path} is a {state['kind']!r} checkpoint, not a prior; "
                         f"train one with `python -m dynfield.train stage=prior tokenizer=...`")
    prior = build_model(state, map_location, path)
    entry = state["tokenizer"]
    tokenizer = build_model(entry["checkpoint"], map_location, f"the tokenizer stored in {path}")
    if weights_hash(tokenizer) != entry["sha256"]:
        raise ValueError(f"the tokenizer stored in {path} does not match its recorded SHA-256 (damaged file)")
    return prior, tokenizer, state

