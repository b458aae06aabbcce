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

import os
import time
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from . import paths
from .train_prior import train_prior
from .train_tokenizer import train_tokenizer
from .training import pick_device, setup_distributed


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
