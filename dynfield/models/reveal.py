"""The order in which the bidirectional prior reveals the cells of a grid: interlaced lattices, coarse first."""

import torch
import torch.nn.functional as F

from .level_grids import from_regions, to_regions
from .tokens import repeat_cells


def lattice_order(spacing):
    """The offsets (i, j) of a spacing x spacing lattice, coarse first (Adam7's interlace order).

    Each halving of the lattice step adds the centres of the current squares,
    then the midpoints of their edges: [(0, 0)], then (2, 2), (0, 2), (2, 0),
    then (1, 1), (3, 3), (1, 3), (3, 1), then the 8 others, for spacing 4.
    """
    if spacing < 1 or spacing & (spacing - 1):
        raise ValueError(f"the lattice spacing must be a power of 2, got {spacing}")
    order, h = [(0, 0)], spacing // 2
    while h >= 1:
        corners = order
        order = corners + [(i + h, j + h) for i, j in corners]
        order = order + [(i, j + h) for i, j in corners] + [(i + h, j) for i, j in corners]
        h //= 2
    return order


def lattice_rounds(H, W, spacing, nested=False):
    """(H * W,) long, raster order: the reveal round of each cell, numbered from 0 without gaps.

    Flat, a cell's round is its offset's place in ``lattice_order``, and the
    first round reveals the whole coarsest lattice at once. Nested, that
    lattice is itself revealed in the same order on its own grid, recursively
    down to a single cell, before the other offsets: no two cells are ever
    drawn blind of each other, so that structure larger than the lattice step
    (a mean flow, its phase) can be decided once and then followed.
    """
    index = {offset: r for r, offset in enumerate(lattice_order(spacing))}
    rounds = torch.tensor([[index[i % spacing, j % spacing] for j in range(W)] for i in range(H)])
    if nested and spacing > 1 and H * W > 1:
        sub = lattice_rounds(-(-H // spacing), -(-W // spacing), spacing, nested=True)
        rounds = rounds + int(sub.max())
        rounds[::spacing, ::spacing] = sub.view(-(-H // spacing), -(-W // spacing))
    return rounds.flatten().unique(return_inverse=True)[1]


def region_leads(rounds, H, W, s):
    """The lead of each region of s x s cells of an (H, W) grid whose cells are revealed at `rounds` (L,).

    A region's lead is its first cell in the reveal order (round, then raster
    place). Returns (lead (L,) bool, the round of each cell's lead (L,)).
    """
    position = rounds * (H * W) + torch.arange(H * W)
    first = to_regions(position.view(1, H, W), s).argmin(-1)
    lead_round = repeat_cells(to_regions(rounds.view(1, H, W), s).amin(-1), s).flatten()
    return from_regions(F.one_hot(first, s * s).bool(), s).flatten(), lead_round
