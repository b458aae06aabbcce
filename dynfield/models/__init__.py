"""Stage-1 models: the dynamic-grain VQ-VAE (DQ-VAE) and the fixed-grain baseline."""

from .dqvae import DQVAE, DQVAEOutput, vqvae
from .losses import (
    DEFAULT_WEIGHTS,
    gradient_loss,
    reconstruction_loss,
    spectral_loss,
    total_loss,
)
from .quantizer import VectorQuantizer
from .router import ROUTERS, Router, budget_loss, enstrophy_score, gumbel_temperature
from .tokens import Tokens

__all__ = [
    "DQVAE", "DQVAEOutput", "vqvae", "Tokens", "VectorQuantizer", "Router", "ROUTERS",
    "budget_loss", "enstrophy_score", "gumbel_temperature",
    "DEFAULT_WEIGHTS", "reconstruction_loss", "spectral_loss", "gradient_loss", "total_loss",
]
