"""What the code an autoregressive prior predicts sees of its spatial neighbours, in any scan order.

The content transformer can find a code's neighbours by attention, but a few
thousand training steps teach that slowly, and in the coarse-to-fine order a
neighbour may sit hundreds of tokens back. A `NeighbourMap` hands them over:
the tokens of a sequence painted on the finest grid, each finest cell
holding the code, level and sequence index of the token that covers it. For
a code to be predicted at level k, cell (row, col), `gather` reads the n x n
cells of level k's grid around it (each at its centre finest cell, so a finer
region shows one of its codes, a coarser one its single code); a neighbour
counts only where its token comes earlier in the sequence.

With nested tokens a cell is covered once per level it reached, so the map
keeps one layer per level, and a neighbour shows the finest of its codes
that comes earlier than the code predicted.
"""

import torch

LATE = torch.iinfo(torch.long).max  # the sequence index of a cell no token has covered yet


class NeighbourMap:
    """Who covers each finest cell of `n` fields, and when (see the module docstring).

    Parameters
    ----------
    scan : the prior's `Scan` (its levels' grids and scales).
    n : number of sequences; device : where the maps live.
    size : odd side of the square of neighbours `gather` reads.
    periodic : the fields wrap around; else nothing lies beyond the edges.
    """

    def __init__(self, scan, n, device, size, periodic=False):
        self.size, self.periodic = size, periodic
        self.grids = scan.grids
        self.H, self.W = scan.grids[0]
        self.cell = torch.tensor([scan.scales[0] // s for s in scan.scales], device=device)  # finest cells per side
        self.heights, self.widths = (torch.tensor(d, device=device) for d in zip(*scan.grids))  # per level
        self.layers = len(scan.grids) if scan.nested else 1
        self.index = torch.full((self.layers, n, self.H * self.W), LATE, dtype=torch.long, device=device)
        self.code = torch.zeros(self.layers, n, self.H * self.W, dtype=torch.long, device=device)
        self.level = torch.zeros_like(self.code)

    def paint(self, b, t, level, row, col, code):
        """Record code tokens (flat tensors, one entry per token): sequence `b`, index `t`, its place and code."""
        for k in range(len(self.grids)):
            at = level == k
            m, layer = int(self.cell[k]), k if self.layers > 1 else 0
            for dy in range(m):
                for dx in range(m):
                    flat = (row[at] * m + dy) * self.W + col[at] * m + dx
                    self.index[layer, b[at], flat] = t[at]
                    self.code[layer, b[at], flat] = code[at]
                    self.level[layer, b[at], flat] = k

    def gather(self, level, row, col, before):
        """The neighbourhoods of places (level, row, col), (B, T) each, seen from sequence index `before` (B, T).

        Returns (code, level, known), (B, T, size**2) each: the neighbours'
        codes and levels, and whether each is covered by a token whose index
        is below `before` (the place itself never is, its own token coming at
        `before`).
        """
        p = self.size // 2
        m = self.cell[level]
        heights, widths = self.heights[level], self.widths[level]
        d = torch.arange(-p, p + 1, device=level.device)
        r = row[..., None, None] + d[:, None]  # (B, T, size, 1) rows and (B, T, 1, size) columns, level-k cells
        c = col[..., None, None] + d[None, :]
        inside = (r >= 0) & (r < heights[..., None, None]) & (c >= 0) & (c < widths[..., None, None])
        if self.periodic:
            r, c, inside = r % heights[..., None, None], c % widths[..., None, None], torch.ones_like(inside)
        centre = (m // 2)[..., None, None]
        flat = ((r.clamp(min=0) * m[..., None, None] + centre).clamp(max=self.H - 1) * self.W
                + (c.clamp(min=0) * m[..., None, None] + centre).clamp(max=self.W - 1))
        flat = flat.flatten(2)
        B, T = level.shape
        code = lvl = known = None
        for layer in reversed(range(self.layers)):  # coarsest first: a finer code known earlier covers it
            index, c, v = (x[layer].gather(1, flat.flatten(1)).view(B, T, -1) for x in (self.index, self.code, self.level))
            seen = inside.flatten(2) & (index < before[..., None])
            if known is None:
                code, lvl, known = c, v, seen
            else:
                code, lvl, known = torch.where(seen, c, code), torch.where(seen, v, lvl), known | seen
        return code, lvl, known
