"""The bidirectional prior's view of tokens: one symbol grid per grain level, and the cells' places.

At level k every cell of the level-k grid (Hp / f_k, Wp / f_k) holds a code in
[0, N), FINER (= N) where its region goes to a finer level, or -1 where a
coarser level has taken it.
"""

import torch

from .tokens import Tokens, repeat_cells


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
    list of (B, Hp / f_k, Wp / f_k) long tensors: the code where the region is
    at level k, FINER (= codebook_size) where it goes to a finer level, -1 where
    a coarser level has taken it.
    """
    user = "the bidirectional prior"
    f_K = tokens.require_single_stage(user).require_alternative(user).factors[-1]
    grids = []
    for k, (codes, f) in enumerate(zip(tokens.codes, tokens.factors)):
        grain = repeat_cells(tokens.grain, f_K // f)
        grids.append(torch.where(grain < k, tokens.codebook_size, torch.where(grain == k, codes, -1)))
    return grids


def grids_to_tokens(grids, factors, shape, codebook_size):
    """Inverse of ``level_grids``: Tokens from the symbol grids of every level."""
    factors = tuple(factors)
    K, f_K = len(factors), factors[-1]
    # a region at level g goes FINER at each of the K - 1 - g coarser levels
    finer = [grid[:, :: f_K // f, :: f_K // f] == codebook_size for grid, f in zip(grids, factors)]
    grain = (K - 1) - torch.stack(finer).long().sum(0)
    codes = [torch.where((grid >= 0) & (grid < codebook_size), grid, -1) for grid in grids]
    return Tokens(grain, codes, factors, shape, codebook_size)


def grid_distance(H, W, device, periodic=False):
    """(H * W, H * W) distance in cells between the cells of an (H, W) grid, raster order; on the torus if periodic."""
    rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    place = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    step = (place[:, None] - place[None]).abs()
    if periodic:
        step = torch.minimum(step, torch.tensor([H, W], device=device) - step)
    return step.square().sum(-1).sqrt()
