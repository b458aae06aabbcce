"""Convolutional encoder: one shared trunk, one branch per grain level.

The trunk halves the resolution log2(f_K) times; the branch for level k
leaves it after log2(f_k) halvings, so all levels see the same early
features and differ only in depth and resolution.
"""

import math

import torch.nn as nn
import torch.nn.functional as F


def norm(channels):
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv(c_in, c_out, kernel, periodic, stride=1):
    # padding keeps (H, W) for odd kernels and halves it exactly for kernel 4, stride 2
    padding = (kernel - 1) // 2 if stride == 1 else (kernel - stride) // 2
    mode = "circular" if periodic else "zeros"
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, padding_mode=mode)


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, periodic):
        super().__init__()
        self.block = nn.Sequential(
            norm(c_in), nn.SiLU(), conv(c_in, c_out, 3, periodic),
            norm(c_out), nn.SiLU(), conv(c_out, c_out, 3, periodic),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        return self.skip(x) + self.block(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions (global context at coarse scales)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x_BCHW):
        B, C, H, W = x_BCHW.shape
        q, k, v = self.qkv(self.norm(x_BCHW)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # (B, HW, C) each
        y = F.scaled_dot_product_attention(q, k, v)
        return x_BCHW + self.proj(y.transpose(1, 2).reshape(B, C, H, W))


def stage_channels(hidden, channel_mult, num_stages):
    """Channels of the trunk after each halving: hidden * channel_mult[i]."""
    mult = channel_mult if channel_mult is not None else (1,) + (2,) * (num_stages - 1)
    if len(mult) != num_stages:
        raise ValueError(
            f"channel_mult needs one entry per halving ({num_stages} for the coarsest factor {2 ** num_stages}), "
            f"got {tuple(mult)}"
        )
    return [hidden * m for m in mult]


class Encoder(nn.Module):
    """Fields (B, C, Hp, Wp) -> one feature map (B, code_dim, Hp / f_k, Wp / f_k) per level.

    Parameters
    ----------
    in_channels : channels of the input field.
    factors : ascending powers of two; the trunk branches after log2(f_k) halvings.
    hidden : channel base; the trunk has hidden * channel_mult[i] after halving i.
    channel_mult : one multiplier per halving (default 1, 2, 2, ...).
    num_res_blocks : residual blocks after each halving.
    code_dim : channels of every branch output (the codebook dimension).
    periodic : circular padding in every convolution.
    attention : one self-attention block at the coarsest resolution.
    """

    def __init__(self, in_channels, factors, hidden, channel_mult, num_res_blocks, code_dim, periodic, attention):
        super().__init__()
        depths = [int(math.log2(f)) for f in factors]
        chans = stage_channels(hidden, channel_mult, depths[-1])
        self.conv_in = conv(in_channels, hidden, 3, periodic)
        self.stages = nn.ModuleList()
        c = hidden
        for i, c_out in enumerate(chans):
            layers = [conv(c, c_out, 4, periodic, stride=2)]
            layers += [ResBlock(c_out, c_out, periodic) for _ in range(num_res_blocks)]
            if attention and i == len(chans) - 1:
                layers.append(AttnBlock(c_out))
            self.stages.append(nn.Sequential(*layers))
            c = c_out
        # stage index (0-based) after which each level branches off
        self.branch_at = [d - 1 for d in depths]
        self.branches = nn.ModuleList(
            nn.Sequential(norm(chans[i]), nn.SiLU(), nn.Conv2d(chans[i], code_dim, 1)) for i in self.branch_at
        )

    def forward(self, x_BCHW):
        h = self.conv_in(x_BCHW)
        trunk = []
        for stage in self.stages:
            h = stage(h)
            trunk.append(h)
        return [branch(trunk[i]) for branch, i in zip(self.branches, self.branch_at)]
