"""The training harness shared by both stages: data splits, devices, logging, schedules, resume.

Hydra stays out of here: the functions take plain config objects (any
attribute access works) and the entry point, ``dynfield.train``, composes them.
"""

import csv
import math
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from . import checkpoint
from .conventions import SAMPLE, TIME
from .data import ensure_dataset, open_fields


# ---------------------------------------------------------------------------
# Data


def open_splits(cfg_data, data_dir):
    """The train and validation xarray.Datasets of a data set config."""
    if cfg_data.source == "generated":
        gen = OmegaConf.to_container(cfg_data.generator)
        train_path = ensure_dataset(data_dir / cfg_data.name, **gen, **cfg_data.train)
        val_path = ensure_dataset(data_dir / cfg_data.name, **gen, **cfg_data.val)
        return open_fields(train_path, cfg_data.variables), open_fields(val_path, cfg_data.variables)
    variables = list(cfg_data.variables) if cfg_data.variables is not None else None
    dims = OmegaConf.to_container(cfg_data.dims) if cfg_data.dims is not None else None
    ds = open_fields(cfg_data.paths, variables, dims)
    if cfg_data.val_paths is not None:
        return ds, open_fields(cfg_data.val_paths, list(ds.data_vars), dims)
    # the last val_fraction of the samples, or of the time steps of a file without samples
    lead = next((d for d in (SAMPLE, TIME) if d in ds.dims), None)
    if lead is None:
        raise ValueError(f"{cfg_data.paths} has no {SAMPLE!r} or {TIME!r} dimension to split into training and "
                         f"validation fields (dims {dict(ds.sizes)}); name one with dataset.dims or give "
                         f"dataset.val_paths")
    n = ds.sizes[lead]
    n_val = max(1, int(round(cfg_data.val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"{n} {lead} steps are too few to hold out {n_val} for validation; give dataset.val_paths")
    return ds.isel({lead: slice(0, n - n_val)}), ds.isel({lead: slice(n - n_val, n)})


# ---------------------------------------------------------------------------
# Distributed set-up (a no-op for a single process)


def setup_distributed(device):
    """Initialise the process group under torchrun; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def pick_device(name):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device


# ---------------------------------------------------------------------------
# Logging: CSV (long format, one row per value) and TensorBoard, rank 0 only


class MetricLogger:
    def __init__(self, run_dir):
        from torch.utils.tensorboard import SummaryWriter

        path = run_dir / "metrics.csv"
        new = not path.exists()
        self.file = open(path, "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "split", "name", "value"])
        self.tb = SummaryWriter(run_dir / "tb")

    def log(self, step, split, values):
        for name, value in values.items():
            self.csv.writerow([step, split, name, f"{value:.6g}"])
            self.tb.add_scalar(f"{split}/{name}", value, step)
        self.file.flush()

    def close(self):
        self.file.close()
        self.tb.close()


def warmup_cosine(step, lr, warmup_steps, total_steps, progress=None):
    """Linear warm-up, then cosine decay to 10 %: the usual recipe for small VQ models and transformers.

    `progress` in [0, 1], when given, places the decay (a run budgeted by time);
    otherwise the step count does.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps) if progress is None else progress
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def run_progress(step, train_time, total_steps, minutes=None):
    """Fraction of a run done: of its steps, or of its time budget of `minutes` if that is further on.

    A run ends when this reaches 1. Time counts training steps only (not
    validation or checkpoints), and a resumed run carries its time on.
    """
    done = step / max(total_steps, 1)
    if minutes:
        done = max(done, train_time / (60.0 * minutes))
    return min(done, 1.0)


def agreed_progress(progress, world):
    """The largest progress over the processes of a distributed run, so that all stop at the same step."""
    if world == 1:
        return progress
    t = torch.tensor([progress], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def train_state(opt, step, train_time, samples_seen):
    """What ``last.pt`` keeps beside the weights so that a run can go on where it stopped."""
    return {"optimizer": opt.state_dict(), "step": step, "train_time": train_time, "samples_seen": samples_seen}


def resume(last, model, opt, device, total_steps, verbose=True, check=None):
    """Load ``last.pt`` (if any) into model and optimizer; return (step, train_time, samples_seen).

    ``check(state)`` may refuse a checkpoint before anything is loaded from it.
    """
    if not last.exists():
        return 0, 0.0, 0
    state = checkpoint.read_checkpoint(last, map_location=device)
    _same_model(last, state, getattr(model, "module", model))
    if check is not None:
        check(state)
    model.load_state_dict(state["state_dict"])
    ts = state["train_state"]
    opt.load_state_dict(ts["optimizer"])
    if verbose:
        print(f"resuming {last.parent} at step {ts['step']}/{total_steps}")
    return ts["step"], ts["train_time"], ts["samples_seen"]


def _same_model(last, state, model):
    """Refuse to resume a run whose model was built with other arguments, naming them."""
    saved, now = state["model_config"], dict(model.config)
    differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if differ:
        was = ", ".join(f"{k}={saved.get(k)!r} (now {now.get(k)!r})" for k in differ)
        raise ValueError(f"{last} was made by a model with {was}; resume with the run's own overrides "
                         f"(listed in {last.parent / '.hydra' / 'overrides.yaml'})")


def autocast_for(tcfg, device):
    """bf16 autocast on CUDA when the trainer asks for it, else a no-op context (a factory)."""
    if tcfg.precision == "bf16" and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext
