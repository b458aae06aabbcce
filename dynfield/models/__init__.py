"""Stage 1, the dynamic-grain VQ-VAE (DQ-VAE) and its fixed-grain baseline; stage 2, priors over their tokens."""

from .dqvae import DQVAE, DQVAEOutput, vqvae
from .losses import (
    DEFAULT_WEIGHTS,
    gradient_loss,
    reconstruction_loss,
    spectral_loss,
    total_loss,
)
from .masked_prior import MaskedPrior
from .prior import ARPrior, PriorOutput
from .quantizer import VectorQuantizer
from .router import ROUTERS, Router, budget_loss, enstrophy_score, gumbel_temperature
from .sequences import TokenSequence, make_scan
from .tokens import Tokens

__all__ = [
    "DQVAE", "DQVAEOutput", "vqvae", "Tokens", "VectorQuantizer", "Router", "ROUTERS",
    "budget_loss", "enstrophy_score", "gumbel_temperature",
    "DEFAULT_WEIGHTS", "reconstruction_loss", "spectral_loss", "gradient_loss", "total_loss",
    "ARPrior", "MaskedPrior", "PriorOutput", "TokenSequence", "make_scan",
]
