"""The bidirectional prior's view of tokens: one symbol grid per grain level, and the cells' places.

At level k every cell of the level-k grid (Hp / f_k, Wp / f_k) holds a code in
[0, N), PASS (= N) where the grain map gives its region no code at level k
although the region is still open there, or -1 where the region is closed.
With alternative grains a region is open at level k until a coarser level
takes it, and PASS means it goes finer. With nested grains every region is
open at the coarsest level and at the level below each level it has codes
at, and PASS means it stops at the level above.
"""

import torch

from .tokens import Tokens, repeat_cells


def is_code(grid, codebook_size):
    """Where a symbol grid holds a code: not -1 (closed), PASS (= codebook_size) or anything above."""
    return (grid >= 0) & (grid < codebook_size)


def to_regions(x_BHW, s):
    """(B, Hc * s, Wc * s) -> (B, Hc, Wc, s * s): the cells of each region side by side."""
    B, H, W = x_BHW.shape
    return x_BHW.reshape(B, H // s, s, W // s, s).transpose(2, 3).reshape(B, H // s, W // s, s * s)


def from_regions(x_BHWS, s):
    """Inverse of ``to_regions``: (B, Hc, Wc, s * s) -> (B, Hc * s, Wc * s)."""
    B, Hc, Wc, _ = x_BHWS.shape
    return x_BHWS.reshape(B, Hc, Wc, s, s).transpose(2, 3).reshape(B, Hc * s, Wc * s)


def level_grids(tokens):
    """The symbol grids of a batch of tokens, one per level.

    Returns
    -------
    list of (B, Hp / f_k, Wp / f_k) long tensors: the code where the region has
    one at level k, PASS (= codebook_size) where it is open at level k without
    a code there, -1 where it is closed.
    """
    f_K = tokens.require_single_stage("the bidirectional prior").factors[-1]
    grids = []
    for k, (codes, f) in enumerate(zip(tokens.codes, tokens.factors)):
        grain = repeat_cells(tokens.grain, f_K // f)
        passes = grain == k + 1 if tokens.nested else grain < k
        grids.append(torch.where(passes, tokens.codebook_size, codes))  # codes are -1 where unused
    return grids


def grids_to_tokens(grids, factors, shape, codebook_size, nested=False):
    """Inverse of ``level_grids``: Tokens from the symbol grids of every level."""
    factors = tuple(factors)
    K, f_K = len(factors), factors[-1]
    corner = [grid[:, :: f_K // f, :: f_K // f] for grid, f in zip(grids, factors)]
    if nested:  # a region at level g has codes at the K - g levels from g up
        grain = K - torch.stack([is_code(c, codebook_size) for c in corner]).long().sum(0)
    else:  # a region at level g passes at each of the K - 1 - g coarser levels
        grain = (K - 1) - torch.stack([c == codebook_size for c in corner]).long().sum(0)
    codes = [torch.where(is_code(grid, codebook_size), grid, -1) for grid in grids]
    return Tokens(grain, codes, factors, shape, codebook_size, nested=nested)


def grid_distance(H, W, device, periodic=False):
    """(H * W, H * W) distance in cells between the cells of an (H, W) grid, raster order; on the torus if periodic."""
    rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    place = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    step = (place[:, None] - place[None]).abs()
    if periodic:
        step = torch.minimum(step, torch.tensor([H, W], device=device) - step)
    return step.square().sum(-1).sqrt()
