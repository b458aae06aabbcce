"""Decoder: merged code map on the finest token grid -> field."""

import math

import torch
import torch.nn as nn

from .encoder import ResBlock, conv, norm, stage_channels
from .tokens import repeat_cells


class Decoder(nn.Module):
    """(B, code_dim, Hp / f_1, Wp / f_1) merged codes + (B, Hc, Wc) grain -> (B, C, Hp, Wp).

    With several levels, two learned embeddings are added to the codes: the
    grain level of the region, and the offset of the cell inside its coarsest
    block. A coarse region is one code copied over its block; the offset
    embedding lets the decoder paint different values into the copies.

    The trunk mirrors the encoder's channels; the last doubling is a sub-pixel
    convolution (conv at half resolution, then pixel shuffle) so no layer
    runs at full resolution with many channels. No self-attention: the
    decoder starts on the finest token grid, where it would cost
    (H W / f_1^2)^2 per sample.
    """

    def __init__(self, out_channels, factors, hidden, channel_mult, num_res_blocks, code_dim, periodic):
        super().__init__()
        depth_fine, depth_coarse = int(math.log2(factors[0])), int(math.log2(factors[-1]))
        chans = stage_channels(hidden, channel_mult, depth_coarse)[:depth_fine]  # after halving 1 .. log2(f_1)
        self.block = factors[-1] // factors[0]  # coarsest block size on the finest token grid
        self.grain_embed = nn.Embedding(len(factors), code_dim) if len(factors) > 1 else None
        self.offset_embed = nn.Embedding(self.block**2, code_dim) if len(factors) > 1 else None
        layers = [conv(code_dim, chans[-1], 3, periodic)]
        layers += [ResBlock(chans[-1], chans[-1], periodic) for _ in range(num_res_blocks)]
        for c_in, c_out in zip(chans[::-1], chans[-2::-1]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), conv(c_in, c_out, 3, periodic)]
            layers += [ResBlock(c_out, c_out, periodic) for _ in range(num_res_blocks)]
        layers += [norm(chans[0]), nn.SiLU(), conv(chans[0], 4 * out_channels, 3, periodic), nn.PixelShuffle(2)]
        self.net = nn.Sequential(*layers)

    def forward(self, z_BDHW, grain_BHW):
        if self.grain_embed is not None:
            B, D, H, W = z_BDHW.shape
            level = repeat_cells(grain_BHW, self.block)  # (B, H, W)
            rows = torch.arange(H, device=z_BDHW.device) % self.block
            cols = torch.arange(W, device=z_BDHW.device) % self.block
            offset = rows[:, None] * self.block + cols[None, :]  # (H, W)
            extra = self.grain_embed(level) + self.offset_embed(offset)  # (B, H, W, D)
            z_BDHW = z_BDHW + extra.permute(0, 3, 1, 2)
        return self.net(z_BDHW)
