"""A linear path beside the convolutional encoder and decoder.

Each grain level k gets a linear map from the f_k x f_k x C cells of a block
to its code (and back): a learned block transform, like a block DCT or PCA,
added to the convolutional encoder's codes and decoder's field. The two
paths share the work (the linear one alone does not reconstruct a field
well); what the linear path buys is faster learning: a rate ladder that keeps
rising with bits after minutes of CPU training.
"""

import torch.nn as nn
import torch.nn.functional as F

from .tokens import repeat_cells


class LinearPatches(nn.Module):
    """Per level, field (B, C, Hp, Wp) <-> (B, D, Hp / f_k, Wp / f_k) by one linear map per block."""

    def __init__(self, channels, factors, code_dim):
        super().__init__()
        self.factors = tuple(factors)
        self.analysis = nn.ModuleList(nn.Conv2d(channels * f * f, code_dim, 1) for f in self.factors)
        self.synthesis = nn.ModuleList(nn.Conv2d(code_dim, channels * f * f, 1) for f in self.factors)

    def encode(self, x_BCHW):
        """One (B, D, Hp / f_k, Wp / f_k) map per level."""
        return [a(F.pixel_unshuffle(x_BCHW, f)) for a, f in zip(self.analysis, self.factors)]

    def decode(self, gate_BKHW, q_levels):
        """(B, C, Hp, Wp): each region's codes mapped back at its own level, chosen by the one-hot gate."""
        f_K = self.factors[-1]
        return sum(
            repeat_cells(gate_BKHW[:, k : k + 1], f_K) * F.pixel_shuffle(s(q), f)
            for k, (s, q, f) in enumerate(zip(self.synthesis, q_levels, self.factors))
        )
