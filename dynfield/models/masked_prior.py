"""The bidirectional prior: grain levels coarse to fine, masked tokens inside a level.

The tokens of a field are taken level by level, from the coarsest (K-1) to the
finest (0). At level k every cell of the level-k grid (Hp / f_k, Wp / f_k)
whose region is still open (not taken by a coarser level) carries one symbol:
a code in [0, N), or FINER when its region goes to a finer level (there is no
FINER at level 0). All level-k cells of a region are codes or all are FINER,
so the grain map is coded jointly with the codes. Cells of closed regions are
context: they show the coarser code that covers them.

One non-causal transformer, shared by the levels, predicts the masked cells of
a level with context on all sides (MaskGIT), because physical fields have no
causal scan direction. It is trained on random masks with a cosine masking
ratio, samples in a few confident-first rounds, and measures an exact code
length with a fixed reveal schedule that a decoder can replay round by round.

Its attention scores carry a distance penalty, a learned slope per level and
head times the distance between the two cells (ALiBi, in 2D). Without it a
masked cell sees its neighbours only once the position tables have learned
where they are, and until then, which on these tokens outlasts a training
budget, the prior learns no more than the frequency of each symbol: unlike an
autoregressive prior, whose newest token sits in the very state that predicts
the next one, a masked cell holds nothing of its surroundings.

The grain of a region is decided at one cell: its "lead" cell, the region's
first revealed cell (in sampling, its most confident revealed cell). The lead
pays for the grain with the full distribution over codes and FINER; once the
region is known to carry codes, its other cells pay only for their code (the
distribution over codes alone), and once it is known to go finer, they are
all FINER and cost nothing.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prior import PriorOutput, Transformer, check_sampling, evaluating, filter_logits
from .tokens import Tokens, check_factors, repeat_cells


def _regions(x_BHW, s):
    """(B, Hc * s, Wc * s) -> (B, Hc, Wc, s * s): the cells of each region side by side."""
    B, H, W = x_BHW.shape
    return x_BHW.reshape(B, H // s, s, W // s, s).transpose(2, 3).reshape(B, H // s, W // s, s * s)


def _cells(x_BHWS, s):
    """Inverse of ``_regions``: (B, Hc, Wc, s * s) -> (B, Hc * s, Wc * s)."""
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
    f_K = tokens.require_single_stage("the bidirectional prior").factors[-1]
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


def _split_nll(logits_BLV, target_BL):
    """Nats of each target symbol, split into its grain part and its code part.

    logits_BLV holds N code logits and the FINER logit last; target_BL is a
    symbol in [0, N] (anything else gives meaningless values, for the caller to
    mask). The full negative log-likelihood is grain + code:
    -log p(c) = -log(1 - p(FINER)) - log p(c | not FINER).
    """
    N = logits_BLV.shape[-1] - 1
    lse_all = logits_BLV.logsumexp(-1)
    lse_code = logits_BLV[..., :N].logsumexp(-1)
    finer = target_BL == N
    grain = torch.where(finer, lse_all - logits_BLV[..., N], lse_all - lse_code)
    code_logit = logits_BLV.gather(-1, target_BL.clamp(0, N - 1)[..., None])[..., 0]
    code = torch.where(finer, torch.zeros_like(lse_code), lse_code - code_logit)
    return grain, code


def _grid_distance(H, W, device):
    """(H * W, H * W) distance in cells between the cells of an (H, W) grid, raster order."""
    rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
    place = torch.stack([rows.flatten(), cols.flatten()], -1).float()
    return torch.cdist(place, place)


def _draw(logits_BLV, generator, temperature, top_k, top_p):
    """Draw one symbol per cell; returns (symbols (B, L), their log-probability (B, L))."""
    logp = filter_logits(logits_BLV, temperature, top_k, top_p).log_softmax(-1)
    symbols = torch.multinomial(logp.exp().flatten(0, -2), 1, generator=generator).view(logp.shape[:-1])
    return symbols, logp.gather(-1, symbols[..., None])[..., 0]


class MaskedPrior(nn.Module):
    """Bidirectional prior over the tokens of one field shape (order "bidirectional").

    Parameters
    ----------
    order : must be "bidirectional" (the autoregressive orders are ``ARPrior``'s).
    factors : the tokenizer's ascending downsampling factors, one per level.
    shape : (H, W) of the fields.
    codebook_size : N, the number of codes.
    dim, depth, heads, dropout : size of the transformer; each head of each
        level penalises attention by a learned slope times the distance.
    rounds : reveal rounds per level, in sampling and in the exact code length.
    reveal_noise : scale of the Gumbel noise added to the confidence when
        sampling, annealed linearly to 0 over the rounds (MaskGIT's choice
        temperature, whose default 4.5 this is); 0 reveals strictly
        confident-first.
    seed : seed of the fixed reveal schedule of ``bits``.

    The constructor arguments are kept in ``self.config`` (JSON-serialisable),
    so ``MaskedPrior(**prior.config)`` rebuilds the module.
    """

    def __init__(self, *, order, factors, shape, codebook_size, dim=256, depth=4, heads=4, dropout=0.0,
                 rounds=8, reveal_noise=4.5, seed=0):
        super().__init__()
        if order != "bidirectional":
            raise ValueError(f"MaskedPrior implements the 'bidirectional' order, got {order!r}")
        factors = check_factors(factors)
        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be a positive (H, W), got {shape}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be positive, got {codebook_size}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        if rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {rounds}")
        if reveal_noise < 0:
            raise ValueError(f"reveal_noise must be >= 0, got {reveal_noise}")
        self.config = dict(
            order=order, factors=list(factors), shape=list(shape), codebook_size=codebook_size, dim=dim,
            depth=depth, heads=heads, dropout=dropout, rounds=rounds, reveal_noise=reveal_noise, seed=seed,
        )
        self.factors, self.shape, self.codebook_size = factors, shape, codebook_size
        self.rounds, self.reveal_noise, self.seed = rounds, reveal_noise, seed
        f_K = factors[-1]
        self.region_shape = (-(-shape[0] // f_K), -(-shape[1] // f_K))  # (Hc, Wc)
        self.grid_shapes = [(self.region_shape[0] * f_K // f, self.region_shape[1] * f_K // f) for f in factors]
        N, K = codebook_size, len(factors)
        self.FINER, self.MASK = N, N + 1
        self.tok_emb = nn.Embedding(N + 2, dim)  # codes, FINER, MASK
        self.src_emb = nn.Embedding(K, dim)  # level a shown symbol lives at: k for the level's own cells, j > k for context
        # Per level, a row table and a column table: a cell's place is their sum. Shared along
        # rows and columns, they learn where neighbours are far sooner than one vector per cell
        # would; being per level, they also tell the shared transformer which level it predicts.
        self.row_emb = nn.ModuleList(nn.Embedding(H, dim) for H, _ in self.grid_shapes)
        self.col_emb = nn.ModuleList(nn.Embedding(W, dim) for _, W in self.grid_shapes)
        # ALiBi slopes 1, 1/2, 1/4, ... per level: from near neighbours (~1 cell) to most of the grid
        self.locality = nn.Parameter(torch.tensor([2.0 ** -h for h in range(heads)]).repeat(K, 1))
        self.transformer = Transformer(dim, depth, heads, dropout)  # no causal mask: every cell sees every cell
        self.head = nn.Linear(dim, N + 1)  # codes, FINER
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    @property
    def num_levels(self):
        return len(self.factors)

    def _level_grids(self, tokens):
        """Check that `tokens` belong to this prior; return their symbol grids."""
        if tokens.shape != self.shape or tokens.factors != self.factors or tokens.codebook_size != self.codebook_size:
            raise ValueError(
                f"the prior models shape {self.shape}, factors {self.factors}, codebook {self.codebook_size}; "
                f"got tokens of shape {tokens.shape}, factors {tokens.factors}, codebook {tokens.codebook_size}"
            )
        return level_grids(tokens.validate())

    def _context(self, grids, k):
        """What level k sees of the coarser levels, per cell (B, L).

        Returns (symbol, source level): in a closed region the coarser code that
        covers the cell and its level; in an open region MASK and k.
        """
        symbol = torch.full_like(grids[k], self.MASK)
        source = torch.full_like(grids[k], k)
        for j in range(k + 1, self.num_levels):
            up = repeat_cells(grids[j], self.factors[j] // self.factors[k])
            taken = (up >= 0) & (up < self.FINER)
            symbol, source = torch.where(taken, up, symbol), torch.where(taken, j, source)
        return symbol.flatten(1), source.flatten(1)

    def _logits(self, k, grid_BL, known_BL, context):
        """(B, L, N + 1) logits of every cell of level k, seeing the known cells and the context."""
        symbol, source = context
        inputs = torch.where(known_BL & (grid_BL >= 0), grid_BL, symbol)
        row, col = self.row_emb[k].weight, self.col_emb[k].weight
        place_LD = (row[:, None] + col[None, :]).flatten(0, 1)  # (H * W, dim), raster order of the grid
        x = self.tok_emb(inputs) + self.src_emb(source) + place_LD
        logits = self.head(self.transformer(x, self._distance_bias(k, x.device)))
        if k == 0:  # every open region of the finest level carries codes
            logits = logits.masked_fill(torch.arange(self.FINER + 1, device=logits.device) == self.FINER, -math.inf)
        return logits

    def _distance_bias(self, k, device):
        """(heads, L, L) additive attention bias of level k: minus each head's slope times the cell distance."""
        return -self.locality[k][:, None, None] * _grid_distance(*self.grid_shapes[k], device)

    def _still_masked(self, n_open, r):
        """Cells (like n_open) still masked after round r of the cosine schedule; 0 after the last."""
        return (n_open.double() * math.cos(math.pi / 2 * (r + 1) / self.rounds)).floor().long()

    def _train_masked(self, grid, k):
        """(B, H, W) bool: a random mask over the open cells of the level-k grid.

        A cosine-distributed fraction of the open cells is masked (MaskGIT). A
        FINER region is masked whole or not at all, as in decoding, where its
        first revealed cell reveals all of it.
        """
        B = grid.shape[0]
        is_open = grid >= 0
        n_open = is_open.flatten(1).sum(1)
        ratio = torch.cos(math.pi / 2 * torch.rand(B, device=grid.device))
        n_mask = (ratio * n_open).ceil().long()
        score = torch.rand(grid.shape, device=grid.device).masked_fill(~is_open, -1.0)
        rank = score.flatten(1).argsort(1, descending=True).argsort(1).view_as(grid)
        masked = rank < n_mask[:, None, None]
        s = self.factors[-1] // self.factors[k]
        whole = repeat_cells(_regions(masked, s).all(-1), s)
        return torch.where(grid == self.FINER, whole, masked)

    def forward(self, tokens):
        """Training objective (random masks) in training mode, the exact code length in eval mode.

        In training mode, loss and parts are nats per masked cell and bits the
        masked cells' bits per sample; in eval mode they are the exact code
        length of ``bits``, per token of ``tokens.count()`` and per sample.
        parts = {"grain": the grain decisions, "code": the codes}; they sum to loss.
        """
        grids = self._level_grids(tokens)
        count = tokens.count()
        if self.training:
            grain = code = 0.0
            n_predicted = 0
            for k in reversed(range(self.num_levels)):
                masked = self._train_masked(grids[k], k).flatten(1)
                grid = grids[k].flatten(1)
                logits = self._logits(k, grid, ~masked, self._context(grids, k))
                g, c = _split_nll(logits, grid)
                grain = grain + torch.where(masked, g, 0.0).sum(1)
                code = code + torch.where(masked, c, 0.0).sum(1)
                n_predicted = n_predicted + masked.sum()
        else:
            grain, code = (x.float() for x in self._code_length(grids))
            n_predicted = count.sum()
        n_predicted = torch.as_tensor(n_predicted).clamp(min=1)
        return PriorOutput(
            loss=(grain + code).sum() / n_predicted,
            parts={"grain": grain.sum() / n_predicted, "code": code.sum() / n_predicted},
            bits=(grain + code) / math.log(2),
            count=count,
        )

    def _schedule(self, k, open_BL):
        """The fixed reveal schedule of level k: it depends only on the open cells.

        Returns
        -------
        lead : (L,) bool, per region the cell that comes first in the level's
            seeded permutation; it carries the region's grain decision.
        round : (B, L) long, the round in which each open cell is revealed: the
            open cells, in permutation order, split by the cosine schedule.
        """
        H, W = self.grid_shapes[k]
        s = self.factors[-1] // self.factors[k]
        # drawn on the CPU, so the schedule is the same on every device
        perm = torch.randperm(H * W, generator=torch.Generator().manual_seed(self.seed + k)).to(open_BL.device)
        position = torch.empty_like(perm)
        position[perm] = torch.arange(H * W, device=perm.device)
        first = _regions(position.view(1, H, W), s).argmin(-1)
        lead = _cells(F.one_hot(first, s * s).bool(), s).flatten()
        rank = torch.empty_like(open_BL, dtype=torch.long)
        rank[:, perm] = open_BL[:, perm].long().cumsum(1) - 1  # rank among the open cells
        n_open = open_BL.sum(1, keepdim=True)
        rounds = sum((rank >= n_open - self._still_masked(n_open, r)).long() for r in range(self.rounds))
        return lead, rounds

    def _code_length(self, grids):
        """Exact code length of the level grids, in nats: (grain (B,), code (B,)) float64.

        The decoder's replay: per level, per round, one transformer pass on the
        cells known so far predicts, in parallel, the cells the schedule reveals.
        """
        B = grids[0].shape[0]
        grain = torch.zeros(B, dtype=torch.float64, device=grids[0].device)
        code = torch.zeros_like(grain)
        for k in reversed(range(self.num_levels)):
            s = self.factors[-1] // self.factors[k]
            grid = grids[k].flatten(1)
            is_open, finer = grid >= 0, grid == self.FINER
            lead, rounds = self._schedule(k, is_open)
            context = self._context(grids, k)
            known = ~is_open
            for r in range(self.rounds):
                g, c = _split_nll(self._logits(k, grid, known, context).double(), grid)
                now = ~known & (rounds == r)
                grain = grain + torch.where(now & lead, g, 0.0).sum(1)
                code = code + torch.where(now & ~finer, c, 0.0).sum(1)
                # a lead revealed FINER reveals its whole region
                decided = _regions((now & lead & finer).view_as(grids[k]), s).any(-1)
                known = known | now | repeat_cells(decided, s).flatten(1)
        return grain, code

    @torch.no_grad()
    def bits(self, tokens):
        """(B,) float64 exact code length in bits of each sample (grain and codes), deterministic."""
        grids = self._level_grids(tokens)
        with evaluating(self):
            grain, code = self._code_length(grids)
        return (grain + code) / math.log(2)

    @torch.no_grad()
    def sample(self, n, *, seed=0, temperature=1.0, top_k=None, top_p=None):
        """Draw `n` token sets, level by level, each level in ``rounds`` confident-first rounds.

        In round r every masked cell draws a symbol; the most confident ones are
        kept, as many as the cosine schedule reveals, the others masked again.
        An undecided region takes its grain from its most confident revealed
        cell: FINER reveals the whole region as FINER, a code makes its other
        cells draw among codes only. Returns valid Tokens on the module's device.
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        check_sampling(temperature, top_k, top_p)
        with evaluating(self):
            return self._sample(n, seed, temperature, top_k, top_p)

    def _sample(self, n, seed, temperature, top_k, top_p):
        device = self.head.weight.device
        generator = torch.Generator(device).manual_seed(seed)
        N, K, R = self.codebook_size, self.num_levels, self.rounds
        grids = [None] * K
        open_regions = torch.ones(n, *self.region_shape, dtype=torch.bool, device=device)
        for k in reversed(range(K)):
            s = self.factors[-1] // self.factors[k]
            H, W = self.grid_shapes[k]
            is_open = repeat_cells(open_regions, s).flatten(1)
            grid = torch.full((n, H * W), -1, dtype=torch.long, device=device)
            grids[k] = grid.view(n, H, W)
            context = self._context(grids, k)
            known = ~is_open
            coded = torch.full_like(open_regions, k == 0)  # regions known to carry codes at this level
            n_open = is_open.sum(1)
            for r in range(R):
                logits = self._logits(k, grid, known, context).float()
                coded_cells = repeat_cells(coded, s).flatten(1)
                logits[..., N] = logits[..., N].masked_fill(coded_cells, -math.inf)
                symbol, logp = _draw(logits, generator, temperature, top_k, top_p)
                code_symbol, _ = _draw(logits[..., :N], generator, temperature, top_k, top_p)
                # MaskGIT's confidence: the drawn symbol's log-probability, plus annealed Gumbel noise
                uniform = torch.rand(logp.shape, generator=generator, device=device).clamp(min=1e-20)
                noise = -torch.log(-torch.log(uniform)) * self.reveal_noise * (1 - (r + 1) / R)
                confidence = (logp + noise).masked_fill(known, -math.inf)
                n_reveal = (~known).sum(1) - self._still_masked(n_open, r)
                rank = confidence.argsort(1, descending=True).argsort(1)
                reveal = ~known & (rank < n_reveal[:, None])
                # an undecided region's most confident revealed cell leads: it decides the grain
                candidate = reveal & ~coded_cells
                region_conf = _regions(confidence.masked_fill(~candidate, -math.inf).view(n, H, W), s)
                decides = _regions(candidate.view(n, H, W), s).any(-1)
                lead = _cells(F.one_hot(region_conf.argmax(-1), s * s).bool() & decides[..., None], s).flatten(1)
                drawn = torch.where(lead, symbol, code_symbol)
                lead_symbol = _regions(torch.where(lead, symbol, -1).view(n, H, W), s).amax(-1)
                coded = coded | (decides & (lead_symbol < N))
                finer_cells = repeat_cells(decides & (lead_symbol == N), s).flatten(1)
                grid = torch.where(finer_cells, N, torch.where(reveal, drawn, grid))
                known = known | reveal | finer_cells
                grids[k] = grid.view(n, H, W)
            open_regions = _regions(grids[k], s).eq(N).all(-1)
        return grids_to_tokens(grids, self.factors, self.shape, N)
