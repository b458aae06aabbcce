"""Token sequences for the autoregressive prior: `Tokens` -> sequence -> `Tokens`.

A sequence is a list of tokens. Each token is a code at a place (level k,
row and column in level k's own grid, Hp / f_k x Wp / f_k) or a marker (the
start or the end of a level). Between two tokens the scan makes a position
decision: which place comes next. Most places follow from the earlier ones
(the next cell of a region, the marker after an end, every cell of the finest
level); those are *forced* and cost nothing. The others are *free* decisions
among a candidate set, and the prior pays for them.

Two orders:

- `coarse_to_fine` (the DQ-Transformer's): one segment per level, coarsest
  first, framed by start/end markers. At level k every region no coarser
  level has taken (an *open* region, index in the coarsest grid, Hc x Wc)
  comes in raster order, and the decision before it says whether it takes
  level k: its (f_K / f_k)^2 level-k cells then follow, in raster order inside
  the region, without decisions; or it passes, and a PASS token at its place
  stands for it, so that later decisions and codes see which regions went
  finer. At the finest level every open region is taken, so all of it is
  forced, as is each level's end after its last open region.
- `raster`: one start marker, then the regions in raster order; the decision
  before each region is its grain level, then its cells follow in raster
  order inside the region. With one level there are no free decisions: the
  sequence is the plain VQ raster scan of the codes.

With nested tokens (``Tokens.nested``: every region carries the coarsest
level's codes and a finer region adds refinements) the same two orders list
a region's levels coarsest first. `coarse_to_fine` then codes the whole
coarsest level without decisions, and at each finer level every region that
reached the level above takes the level (its cells follow) or stops there (a
PASS at its place); `raster` lists each region's coarsest cells, then after
the last cell of each level decides whether the region goes finer or stops
(one END marker closes the sequence).

Places inside a level go region by region (not row by row through the level's
grid) so that one decision opens a region and all its cells follow at once.
"""

from dataclasses import dataclass

import torch

from .tokens import Tokens, check_factors

CODE, START, END, PASS = 0, 1, 2, 3  # token kinds


@dataclass
class TokenSequence:
    """A batch of token sequences, padded at the end.

    Attributes (all (B, T) unless noted)
    ----------
    level : level (segment) of each token, 0 = finest.
    kind : CODE, START, END or PASS.
    row, col : place in the level's grid (for a pass, its region's first cell; 0 for markers).
    code : code index, -1 for markers and padding.
    choice : index of the free decision that placed this token among its
        candidates, -1 where the place was forced (and on padding).
    allowed : (B, T, V) bool, the candidates of that decision (where free).
    valid : False on the padding at the end of shorter sequences.
    """

    level: torch.Tensor
    kind: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    code: torch.Tensor
    choice: torch.Tensor
    allowed: torch.Tensor
    valid: torch.Tensor


class Scan:
    """Geometry of one tokenizer's tokens and the order in which they are listed.

    The order is written once as a table of every token a sequence may hold
    (its *entries*, in scan order); a sequence is the entries a grain map
    keeps. `options` (the candidates of the decision after a token) and
    `jump` (where a choice leads) are the only order-specific rules; encoding
    and the step-by-step `Cursor` used for sampling both go through them.

    Parameters
    ----------
    factors : ascending downsampling factors, one per level.
    shape : (H, W) of the fields, before padding.
    nested : the tokens are nested (see the module docstring).
    """

    name = None
    num_kinds = 3  # CODE, START and END

    def __init__(self, factors, shape, nested=False):
        self.factors = check_factors(factors)
        self.shape = tuple(int(s) for s in shape)
        self.nested = bool(nested) and len(self.factors) > 1
        f_K = self.factors[-1]
        self.num_levels = len(self.factors)
        self.Hc, self.Wc = -(-self.shape[0] // f_K), -(-self.shape[1] // f_K)
        self.num_regions = self.Hc * self.Wc
        self.scales = [f_K // f for f in self.factors]  # level-k cells per region side
        self.grids = [(self.Hc * s, self.Wc * s) for s in self.scales]
        level, kind, region, cell = torch.tensor(self._entries(), dtype=torch.long).T
        scale = torch.tensor(self.scales)[level]
        is_code, placed = kind == CODE, (kind == CODE) | (kind == PASS)
        row = torch.where(placed, region // self.Wc * scale + cell // scale, 0)
        col = torch.where(placed, region % self.Wc * scale + cell % scale, 0)
        offsets = torch.tensor([0] + [h * w for h, w in self.grids]).cumsum(0)
        width = torch.tensor([w for _, w in self.grids])[level]
        self.entries = {
            "level": level, "kind": kind, "region": region, "cell": cell, "row": row, "col": col,
            # index of the code in all levels' flattened code maps, concatenated
            "flat": torch.where(is_code, offsets[level] + row * width + col, 0),
            "last_cell": is_code & (cell == scale**2 - 1),
        }
        self.entries["terminal"] = self._terminal()
        # the longest sequence: every marker and pass, and every region at the finest level (nested: at every level)
        finest = sum(s * s for s in self.scales) if self.nested else self.scales[0] ** 2
        self.max_length = int((kind != CODE).sum()) + self.num_regions * finest

    # -- order-specific rules --------------------------------------------------
    def _entries(self):
        """Every token a sequence may hold, in scan order: (level, kind, region, cell) rows."""
        raise NotImplementedError

    def _terminal(self):
        """(N,) bool: entries after which a sequence ends."""
        raise NotImplementedError

    @property
    def num_choices(self):
        """V, the size of the decision vocabulary."""
        raise NotImplementedError

    def options(self, e, open_R):
        """Candidates of the decision that follows entry `e`.

        Parameters
        ----------
        e : (...) long entry index of the current token.
        open_R : (..., R) bool, regions no coarser level has taken.

        Returns
        -------
        (..., V) bool; all False where the next token is forced by the scan alone.
        """
        raise NotImplementedError

    def choice_of(self, e):
        """(...) long: the decision index that leads to entry `e`."""
        raise NotImplementedError

    def open_regions(self, level, grain_R):
        """(..., R) bool: the regions a decision at `level` (...) may still place, from grain map `grain_R`
        (..., R): those no coarser level took, or with nested tokens those that reached the level above.

        A ``Cursor``'s partial grain map works as well as the whole one: it
        holds -1 for a region not placed yet (K, nested: no level reached).
        """
        return grain_R <= (level + int(self.nested))[..., None]

    def unplaced(self):
        """The grain a ``Cursor`` gives a region before any of its codes."""
        return self.num_levels if self.nested else -1

    def jump(self, e, choice, open_R):
        """(...) long: the entry that decision `choice`, taken after entry `e` with regions `open_R` open, leads to."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    def table(self, name, device):
        """(N,) the entries' `name` column (level, kind, region, cell, row, col...) on `device`."""
        return self.entries[name].to(device)

    def check(self, tokens):
        """Raise ValueError unless `tokens` are valid tokens of this scan's factors and shape."""
        if tokens.factors != self.factors or tokens.shape != self.shape:
            raise ValueError(
                f"tokens have factors {tokens.factors} and shape {tokens.shape}, "
                f"expected factors {self.factors} and shape {self.shape}"
            )
        user = f"the {type(self).__name__} order"
        tokens = tokens.validate().require_single_stage(user)
        if tokens.nested != self.nested and len(self.factors) > 1:
            kinds = {True: "nested tokens", False: "tokens with one grain per region"}
            raise ValueError(f"{user} was built for {kinds[self.nested]}; these are {kinds[tokens.nested]}")
        return tokens

    def encode(self, tokens):
        """TokenSequence of a batch of `Tokens` (padded at the end to the longest)."""
        tokens = self.check(tokens)
        device = tokens.grain.device
        grain_BR = tokens.grain.flatten(1)
        level_N, kind_N, region_N = (self.table(n, device) for n in ("level", "kind", "region"))
        grain_BN = grain_BR[:, region_N.clamp(min=0)]
        # codes where the region takes the level (nested: reaches it), passes where it goes finer (nested:
        # where it stops just above), every marker
        if self.nested:
            keep_BN = torch.where(kind_N == CODE, grain_BN <= level_N, (kind_N != PASS) | (grain_BN == level_N + 1))
        else:
            keep_BN = torch.where(kind_N == CODE, grain_BN == level_N, (kind_N != PASS) | (grain_BN < level_N))
        length_B = keep_BN.sum(1)
        T = int(length_B.max())
        # a stable sort brings the kept entries, in scan order, to the front of each row
        e_BT = torch.sort((~keep_BN).byte(), dim=1, stable=True).indices[:, :T]
        valid_BT = torch.arange(T, device=device) < length_B[:, None]
        kind_BT = torch.where(valid_BT, kind_N[e_BT], END)
        level_BT = torch.where(valid_BT, level_N[e_BT], 0)
        is_code = kind_BT == CODE
        codes_BF = torch.cat([c.flatten(1) for c in tokens.codes], 1)
        code_BT = torch.where(is_code, codes_BF.gather(1, self.table("flat", device)[e_BT]), -1)
        # the decision that placed token t follows token t - 1, with the regions open at token t - 1's level
        prev_BT = e_BT[:, :-1]
        open_BTR = self.open_regions(level_N[prev_BT], grain_BR[:, None, :])
        allowed_BTV = self.options(prev_BT, open_BTR) & valid_BT[:, 1:, None]
        free_BT = allowed_BTV.sum(-1) > 1
        choice_BT = torch.where(free_BT, self.choice_of(e_BT[:, 1:]), -1)
        return TokenSequence(
            level=level_BT,
            kind=kind_BT,
            row=torch.where(valid_BT, self.table("row", device)[e_BT], 0),
            col=torch.where(valid_BT, self.table("col", device)[e_BT], 0),
            code=code_BT,
            # token 0, the first start marker, is always forced
            choice=torch.cat([torch.full_like(choice_BT[:, :1], -1), choice_BT], 1),
            allowed=torch.cat([torch.zeros_like(allowed_BTV[:, :1]), allowed_BTV & free_BT[..., None]], 1),
            valid=valid_BT,
        )

    def decode(self, seq, codebook_size):
        """`Tokens` listed by a TokenSequence (its code tokens; markers and padding are skipped)."""
        B, device = seq.level.shape[0], seq.level.device
        grain = torch.full((B, self.num_regions), -1, dtype=torch.long, device=device)
        codes = [None] * self.num_levels
        for k in reversed(range(self.num_levels)):  # coarsest first: a nested region's grain is its finest level
            (h, w), s = self.grids[k], self.scales[k]
            b, t = ((seq.kind == CODE) & (seq.level == k) & seq.valid).nonzero(as_tuple=True)
            row, col = seq.row[b, t], seq.col[b, t]
            codes[k] = torch.full((B, h, w), -1, dtype=torch.long, device=device)
            codes[k][b, row, col] = seq.code[b, t]
            grain[b, row // s * self.Wc + col // s] = k
        return Tokens(grain.view(B, self.Hc, self.Wc), tuple(codes), self.factors, self.shape, codebook_size,
                      nested=self.nested)

    def cursor(self, n, device):
        """A `Cursor` at the start of `n` sequences."""
        return Cursor(self, n, device)


class CoarseToFine(Scan):
    """Levels coarsest first; at each level, take or pass every open region (see the module docstring)."""

    name = "coarse_to_fine"
    num_kinds = 4  # and PASS

    def __init__(self, factors, shape, nested=False):
        super().__init__(factors, shape, nested)
        level, kind = self.entries["level"], self.entries["kind"]
        starts = torch.zeros(self.num_levels, dtype=torch.long)
        starts[level[kind == START]] = (kind == START).nonzero()[:, 0]
        self.entries["level_start"] = starts[level]
        self.entries["deciding_level"] = torch.tensor([self._decides(k) for k in range(self.num_levels)])[level]
        # a level's entries: its start, one block per region (its cells, then its pass), its end
        self.entries["level_block"] = torch.tensor(self.scales)[level] ** 2 + self.entries["deciding_level"]
        self.entries["deciding"] = (kind == START) | (kind == PASS) | self.entries["last_cell"]

    def _decides(self, k):
        """Whether level k takes or passes each open region: every level but the finest (nested: the coarsest),
        which takes them all."""
        return k < self.num_levels - 1 if self.nested else k > 0

    def _entries(self):
        rows = []
        for k in reversed(range(self.num_levels)):
            rows.append((k, START, -1, 0))
            for r in range(self.num_regions):
                rows += [(k, CODE, r, j) for j in range(self.scales[k] ** 2)]
                rows += [(k, PASS, r, 0)] if self._decides(k) else []
            rows.append((k, END, -1, 0))
        return rows

    def _terminal(self):
        return (self.entries["kind"] == END) & (self.entries["level"] == 0)

    @property
    def num_choices(self):
        return 2  # take the level, or pass the region on to a finer one

    def _next_open(self, e, open_R):
        """(...) long: the first open region after entry `e`'s region; R where none is left."""
        region = self.table("region", e.device)[e]  # -1 on markers: every region comes after
        later = open_R & (torch.arange(self.num_regions, device=e.device) > region[..., None])
        return torch.where(later.any(-1), later.byte().argmax(-1), self.num_regions)

    def options(self, e, open_R):
        deciding = self.table("deciding", e.device)[e]
        # a level that takes every open region, and a level's end after its last one, are forced
        free = deciding & self.table("deciding_level", e.device)[e] & (self._next_open(e, open_R) < self.num_regions)
        return torch.stack([deciding, free], -1)

    def choice_of(self, e):
        return (self.table("kind", e.device)[e] == PASS).long()

    def jump(self, e, choice, open_R):
        start, block = self.table("level_start", e.device)[e], self.table("level_block", e.device)[e]
        cells = block - self.table("deciding_level", e.device)[e].long()
        # past the last open region, either choice leads to the level's end (block R)
        return start + 1 + self._next_open(e, open_R) * block + choice * cells


class Raster(Scan):
    """Regions in raster order, each its grain decision then its cells (see the module docstring).

    Nested: each region's cells coarsest level first, a decision after each
    level but the finest (stop, or go finer), and an END after the last region.
    """

    name = "raster"

    def _entries(self):
        rows = [(self.num_levels - 1, START, -1, 0)]
        levels = list(reversed(range(self.num_levels))) if self.nested else list(range(self.num_levels))
        for r in range(self.num_regions):
            for k in levels:
                rows += [(k, CODE, r, j) for j in range(self.scales[k] ** 2)]
        return rows + [(0, END, -1, 0)] if self.nested else rows

    def _terminal(self):
        if self.nested:
            return self.entries["kind"] == END
        return self.entries["last_cell"] & (self.entries["region"] == self.num_regions - 1)

    @property
    def num_choices(self):
        # the grain level of the next region; nested: stop (0) or go finer (1)
        return 2 if self.nested else self.num_levels

    def options(self, e, open_R):
        last_cell = self.table("last_cell", e.device)[e]
        if self.nested:  # after each level but the finest
            deciding = last_cell & (self.table("level", e.device)[e] > 0)
        else:  # before each region but the first, and at the start
            kind, region = self.table("kind", e.device)[e], self.table("region", e.device)[e]
            deciding = ((kind == START) | last_cell) & (region < self.num_regions - 1)
        return deciding[..., None].expand(*e.shape, self.num_choices)

    def choice_of(self, e):
        level = self.table("level", e.device)[e]
        if self.nested:  # a finer cell of the same region: the region went on
            return ((self.table("kind", e.device)[e] == CODE) & (level < self.num_levels - 1)).long()
        return level

    def jump(self, e, choice, open_R):
        per_level = torch.tensor([s * s for s in self.scales], device=e.device)
        region = self.table("region", e.device)[e] + 1
        if self.nested:  # on to the region's next level, or to the next region's first cell (the END after the last)
            return torch.where(choice > 0, e + 1, 1 + region * per_level.sum())
        # region r's entries are its cells at level 0, then at level 1...: the first
        # cell of region r + 1 at level `choice` lies after r + 1 whole regions
        before = torch.cat([per_level.new_zeros(1), per_level.cumsum(0)])
        return 1 + region * before[-1] + before[choice]


SCANS = {s.name: s for s in (CoarseToFine, Raster)}


def make_scan(order, factors, shape, nested=False):
    """The `Scan` of an autoregressive order name ("coarse_to_fine" or "raster"), for nested tokens or not."""
    if order not in SCANS:
        raise ValueError(f"unknown autoregressive order {order!r}, expected one of {sorted(SCANS)}")
    return SCANS[order](factors, shape, nested)


class Cursor:
    """Walks `n` sequences of a scan one token at a time (for sampling).

    The current token of each sequence is an entry of the scan. `options()`
    gives the candidates of the decision before the next token, `advance`
    moves to the next token (the choice counts only where there are several
    candidates), `emit` sets the code of the new token where it is a code.
    A sequence that has ended produces padding until all have ended.
    `sequence()` returns what was walked, as `Scan.encode` lists it.
    """

    def __init__(self, scan, n, device):
        self.scan, self.device = scan, device
        self.e = torch.zeros(n, dtype=torch.long, device=device)  # every scan starts at entry 0
        self.valid = torch.ones(n, dtype=torch.bool, device=device)
        self.grain_BR = torch.full((n, scan.num_regions), scan.unplaced(), dtype=torch.long, device=device)
        self.code = torch.full((n,), -1, dtype=torch.long, device=device)
        self.choice = torch.full((n,), -1, dtype=torch.long, device=device)
        self.allowed = torch.zeros(n, scan.num_choices, dtype=torch.bool, device=device)
        self._steps = []

    def field(self, name):
        """(n,) the current token's `name` (level, row, col...); meaningless on padding."""
        return self.scan.table(name, self.device)[self.e]

    def place(self):
        """(level, kind, row, col) of the current token, (n,) each."""
        return self.field("level"), self.kind, self.field("row"), self.field("col")

    @property
    def kind(self):
        """(n,) kind of the current token (END on padding)."""
        return torch.where(self.valid, self.field("kind"), END)

    @property
    def finished(self):
        """True once every sequence has reached its last token."""
        return bool((~self.valid | self.field("terminal")).all())

    def options(self):
        """(n, V) bool candidates of the next decision; all False where the scan forces the next token."""
        live = self.valid & ~self.field("terminal")
        return self.scan.options(self.e, self._open()) & live[:, None]

    def _open(self):
        return self.scan.open_regions(self.field("level"), self.grain_BR)

    def advance(self, choice):
        """Move every sequence to its next token; `choice` (n,) counts where it is free."""
        self._steps.append(self._snapshot())
        allowed = self.options()
        deciding, free = allowed.any(-1), allowed.sum(-1) > 1
        choice = torch.where(free, choice, allowed.byte().argmax(-1))  # the only candidate
        self.valid &= ~self.field("terminal")
        self.e = torch.where(deciding, self.scan.jump(self.e, choice, self._open()), torch.where(self.valid, self.e + 1, self.e))
        # a region's grain is the level of its latest code (levels come coarsest first within a nested region)
        b = (self.valid & (self.field("kind") == CODE)).nonzero()[:, 0]
        self.grain_BR[b, self.field("region")[b]] = self.field("level")[b]
        self.choice = torch.where(free, choice, -1)
        self.allowed = allowed & free[:, None]
        self.code = torch.full_like(self.code, -1)

    def emit(self, code):
        """Set the code (n,) of the current token where it is a code token."""
        self.code = torch.where(self.kind == CODE, code, -1)

    def _snapshot(self):
        return dict(
            level=torch.where(self.valid, self.field("level"), 0), kind=self.kind,
            row=torch.where(self.valid, self.field("row"), 0), col=torch.where(self.valid, self.field("col"), 0),
            code=self.code, choice=self.choice, allowed=self.allowed, valid=self.valid.clone(),
        )

    def sequence(self):
        """The TokenSequence walked so far, the current token included."""
        steps = self._steps + [self._snapshot()]
        return TokenSequence(**{k: torch.stack([s[k] for s in steps], 1) for k in steps[0]})
