"""The token type shared by the tokenizer, the prior, the codec and the analysis.

A field of shape (H, W) is padded up to (Hp, Wp), multiples of the coarsest
factor f_K, and cut into regions of f_K x f_K cells (the coarsest grid,
Hc x Wc). Each region has one grain level k; at level k it carries
(f_K / f_k)^2 codes on the level-k grid (Hp / f_k, Wp / f_k). With residual
quantization each region also has a depth d >= 1: each of its cells carries
d codes, one per stage of the ladder, the first in ``codes`` and the others
in ``residual``.

Nested tokens (``nested=True``) refine instead of replacing: a region at
level g carries the codes of every level k >= g, those of the levels coarser
than g to the full depth and those of level g to the region's depth. Every
region then has its coarsest-level codes, and a finer level codes what the
coarser ones left.
"""

from dataclasses import dataclass

import torch


def repeat_cells(x, scale):
    """Nearest-neighbour copy of a map (..., H, W) onto a grid `scale` times finer."""
    if scale == 1:
        return x
    return x.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)


def stage_masks(grain, depth, factors, stages, nested=False):
    """Per level k, the (B, S, Hp / f_k, Wp / f_k) bool mask of the codes tokens carry.

    A cell of level k holds a code at stage s where its region is at level k
    and its depth exceeds s; with `nested`, also at every stage where its
    region is at a finer level than k.
    """
    f_K = factors[-1]
    stage = torch.arange(stages, device=grain.device)[None, :, None, None]
    masks = []
    for k, f in enumerate(factors):
        used = repeat_cells(grain == k, f_K // f)[:, None] & (stage < repeat_cells(depth, f_K // f)[:, None])
        if nested:
            used = used | repeat_cells(grain < k, f_K // f)[:, None]
        masks.append(used)
    return masks


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
    codebook_size : number of codes in the (shared) codebook of each stage.
    depth : (B, Hc, Wc) long, residual stages per region (>= 1); None: one everywhere.
    residual : per level k a (B, S - 1, Hp / f_k, Wp / f_k) long tensor of the
        codes of stages 1 .. S-1, -1 where the level is not used or the stage
        lies past the region's depth; empty for single-stage tokens.
    nested : the codes of a region refine those of the coarser levels, which it
        also carries (see the module docstring).
    """

    grain: torch.Tensor
    codes: tuple
    factors: tuple
    shape: tuple
    codebook_size: int
    depth: torch.Tensor | None = None
    residual: tuple = ()
    nested: bool = False

    def __post_init__(self):
        self.codes = tuple(self.codes)
        self.residual = tuple(self.residual)
        if self.depth is None:
            self.depth = torch.ones_like(self.grain)
        self.factors = tuple(int(f) for f in self.factors)
        self.shape = tuple(int(s) for s in self.shape)
        self.codebook_size = int(self.codebook_size)
        self.nested = bool(self.nested)

    @property
    def num_levels(self):
        return len(self.factors)

    @property
    def stages(self):
        """S: the length of the residual ladder these tokens were cut from."""
        return 1 + (self.residual[0].shape[1] if self.residual else 0)

    def stage_codes(self):
        """Per level k, every stage's codes as one (B, S, Hp / f_k, Wp / f_k) tensor."""
        if not self.residual:
            return [c[:, None] for c in self.codes]
        return [torch.cat([c[:, None], r], 1) for c, r in zip(self.codes, self.residual)]

    def require_single_stage(self, user):
        """Raise ValueError naming `user` if these tokens have residual stages; return self."""
        if self.stages > 1:
            raise ValueError(f"{user} models single-stage tokens; these come from a {self.stages}-stage "
                             f"residual tokenizer")
        return self

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
        used = self.grain <= k if self.nested else self.grain == k
        return repeat_cells(used, self.factors[-1] // self.factors[k])

    def count(self):
        """(B,) long: number of codes actually used per sample."""
        return sum((c >= 0).flatten(1).sum(1) for c in self.codes + self.residual)

    def level_fractions(self):
        """(B, K) float: fraction of regions at each level."""
        one_hot = torch.nn.functional.one_hot(self.grain.flatten(1), self.num_levels)
        return one_hot.float().mean(1)

    def fine_fraction(self):
        """(B,) float: fraction of regions at any level finer than the coarsest."""
        return (self.grain < self.num_levels - 1).flatten(1).float().mean(1)

    def to(self, device):
        codes = tuple(c.to(device) for c in self.codes)
        residual = tuple(r.to(device) for r in self.residual)
        return Tokens(self.grain.to(device), codes, self.factors, self.shape, self.codebook_size,
                      self.depth.to(device), residual, self.nested)

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
                raise ValueError(f"level {k} codes are set (>= 0) where the grain map does not use level {k}, "
                                 f"or missing where it does")
        self._validate_depth()
        return self

    def _validate_depth(self):
        S = self.stages
        if tuple(self.depth.shape) != tuple(self.grain.shape) or self.depth.dtype != torch.long:
            raise ValueError(f"depth must be a {tuple(self.grain.shape)} long tensor like the grain map, "
                             f"got {tuple(self.depth.shape)} of {self.depth.dtype}")
        if self.depth.numel() and (self.depth.min() < 1 or self.depth.max() > S):
            raise ValueError(f"depths must lie in [1, {S}] for {S}-stage tokens, got [{self.depth.min()}, {self.depth.max()}]")
        if self.residual and len(self.residual) != self.num_levels:
            raise ValueError(f"expected residual codes for each of the {self.num_levels} levels, got {len(self.residual)}")
        used = stage_masks(self.grain, self.depth, self.factors, S, self.nested)
        for k, (codes, residual) in enumerate(zip(self.codes, self.residual)):
            expected = (codes.shape[0], S - 1, *codes.shape[1:])
            if tuple(residual.shape) != expected or residual.dtype != torch.long:
                raise ValueError(f"level {k} residual codes must be a {expected} long tensor, got {tuple(residual.shape)}")
            if residual.numel() and (residual.min() < -1 or residual.max() >= self.codebook_size):
                raise ValueError(f"level {k} residual codes must lie in [-1, {self.codebook_size})")
            if not torch.equal(residual >= 0, used[k][:, 1:]):
                raise ValueError(f"level {k} residual codes disagree with the depth map: set past a region's depth "
                                 f"or where the level is unused, or missing within it")
