"""Residual vector quantization: a ladder of codebooks, each coding what the previous ones left.

A vector z is coded by stages s = 0 .. S-1: q_0 = VQ_0(z), q_s = VQ_s(z - q_0
- ... - q_{s-1}). A vector of depth d is the sum of its first d stage codes,
so one more stage is one more code (log2(codebook_size) bits) and a finer
approximation. Training draws depths at random (quantizer dropout, as in
neural audio codecs), so every prefix of the ladder is a working quantizer
and one model serves every rate.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from .quantizer import VectorQuantizer


class ResidualVQ(nn.Module):
    """`stages` VectorQuantizers of `codebook_size` codes of size `dim`, applied to successive residuals.

    The straight-through gradient passes once, from the depth-d sum to z, and
    the commitment loss pulls z towards that sum (so the encoder learns
    vectors that the whole ladder codes well, not only its first stage).
    """

    def __init__(self, stages=1, codebook_size=1024, dim=64, commitment=0.25, decay=0.99, eps=1e-5,
                 dead_code_threshold=0.5):
        super().__init__()
        if stages < 1:
            raise ValueError(f"stages must be at least 1, got {stages}")
        self.codebook_size, self.dim, self.commitment = codebook_size, dim, commitment
        self.stages = nn.ModuleList(
            VectorQuantizer(codebook_size, dim, commitment, decay, eps, dead_code_threshold) for _ in range(stages)
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before the ladder hold one VectorQuantizer's buffers under the quantizer's own name
        for name in ("embed", "cluster_size", "embed_sum", "initialised"):
            if prefix + name in state_dict:
                state_dict[f"{prefix}stages.0.{name}"] = state_dict.pop(prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def num_stages(self):
        return len(self.stages)

    def forward(self, z_ND, mask_N=None, depth_N=None):
        """Quantize rows z_ND to their depth.

        Parameters
        ----------
        z_ND : (N, dim) vectors.
        mask_N : optional (N,) bool; only these rows count in the loss and the
            codebook updates (the others are still coded).
        depth_N : optional (N,) long in [1, stages]; default the full ladder.

        Returns
        -------
        (quantized (N, dim) straight-through, indices (N, stages) long, commitment loss).
            Every stage's index is returned, also past a row's depth.
        """
        z_ND = z_ND.float()
        N = len(z_ND)
        depth_N = torch.full((N,), self.num_stages, dtype=torch.long, device=z_ND.device) if depth_N is None else depth_N
        if len(depth_N) and (depth_N.min() < 1 or depth_N.max() > self.num_stages):
            raise ValueError(f"depths must lie in [1, {self.num_stages}], got [{depth_N.min()}, {depth_N.max()}]")
        keep_N = torch.ones(N, dtype=torch.bool, device=z_ND.device) if mask_N is None else mask_N
        residual = z_ND.detach()
        total = torch.zeros_like(residual)
        indices = []
        for s, vq in enumerate(self.stages):
            active = depth_N > s
            idx = vq.assign(residual, keep_N & active)
            q = vq.lookup(idx) * active[:, None]
            total = total + q
            residual = residual - q
            indices.append(idx)
        loss = self.commitment * F.mse_loss(z_ND[keep_N], total[keep_N]) if keep_N.any() else z_ND.new_zeros(())
        quantized = z_ND + (total - z_ND).detach()
        return quantized, torch.stack(indices, 1) if indices else z_ND.new_zeros(N, 0, dtype=torch.long), loss

    @torch.no_grad()
    def encode(self, z, depth=None):
        """(..., stages) indices of every stage for vectors z (..., dim), without touching the codebooks.

        With `depth`, only the first `depth` stages are searched; the indices
        past it are 0 (a depth map masks them).
        """
        residual = z.detach().reshape(-1, self.dim).float()
        indices = torch.zeros(len(residual), self.num_stages, dtype=torch.long, device=residual.device)
        for s, vq in enumerate(self.stages[:depth]):
            indices[:, s] = vq.nearest(residual)
            residual = residual - vq.lookup(indices[:, s])
        return indices.view(*z.shape[:-1], self.num_stages)

    def lookup(self, indices_NS):
        """(..., dim): the sum of the stage codes of an index tensor (..., stages); -1 stops a row's ladder."""
        total = 0
        for s, vq in enumerate(self.stages[: indices_NS.shape[-1]]):
            idx = indices_NS[..., s]
            total = total + vq.lookup(idx.clamp(min=0)) * (idx >= 0)[..., None]
        return total

    def codebook_stats(self):
        """The first stage's usage and perplexity, and the mean perplexity over stages."""
        per_stage = [vq.codebook_stats() for vq in self.stages]
        stats = dict(per_stage[0])
        stats["stage_perplexity"] = sum(s["perplexity"] for s in per_stage) / len(per_stage)
        return stats
