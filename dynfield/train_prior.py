"""Stage 2: train a prior (the DQ-Transformer, raster or bidirectional) over a frozen tokenizer's tokens."""

import json
import math
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint
from .codec.container import to_json
from .conventions import AGNOSTIC_CHANNEL, X, Y
from .data import FieldDataset
from .evaluation import prior_code_length, unigram_code_length
from .models import Tokens
from .training import MetricLogger, autocast_for, open_splits, resume, run_progress, train_state, warmup_cosine


# Keys of the `prior` config that set up stage 2 instead of going to the prior's constructor.
PRIOR_SETTINGS = ("fine_ratio", "augment_passes", "train", "code_features")


def build_prior(cfg_prior, tokenizer, shape, periodic=False):
    """The prior of a `prior` config, for the tokens `tokenizer` makes of (H, W) = `shape` fields.

    The prior also learns whether the fields wrap around (`periodic`) and,
    with ``code_features``, sees the tokenizer's code vectors.
    """
    masked = cfg_prior["_target_"].endswith("MaskedPrior")
    if (cfg_prior.get("order") == "bidirectional") != masked:
        raise ValueError(f"prior.order={cfg_prior.get('order')} does not go with {cfg_prior['_target_']}: choose the "
                         f"order with the config group, prior=coarse_to_fine, prior=raster or prior=bidirectional")
    code_features = bool(cfg_prior.get("code_features", False))
    nested = bool(getattr(tokenizer, "nested", False))
    if nested and code_features:
        raise ValueError("a nested tokenizer (model.nested=true) has a codebook per level: its priors take no "
                         "code vectors (prior.code_features=false)")
    args = OmegaConf.masked_copy(cfg_prior, [k for k in cfg_prior if k not in PRIOR_SETTINGS])
    codebook = tokenizer.quantizer.stages[0].embed  # the priors model the first stage's codes
    extra = dict(code_dim=codebook.shape[1] if code_features else 0, periodic=bool(periodic), nested=nested)
    # _convert_="all": the prior's config must hold plain lists, never OmegaConf containers
    prior = instantiate(args, _convert_="all", factors=list(tokenizer.factors), shape=list(shape),
                        codebook_size=tokenizer.config["codebook_size"], **extra)
    if code_features:
        (prior.tok_emb if masked else prior.code_emb).set_vectors(codebook)
    return prior


@torch.no_grad()
def encode_split(tokenizer, fields, *, passes, batch_size, device, fine_ratio, desc):
    """Tokens of every field of a FieldDataset, `passes` times with that epoch's augmentations.

    Returns plain tensors: ``{"grain": (N, Hc, Wc), "codes": [(N, Hk, Wk) per level]}``.
    """
    grain, codes = [], []
    for p in range(passes):
        fields.set_epoch(p)
        for x in tqdm(DataLoader(fields, batch_size=batch_size), desc=f"{desc} {p + 1}/{passes}", dynamic_ncols=True):
            # the priors model single-stage tokens: a residual tokenizer's first stage
            tokens = tokenizer.encode(x.to(device), fine_ratio=fine_ratio, depth=1)
            grain.append(tokens.grain.cpu())
            codes.append([c.cpu() for c in tokens.codes])
    return {"grain": torch.cat(grain), "codes": [torch.cat(level) for level in zip(*codes)]}


def token_batch(split, index, tokenizer, shape):
    """Tokens of the fields `index` of an ``encode_split`` result."""
    return Tokens(split["grain"][index], [c[index] for c in split["codes"]], tokenizer.factors, shape,
                  tokenizer.config["codebook_size"], nested=tokenizer.nested)


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
    # a channel-agnostic tokenizer codes every variable of the data set as a field of its own
    agnostic = variables == [AGNOSTIC_CHANNEL]
    fields = list(cfg.dataset.variables) if agnostic else variables
    missing = [v for v in fields if v not in train_ds.data_vars]
    if missing:
        raise ValueError(f"the tokenizer was trained on {fields}; the data set lacks {missing} "
                         f"(it has {sorted(train_ds.data_vars)})")
    shape = (train_ds.sizes[Y], train_ds.sizes[X])

    def encode():
        # The prior models whole fields of one shape: no crops. Rolls and flips
        # (seeded per pass) are exact symmetries of the data, so each pass adds fields.
        kw = dict(stats=None if agnostic else stats, channel_agnostic=agnostic)
        augmented = FieldDataset(train_ds, fields, periodic=periodic, flips=cfg.dataset.flips, seed=cfg.seed, **kw)
        plain = FieldDataset(val_ds, fields, **kw)
        kw = dict(batch_size=tcfg.batch_size, device=device, fine_ratio=pcfg.fine_ratio)
        return {"train": encode_split(tokenizer, augmented, passes=pcfg.augment_passes, desc="encode train", **kw),
                "val": encode_split(tokenizer, plain, passes=1, desc="encode val", **kw)}

    key = {"tokenizer": entry["sha256"], "fine_ratio": pcfg.fine_ratio, "augment_passes": pcfg.augment_passes,
           "seed": cfg.seed, "shape": list(shape)}
    tokens = cached_tokens(run_dir / "tokens.pt", key, encode)
    train_split, val_split = tokens["train"], tokens["val"]
    unigram = unigram_code_length(train_split, val_split, len(tokenizer.factors), tokenizer.config["codebook_size"])

    prior = build_prior(pcfg, tokenizer, shape, periodic).to(device)
    opt = torch.optim.AdamW(prior.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(0.9, 0.95))
    n_train = len(train_split["grain"])
    steps_per_epoch = n_train // tcfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{n_train} encoded training fields give no batch of {tcfg.batch_size}")
    total_steps = tcfg.epochs * steps_per_epoch
    extra = {"tokenizer": entry, "data": data_entry(cfg.dataset, train_ds, [] if agnostic else variables)}

    last = run_dir / "last.pt"

    def same_tokenizer(state):
        if state["tokenizer"]["sha256"] != entry["sha256"]:
            raise ValueError(f"{last} was trained on the tokens of another tokenizer than {cfg.tokenizer}")

    step, train_time, samples_seen = resume(last, prior, opt, device, total_steps, check=same_tokenizer)
    minutes = tcfg.get("minutes")

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
    done = run_progress(step, train_time, total_steps, minutes)
    while done < 1:
        epoch = step // steps_per_epoch
        # The order is drawn from (seed, epoch), so a resumed run sees the same batches.
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        order = order[(step % steps_per_epoch) * tcfg.batch_size : steps_per_epoch * tcfg.batch_size]
        bar = tqdm(order.split(tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}", dynamic_ncols=True)
        for index in bar:
            t0 = time.perf_counter()
            lr = warmup_cosine(step, tcfg.lr, tcfg.warmup_steps, total_steps, progress=done if minutes else None)
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
            done = run_progress(step, train_time, total_steps, minutes)
            if step % tcfg.log_every == 0 or done >= 1:
                # loss and parts are mean nats per predicted token
                values = {"loss": out.loss.item(), **{k: v.item() for k, v in out.parts.items()}, "lr": lr,
                          "samples_per_s": samples_seen / train_time}
                logger.log(step, "train", values)
                bar.set_postfix(bits_per_token=f"{values['loss'] / math.log(2):.3f}")
            if step % tcfg.ckpt_every == 0:
                save_last()
            if done >= 1:
                break
        if step % steps_per_epoch == 0 or done >= 1:
            val_metrics = {**evaluate_prior(prior, val_split, tokenizer, shape, channels, tcfg.batch_size, device),
                           **unigram}
            logger.log(step, "val", val_metrics)
            print(f"step {step}: val " + ", ".join(f"{k}={v:.4g}" for k, v in val_metrics.items()))
            save_last(val_metrics)

    summary = {
        "steps": step,
        "epochs": tcfg.epochs,
        "minutes": minutes,
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
