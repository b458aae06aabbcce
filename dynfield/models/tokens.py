"""The token type shared by the tokenizer, the prior, the codec and the analysis.

A field of shape (H, W) is padded up to (Hp, Wp), multiples of the coarsest
factor f_K, and cut into regions of f_K x f_K cells (the coarsest grid,
Hc x Wc). Each region has one grain level k; at level k it carries
(f_K / f_k)^2 codes on the level-k grid (Hp / f_k, Wp / f_k).
"""

from dataclasses import dataclass

import torch


def repeat_cells(x, scale):
    """Nearest-neighbour copy of a map (..., H, W) onto a grid `scale` times finer."""
    if scale == 1:
        return x
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def check_factors(factors):
    """Return `factors` as a tuple after checking they are ascending powers of two >= 2."""
    factors = tuple(int(f) for f in factors)
    if not factors:
        raise ValueError("factors must hold at least one downsampling factor")
    for f in factors:
        if f < 2 or f & (f - 1):
            raise ValueError(f"factors must be powers of two >= 2, got {factors}")
    if any(a >= b for a, b in zip(factors, factors[1:])):
        raise ValueError(f"factors must be strictly ascending, got {factors}")
    return factors


@dataclass
class Tokens:
    """Grain map and code indices of a batch of fields.

    Attributes
    ----------
    grain : (B, Hc, Wc) long, level index per coarsest-grid region (0 = finest).
    codes : per level k a (B, Hp / f_k, Wp / f_k) long tensor of code indices,
        -1 where that level is not used.
    factors : ascending downsampling factors, one per level.
    shape : original (H, W) of the field, before padding.
    codebook_size : number of codes in the (shared) codebook.
    """

    grain: torch.Tensor
    codes: tuple
    factors: tuple
    shape: tuple
    codebook_size: int

    def __post_init__(self):
        self.codes = tuple(self.codes)
        self.factors = tuple(int(f) for f in self.factors)
        self.shape = tuple(int(s) for s in self.shape)
        self.codebook_size = int(self.codebook_size)

    @property
    def num_levels(self):
        return len(self.factors)

    @property
    def batch_size(self):
        return self.grain.shape[0]

    @property
    def padded_shape(self):
        """(Hp, Wp): the field's shape after padding to the coarsest grid."""
        f = self.factors[-1]
        return self.grain.shape[1] * f, self.grain.shape[2] * f

    def level_mask(self, k):
        """(B, Hp / f_k, Wp / f_k) bool: where level k carries codes."""
        return repeat_cells(self.grain == k, self.factors[-1] // self.factors[k])

    def count(self):
        """(B,) long: number of codes actually used per sample."""
        return sum((c >= 0).flatten(1).sum(1) for c in self.codes)

    def level_fractions(self):
        """(B, K) float: fraction of regions at each level."""
        one_hot = torch.nn.functional.one_hot(self.grain.flatten(1), self.num_levels)
        return one_hot.float().mean(1)

    def fine_fraction(self):
        """(B,) float: fraction of regions at any level finer than the coarsest."""
        return (self.grain < self.num_levels - 1).flatten(1).float().mean(1)

    def to(self, device):
        codes = tuple(c.to(device) for c in self.codes)
        return Tokens(self.grain.to(device), codes, self.factors, self.shape, self.codebook_size)

    def validate(self):
        """Raise ValueError if grain map, codes, factors and shape disagree; return self."""
        factors = check_factors(self.factors)
        K, f_K = len(factors), factors[-1]
        if self.grain.dim() != 3 or self.grain.dtype != torch.long:
            raise ValueError(f"grain must be a (B, Hc, Wc) long tensor, got {tuple(self.grain.shape)} of {self.grain.dtype}")
        if len(self.codes) != K:
            raise ValueError(f"expected one code tensor per level ({K}), got {len(self.codes)}")
        B, Hc, Wc = self.grain.shape
        H, W = self.shape
        if -(-H // f_K) != Hc or -(-W // f_K) != Wc:
            grid = (-(-H // f_K), -(-W // f_K))
            raise ValueError(f"shape {self.shape} padded to multiples of {f_K} gives a {grid} grid, grain map is {(Hc, Wc)}")
        if self.grain.numel() and (self.grain.min() < 0 or self.grain.max() >= K):
            raise ValueError(f"grain levels must lie in [0, {K}), got [{self.grain.min()}, {self.grain.max()}]")
        for k, (codes, f) in enumerate(zip(self.codes, factors)):
            expected = (B, Hc * f_K // f, Wc * f_K // f)
            if tuple(codes.shape) != expected or codes.dtype != torch.long:
                raise ValueError(f"level {k} codes must be a {expected} long tensor, got {tuple(codes.shape)} of {codes.dtype}")
            if codes.numel() and (codes.min() < -1 or codes.max() >= self.codebook_size):
                bounds = f"[{codes.min()}, {codes.max()}]"
                raise ValueError(f"level {k} codes must lie in [-1, {self.codebook_size}), got {bounds}")
            if not torch.equal(codes >= 0, self.level_mask(k)):
                raise ValueError(
                    f"level {k} codes are set (>= 0) where the grain map does not select level {k}, or missing where it does"
                )
        return self
