"""Stage 1: train the dynamic-grain tokenizer (the DQ-VAE) or its fixed-grain baseline."""

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from . import checkpoint
from .conventions import AGNOSTIC_CHANNEL
from .data import FieldDataset, compute_stats
from .evaluation import evaluate_tokenizer
from .models import gumbel_temperature, total_loss
from .training import (
    MetricLogger,
    agreed_progress,
    autocast_for,
    open_splits,
    resume,
    run_progress,
    train_state,
    warmup_cosine,
)


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
