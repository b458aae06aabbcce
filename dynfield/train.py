"""Train the tokenizer (stage 1) or the prior over its tokens (stage 2).

    python -m dynfield.train dataset=turbulence
    python -m dynfield.train stage=prior tokenizer=RUN/tokenizer.pt [prior=raster]

The Hydra harness around the library: it composes the config, prepares the
data (generating the built-in set on first use), builds the model from
``cfg.model`` (stage 1) or ``cfg.prior`` (stage 2) and runs one plain
training loop. Everything is written under the run directory:
``metrics.csv``, TensorBoard events in ``tb/``, ``last.pt`` (with optimizer
state, for ``resume=``), the final ``tokenizer.pt`` or ``prior.pt`` and
``metrics.json``. Stage 2 also caches the encoded tokens in ``tokens.pt``.

Multi-GPU (or multi-process CPU) runs of stage 1 use torchrun, e.g.
``torchrun --nproc_per_node 2 -m dynfield.train``; rank 0 alone logs and writes.
"""

import csv
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from . import checkpoint, paths
from .codec.container import to_json
from .conventions import AGNOSTIC_CHANNEL, X, Y
from .data import FieldDataset, compute_stats, ensure_dataset, open_fields
from .evaluation import evaluate_tokenizer, prior_code_length
from .models import Tokens, gumbel_temperature, total_loss


def _run_dir(resume):
    # A resumed run goes on in its own directory. Under torchrun every rank
    # composes the config; the elastic run id gives them one shared directory.
    if resume:
        resume = Path(resume).expanduser().resolve()
        return str(resume.parent if resume.is_file() else resume)
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and run_id != "none":
        return f"outputs/torchrun-{run_id}"
    return "outputs/" + time.strftime("%Y-%m-%d/%H-%M-%S")


OmegaConf.register_new_resolver("dynfield_data_dir", lambda: str(paths.default_data_dir()), replace=True)
OmegaConf.register_new_resolver("dynfield_run_dir", _run_dir, replace=True)


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
    dims = OmegaConf.to_container(cfg_data.dims)
    ds = open_fields(cfg_data.paths, variables, dims)
    if cfg_data.val_paths is not None:
        return ds, open_fields(cfg_data.val_paths, list(ds.data_vars), dims)
    n = ds.sizes["sample"]
    n_val = max(1, int(round(cfg_data.val_fraction * n)))
    if n_val >= n:
        raise ValueError(f"{n} samples are too few to hold out {n_val} for validation; give dataset.val_paths")
    return ds.isel(sample=slice(0, n - n_val)), ds.isel(sample=slice(n - n_val, n))


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
    if check is not None:
        check(state)
    model.load_state_dict(state["state_dict"])
    ts = state["train_state"]
    opt.load_state_dict(ts["optimizer"])
    if verbose:
        print(f"resuming {last.parent} at step {ts['step']}/{total_steps}")
    return ts["step"], ts["train_time"], ts["samples_seen"]


def autocast_for(tcfg, device):
    """bf16 autocast on CUDA when the trainer asks for it, else a no-op context (a factory)."""
    if tcfg.precision == "bf16" and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


# ---------------------------------------------------------------------------
# Stage 1


def validate(model, loader, device, stats, variables):
    """Encode with the inference router, decode, and measure in physical units."""
    model.eval()
    out = evaluate_tokenizer(model, loader, stats, variables, device)
    model.train()
    return out


def train_tokenizer(cfg, run_dir, device, rank, world):
    main = rank == 0
    tcfg = cfg.trainer
    data_dir = Path(cfg.paths.data_dir)
    # Rank 0 generates a missing data set first; the others then find it cached.
    if main:
        train_ds, val_ds = open_splits(cfg.dataset, data_dir)
    if world > 1:
        dist.barrier()
    if not main:
        train_ds, val_ds = open_splits(cfg.dataset, data_dir)
    data_vars = list(train_ds.data_vars)
    agnostic = bool(cfg.dataset.channel_agnostic)
    if agnostic:
        # One channel: every variable is a separate field, normalised on its own
        # (as the codec does), so the model's channel is "a field" of unit spread.
        variables, stats = [AGNOSTIC_CHANNEL], {AGNOSTIC_CHANNEL: {"mean": 0.0, "std": 1.0}}
    else:
        variables = data_vars
        stats_path = run_dir / "stats.json"
        if main and not stats_path.exists():
            stats = compute_stats(train_ds, variables)
            stats_path.write_text(json.dumps(stats, indent=2))
        if world > 1:
            dist.barrier()
        stats = json.loads(stats_path.read_text())

    periodic = bool(cfg.dataset.periodic)
    # The enstrophy router (an inference-time option) squares the vorticity channel when there is one.
    vort = variables.index("vorticity") if "vorticity" in variables else None
    model = instantiate(cfg.model, in_channels=len(variables), periodic=periodic, vorticity_channel=vort).to(device)
    # Augmentations are drawn from (seed, epoch, index): a resumed run sees the same ones.
    data_kw = dict(stats=None if agnostic else stats, min_size=model.factors[-1], channel_agnostic=agnostic)
    train_set = FieldDataset(train_ds, data_vars, crop=cfg.dataset.crop, periodic=periodic, flips=cfg.dataset.flips,
                             seed=cfg.seed + rank, **data_kw)
    # periodic=False here: rolls are a training augmentation; validation sees the fields as they are.
    val_set = FieldDataset(val_ds, data_vars, **data_kw)
    val_loader = DataLoader(val_set, batch_size=tcfg.batch_size, num_workers=tcfg.num_workers)

    opt = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.95))
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // tcfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training fields give no batch of {tcfg.batch_size} per process")
    total_steps = tcfg.epochs * steps_per_epoch

    minutes = tcfg.get("minutes")

    def progress():
        return agreed_progress(run_progress(step, train_time, total_steps, minutes), world)

    def lr_at(step, done):
        return warmup_cosine(step, tcfg.lr, tcfg.warmup_steps, total_steps, progress=done if minutes else None)

    last = run_dir / "last.pt"
    step, train_time, samples_seen = resume(last, model, opt, device, total_steps, verbose=main)

    train_model = model
    if tcfg.compile:
        train_model = torch.compile(model)
    if world > 1:
        train_model = DistributedDataParallel(train_model)
    autocast = autocast_for(tcfg, device)

    logger = MetricLogger(run_dir) if main else None
    weights = OmegaConf.to_container(tcfg.loss_weights)

    def save(metrics=None):
        if main:
            checkpoint.save_checkpoint(
                last, model, kind="tokenizer", stats=stats, variables=variables, periodic=periodic,
                train_state=train_state(opt, step, train_time, samples_seen), metrics=metrics,
            )

    val_metrics = {}
    model.train()
    done = progress()
    while done < 1:
        epoch = step // steps_per_epoch
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        # Skip the part of the epoch a resumed run already did (no data is loaded for it).
        order = list(sampler)[(step % steps_per_epoch) * tcfg.batch_size :]
        loader = DataLoader(train_set, batch_size=tcfg.batch_size, sampler=order, num_workers=tcfg.num_workers, drop_last=True)
        budget = f", {minutes:g} min budget" if minutes else ""
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tcfg.epochs}{budget}", disable=not main, dynamic_ncols=True)
        for x in bar:
            t0 = time.perf_counter()
            lr = lr_at(step, done)
            for g in opt.param_groups:
                g["lr"] = lr
            # the Gumbel anneal follows the run's progress, in steps or in time
            temperature = gumbel_temperature(done, tcfg.gumbel.start, tcfg.gumbel.end, 1.0)
            x = x.to(device, non_blocking=True)
            with autocast():
                out = train_model(x, temperature=temperature)
                loss, parts = total_loss(out, x, weights, recon_kind=tcfg.recon_loss, periodic=periodic)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            samples_seen += len(x) * world
            train_time += time.perf_counter() - t0
            done = progress()
            if main and (step % tcfg.log_every == 0 or done >= 1):
                values = dict(parts, total=loss.item(), lr=lr, temperature=temperature)
                values.update(out.stats, samples_per_s=samples_seen / train_time)
                logger.log(step, "train", values)
                bar.set_postfix(loss=f"{values['total']:.4f}", fine=f"{values['fine_fraction']:.2f}")
            if step % tcfg.ckpt_every == 0:
                save()
            if done >= 1:
                break
        if step % steps_per_epoch == 0 or done >= 1:
            if main:
                val_metrics = validate(model, val_loader, device, stats, variables)
                logger.log(step, "val", val_metrics)
                print(f"step {step}: val " + ", ".join(f"{k}={v:.4g}" for k, v in val_metrics.items() if "/" not in k))
            save(val_metrics)

    if main:
        summary = {
            "steps": step,
            "epochs": tcfg.epochs,
            "minutes": minutes,
            "train_time_s": train_time,
            "samples_per_s": samples_seen / max(train_time, 1e-9),
            "device": str(device),
            "world_size": world,
            "val": val_metrics,
        }
        checkpoint.save_checkpoint(
            run_dir / "tokenizer.pt", model, kind="tokenizer", stats=stats, variables=variables, periodic=periodic,
            metrics=summary,
        )
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
        logger.close()
        print(f"results in {run_dir}: tokenizer.pt, metrics.json, metrics.csv, tb/")
        print(json.dumps({k: v for k, v in val_metrics.items() if "/" not in k}, indent=2))
    return val_metrics


# ---------------------------------------------------------------------------
# Stage 2: the prior over the tokens of a frozen tokenizer

# Keys of the `prior` config that set up stage 2 instead of going to the prior's constructor.
PRIOR_SETTINGS = ("fine_ratio", "augment_passes", "train")


def build_prior(cfg_prior, tokenizer, shape):
    """The prior of a `prior` config, for the tokens `tokenizer` makes of (H, W) = `shape` fields."""
    args = OmegaConf.masked_copy(cfg_prior, [k for k in cfg_prior if k not in PRIOR_SETTINGS])
    # _convert_="all": the prior's config must hold plain lists, never OmegaConf containers
    return instantiate(args, _convert_="all", factors=list(tokenizer.factors), shape=list(shape),
                       codebook_size=tokenizer.config["codebook_size"])


@torch.no_grad()
def encode_split(tokenizer, fields, *, passes, batch_size, device, fine_ratio, desc):
    """Tokens of every field of a FieldDataset, `passes` times with that epoch's augmentations.

    Returns plain tensors: ``{"grain": (N, Hc, Wc), "codes": [(N, Hk, Wk) per level]}``.
    """
    grain, codes = [], []
    for p in range(passes):
        fields.set_epoch(p)
        for x in tqdm(DataLoader(fields, batch_size=batch_size), desc=f"{desc} {p + 1}/{passes}", dynamic_ncols=True):
            tokens = tokenizer.encode(x.to(device), fine_ratio=fine_ratio)
            grain.append(tokens.grain.cpu())
            codes.append([c.cpu() for c in tokens.codes])
    return {"grain": torch.cat(grain), "codes": [torch.cat(level) for level in zip(*codes)]}


def token_batch(split, index, tokenizer, shape):
    """Tokens of the fields `index` of an ``encode_split`` result."""
    return Tokens(split["grain"][index], [c[index] for c in split["codes"]], tokenizer.factors, shape,
                  tokenizer.config["codebook_size"])


def cached_tokens(path, key, encode):
    """The encoded splits stored at `path` when they were made with `key`, else `encode()` stored there.

    Encoding every field (and its augmented copies) costs minutes at full size;
    a resumed run finds them here instead.
    """
    if path.exists():
        cache = torch.load(path, weights_only=True)
        if cache["key"] == key:
            return cache
        print(f"{path} was encoded with other settings ({cache['key']}); encoding again")
    cache = dict(encode(), key=key)
    checkpoint.atomic_save(cache, path)
    return cache


@torch.no_grad()
def evaluate_prior(prior, split, tokenizer, shape, channels, batch_size, device):
    """Held-out code length under the prior: bits per token and per field value (``prior.bits``)."""
    batches = (token_batch(split, index, tokenizer, shape).to(device)
               for index in torch.arange(len(split["grain"])).split(batch_size))
    return prior_code_length(prior, batches, channels * shape[0] * shape[1])


def data_entry(cfg_data, ds, variables):
    """The ``data`` entry of a prior checkpoint: what sampling needs to write fields like the training data.

    Variable and coordinate attributes (units, names), the coordinates, and for
    a generated data set its generator, so that held-out real fields can be made.
    """
    coords = {d: {"values": ds[d].values.astype(float).tolist(), "attrs": to_json(dict(ds[d].attrs))}
              for d in (Y, X) if d in ds.coords}
    generated = cfg_data.source == "generated"
    return {"name": cfg_data.name, "attrs": {v: to_json(dict(ds[v].attrs)) for v in variables}, "coords": coords,
            "generator": OmegaConf.to_container(cfg_data.generator) if generated else None}


def train_prior(cfg, run_dir, device, rank, world):
    if world > 1:
        raise ValueError("stage=prior trains in a single process; run it without torchrun")
    if cfg.tokenizer is None:
        raise ValueError("stage=prior needs tokenizer=<path of a stage-1 tokenizer.pt>")
    pcfg, tcfg = cfg.prior, cfg.prior.train
    entry, tokenizer = checkpoint.tokenizer_entry(cfg.tokenizer, pcfg.fine_ratio)
    tokenizer.to(device).requires_grad_(False)
    variables, stats, periodic = (entry["checkpoint"][k] for k in ("variables", "stats", "periodic"))

    train_ds, val_ds = open_splits(cfg.dataset, Path(cfg.paths.data_dir))
    missing = [v for v in variables if v not in train_ds.data_vars]
    if missing:
        raise ValueError(f"the tokenizer was trained on {variables}; the data set lacks {missing} "
                         f"(it has {sorted(train_ds.data_vars)})")
    shape = (train_ds.sizes[Y], train_ds.sizes[X])

    def encode():
        # The prior models whole fields of one shape: no crops. Rolls and flips
        # (seeded per pass) are exact symmetries of the data, so each pass adds fields.
        augmented = FieldDataset(train_ds, variables, stats=stats, periodic=periodic, flips=cfg.dataset.flips,
                                 seed=cfg.seed)
        plain = FieldDataset(val_ds, variables, stats=stats)
        kw = dict(batch_size=tcfg.batch_size, device=device, fine_ratio=pcfg.fine_ratio)
        return {"train": encode_split(tokenizer, augmented, passes=pcfg.augment_passes, desc="encode train", **kw),
                "val": encode_split(tokenizer, plain, passes=1, desc="encode val", **kw)}

    key = {"tokenizer": entry["sha256"], "fine_ratio": pcfg.fine_ratio, "augment_passes": pcfg.augment_passes,
           "seed": cfg.seed, "shape": list(shape)}
    tokens = cached_tokens(run_dir / "tokens.pt", key, encode)
    train_split, val_split = tokens["train"], tokens["val"]

    prior = build_prior(pcfg, tokenizer, shape).to(device)
    opt = torch.optim.AdamW(prior.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.95))
    n_train = len(train_split["grain"])
    steps_per_epoch = n_train // tcfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_train} encoded training fields give no batch of {tcfg.batch_size}")
    total_steps = tcfg.epochs * steps_per_epoch
    extra = {"tokenizer": entry, "data": data_entry(cfg.dataset, train_ds, variables)}

    last = run_dir / "last.pt"

    def same_tokenizer(state):
        if state["tokenizer"]["sha256"] != entry["sha256"]:
            raise ValueError(f"{last} was trained on the tokens of another tokenizer than {cfg.tokenizer}")

    step, train_time, samples_seen = resume(last, prior, opt, device, total_steps, check=same_tokenizer)

    autocast = autocast_for(cfg.trainer, device)
    logger = MetricLogger(run_dir)
    channels = len(variables)

    def save(path, metrics=None, train_state=None):
        checkpoint.save_checkpoint(path, prior, kind="prior", stats=stats, variables=variables, periodic=periodic,
                                   train_state=train_state, metrics=metrics, extra=extra)

    def save_last(metrics=None):
        save(last, metrics, train_state(opt, step, train_time, samples_seen))

    val_metrics = {}
    prior.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        # The order is drawn from (seed, epoch), so a resumed run sees the same batches.
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        order = order[(step % steps_per_epoch) * tcfg.batch_size : steps_per_epoch * tcfg.batch_size]
        bar = tqdm(order.split(tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}", dynamic_ncols=True)
        for index in bar:
            t0 = time.perf_counter()
            lr = warmup_cosine(step, tcfg.lr, tcfg.warmup_steps, total_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            batch = token_batch(train_split, index, tokenizer, shape).to(device)
            with autocast():
                out = prior(batch)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(prior.parameters(), tcfg.grad_clip)
            opt.step()
            step += 1
            samples_seen += len(index)
            train_time += time.perf_counter() - t0
            if step % tcfg.log_every == 0 or step == total_steps:
                # loss and parts are mean nats per predicted token
                values = {"loss": out.loss.item(), **{k: v.item() for k, v in out.parts.items()}, "lr": lr,
                          "samples_per_s": samples_seen / train_time}
                logger.log(step, "train", values)
                bar.set_postfix(bits_per_token=f"{values['loss'] / math.log(2):.3f}")
            if step % tcfg.ckpt_every == 0:
                save_last()
        if step % steps_per_epoch == 0 or step >= total_steps:
            val_metrics = evaluate_prior(prior, val_split, tokenizer, shape, channels, tcfg.batch_size, device)
            logger.log(step, "val", val_metrics)
            print(f"step {step}: val " + ", ".join(f"{k}={v:.4g}" for k, v in val_metrics.items()))
            save_last(val_metrics)

    summary = {
        "steps": step,
        "epochs": tcfg.epochs,
        "train_fields": n_train,
        "train_time_s": train_time,
        "samples_per_s": samples_seen / max(train_time, 1e-9),
        "steps_per_s": step / max(train_time, 1e-9),
        "device": str(device),
        "order": pcfg.order,
        "tokenizer": entry["path"],
        "tokenizer_sha256": entry["sha256"],
        "val": val_metrics,
    }
    save(run_dir / "prior.pt", summary)
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    logger.close()
    print(f"results in {run_dir}: prior.pt, metrics.json, metrics.csv, tb/, tokens.pt")
    print(json.dumps(val_metrics, indent=2))
    return val_metrics


@hydra.main(config_path=paths.config_dir(), config_name="config", version_base="1.3")
def main(cfg):
    device = pick_device(cfg.trainer.device)
    rank, world = setup_distributed(device)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(cfg.seed + rank)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    try:
        if cfg.stage == "tokenizer":
            return train_tokenizer(cfg, run_dir, device, rank, world)
        if cfg.stage == "prior":
            return train_prior(cfg, run_dir, device, rank, world)
        raise ValueError(f"unknown stage {cfg.stage!r}; expected 'tokenizer' or 'prior'")
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
