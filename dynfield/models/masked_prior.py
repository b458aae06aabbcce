"""The bidirectional prior: grain levels coarse to fine, masked tokens inside a level.

The tokens of a field are taken level by level, from the coarsest (K-1) to the
finest (0). At level k every cell of the level-k grid (Hp / f_k, Wp / f_k)
whose region is still open carries one symbol: a code in [0, N), or PASS when
the region has no code at level k (``level_grids``). With alternative grains a
region is open until a coarser level takes it, and PASS sends it finer (there
is no PASS at level 0); with nested grains every region has its coarsest
codes (no PASS at level K-1), and PASS at level k stops a region at level
k + 1. All level-k cells of a region are codes or all are PASS, so the grain
map is coded jointly with the codes. Every cell also shows, as context, the
finest coarser code that covers it: the code of a closed region, or with
nested grains the code a region refines.

One transformer, shared by the levels, predicts the cells of a level with
context on all sides, because physical fields have no causal scan direction.
The cells are revealed in a fixed interlaced order (Adam7's): a sparse
lattice first, then the centres of its squares, then the midpoints of their
edges, halving the step until every cell is known, one round per lattice
offset. Every cell after the first few rounds has known neighbours on all
sides, which a raster scan never gives. The coarsest level, which sees no
coarser one, reveals its sparse lattice in the same order again, down to a
single cell, so that no two of its cells are drawn blind of each other.

One pass predicts every cell of a level from exactly the cells revealed in
the rounds before its own, with two streams of the same transformer
(``Transformer.two_stream``): a content stream that carries each cell's
symbol and looks at the cells revealed no later, and a query stream that
carries only a cell's place and looks at the content of earlier rounds. So
training learns from every cell in the very state that coding meets, its
loss is the exact code length, one pass per level, and sampling draws round
by round from the same distribution. (Trained as a masked model, with the
rounds before one random round shown, only the cells of that round met
their coding state, and the prior lagged 4 % behind the raster order at
equal steps.)

A cell to predict holds nothing of its surroundings, so two things bring them
to it: its nearest neighbours' symbols (a linear map of the neighbourhood, a
neighbour counting where it is revealed before the cell), and an attention
bias of minus a learned slope per level and head times the distance between
two cells (ALiBi, in 2D), for the rest of the grid. Without them the prior
learned little more than the frequency of each symbol within a training
budget.

The grain of a region is decided at one cell: its "lead" cell, the region's
first cell in the reveal order. The lead pays for the grain with the full
distribution over codes and PASS; once the region is known to carry codes,
its other cells pay only for their code (the distribution over codes alone),
and once it is known to pass, they are all PASS and cost nothing.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .code_embedding import CodeEmbedding
from .prior import PriorOutput, check_sampling, evaluating, filter_logits
from .level_grids import grid_distance, grids_to_tokens, is_code, level_grids, to_regions
from .reveal import lattice_order, lattice_rounds, region_leads
from .tokens import check_factors, repeat_cells
from .transformer import Rotary, Transformer


def _split_nll(logits_BLV, target_BL):
    """Nats of each target symbol, split into its grain part and its code part.

    logits_BLV holds N code logits and the PASS logit last; target_BL is a
    symbol in [0, N] (anything else gives meaningless values, for the caller to
    mask). The full negative log-likelihood is grain + code:
    -log p(c) = -log(1 - p(PASS)) - log p(c | not PASS).
    """
    N = logits_BLV.shape[-1] - 1
    lse_all = logits_BLV.logsumexp(-1)
    lse_code = logits_BLV[..., :N].logsumexp(-1)
    passes = target_BL == N
    grain = torch.where(passes, lse_all - logits_BLV[..., N], lse_all - lse_code)
    code_logit = logits_BLV.gather(-1, target_BL.clamp(0, N - 1)[..., None])[..., 0]
    code = torch.where(passes, torch.zeros_like(lse_code), lse_code - code_logit)
    return grain, code


def _draw(logits_BLV, generator, temperature, top_k, top_p):
    """(B, L) symbols, one drawn per cell."""
    p = filter_logits(logits_BLV, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(p.flatten(0, -2), 1, generator=generator).view(p.shape[:-1])


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
    spacing : step of the reveal lattice, a power of 2; a level is revealed in
        spacing ** 2 rounds, the coarsest in more (its lattice is nested, as
        it has no coarser level to see).
    neighbourhood : odd size of the square of nearest neighbours whose
        revealed symbols each cell sees directly.
    code_dim : size of the tokenizer's code vectors that the symbol embedding
        and the output see (``CodeEmbedding``; set them with
        ``tok_emb.set_vectors``); 0 for free code embeddings alone.
    periodic : the fields wrap around: neighbours and distances are taken on
        the torus of cells.
    locality : the attention bias by distance; without it every cell sees
        every cell alike (an ablation: the prior then learns little context).
    rotary : rotary embeddings in 2D (``Rotary``, on the torus when periodic):
        attention sees the offset between two cells, direction included.
    nested : the tokenizer's grains are nested (``Tokens.nested``).

    The constructor arguments are kept in ``self.config`` (JSON-serialisable),
    so ``MaskedPrior(**prior.config)`` rebuilds the module.
    """

    def __init__(self, *, order, factors, shape, codebook_size, dim=256, depth=4, heads=4, dropout=0.0,
                 spacing=4, neighbourhood=3, code_dim=0, periodic=False, locality=True, rotary=False,
                 nested=False):
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
        lattice_order(spacing)  # checks the spacing
        if neighbourhood < 1 or neighbourhood % 2 == 0:
            raise ValueError(f"neighbourhood must be a positive odd size, got {neighbourhood}")
        self.config = dict(
            order=order, factors=list(factors), shape=list(shape), codebook_size=codebook_size, dim=dim,
            depth=depth, heads=heads, dropout=dropout, spacing=spacing, neighbourhood=neighbourhood,
            code_dim=code_dim, periodic=periodic, locality=locality, rotary=rotary, nested=bool(nested),
        )
        self.factors, self.shape, self.codebook_size, self.periodic = factors, shape, codebook_size, periodic
        self.nested = bool(nested)
        f_K = factors[-1]
        self.region_shape = (-(-shape[0] // f_K), -(-shape[1] // f_K))  # (Hc, Wc)
        self.grid_shapes = [(self.region_shape[0] * f_K // f, self.region_shape[1] * f_K // f) for f in factors]
        self.level_rounds = []  # number of rounds of each level
        for k, ((H, W), f) in enumerate(zip(self.grid_shapes, factors)):
            rounds = lattice_rounds(H, W, spacing, nested=k == len(factors) - 1)
            lead, lead_round = region_leads(rounds, H, W, f_K // f)
            for name, value in (("rounds", rounds), ("lead", lead), ("lead_round", lead_round)):
                self.register_buffer(f"{name}_{k}", value, persistent=False)
            self.level_rounds.append(int(rounds.max()) + 1)
        N, K = codebook_size, len(factors)
        self.PASS, self.MASK = N, N + 1
        self.no_pass_level = K - 1 if self.nested else 0  # the level where every open region carries codes
        self.tok_emb = CodeEmbedding(N, dim, extra=2, code_dim=code_dim)  # codes, PASS, MASK
        self.src_emb = nn.Embedding(K, dim)  # level a shown symbol lives at: k for the level's own cells, j > k for context
        self.refined_emb = nn.Embedding(N + 1, dim) if self.nested else None  # nested: the code a cell refines, or none
        # Per level, a row table and a column table: a cell's place is their sum. Shared along
        # rows and columns, they learn where neighbours are far sooner than one vector per cell
        # would; being per level, they also tell the shared transformer which level it predicts.
        self.row_emb = nn.ModuleList(nn.Embedding(H, dim) for H, _ in self.grid_shapes)
        self.col_emb = nn.ModuleList(nn.Embedding(W, dim) for _, W in self.grid_shapes)
        self.neighbourhood = neighbourhood
        self.neighbours = nn.Linear(neighbourhood ** 2 * dim, dim)  # what each cell sees of its neighbourhood
        # ALiBi slopes 1, 1/2, 1/4, ... per level: from near neighbours (~1 cell) to most of the grid
        slopes = torch.tensor([2.0 ** -h for h in range(heads)]).repeat(K, 1)
        self.locality = nn.Parameter(slopes) if locality else None
        self.transformer = Transformer(dim, depth, heads, dropout)  # no causal mask: every cell sees every cell
        self.rotary = Rotary(dim // heads, period=self.region_shape if periodic else None) if rotary else None
        self.head = nn.Linear(dim, N + 1)  # codes, PASS
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def num_levels(self):
        return len(self.factors)

    def _level_grids(self, tokens):
        """Check that `tokens` belong to this prior; return their symbol grids."""
        if (tokens.shape != self.shape or tokens.factors != self.factors or tokens.codebook_size != self.codebook_size
                or tokens.nested != self.nested):
            kind = {True: "nested", False: "alternative"}
            raise ValueError(
                f"the prior models shape {self.shape}, factors {self.factors}, codebook {self.codebook_size}, "
                f"{kind[self.nested]} grains; got tokens of shape {tokens.shape}, factors {tokens.factors}, "
                f"codebook {tokens.codebook_size}, {kind[tokens.nested]} grains"
            )
        return level_grids(tokens.validate())

    def _context(self, grids, k):
        """What level k sees of the coarser levels, per cell (B, L).

        Returns (symbol, source level): the finest coarser code that covers the
        cell and its level; MASK and k where none does (an open region of
        alternative grains).
        """
        symbol = torch.full_like(grids[k], self.MASK)
        source = torch.full_like(grids[k], k)
        for j in reversed(range(k + 1, self.num_levels)):  # finer codes overwrite coarser ones
            up = repeat_cells(grids[j], self.factors[j] // self.factors[k])
            taken = is_code(up, self.PASS)
            symbol, source = torch.where(taken, up, symbol), torch.where(taken, j, source)
        return symbol.flatten(1), source.flatten(1)

    def _logits(self, k, grid_BL, reveal_BL, context):
        """(B, L, N + 1) logits of every cell of level k, each from the cells revealed before it.

        `reveal_BL` is the round at which each cell is revealed (-1 for the
        closed cells, known from the start): a cell's logits depend on the
        symbols of the cells of earlier rounds alone, whatever the others hold.
        """
        symbol, source = context
        open_, refined = grid_BL >= 0, 0.0
        if self.nested:  # an open cell shows the code it refines apart from its own, else the two look alike
            refined = self.refined_emb(torch.where(open_ & is_code(symbol, self.PASS), symbol, self.PASS))  # PASS: none
            symbol = torch.where(open_, self.MASK, symbol)
        own = self.tok_emb(torch.where(open_, grid_BL, symbol)) + refined  # what a revealed cell shows
        hidden = self.tok_emb(symbol) + refined  # and one not yet revealed: MASK, or the coarser code over it
        row, col = self.row_emb[k].weight, self.col_emb[k].weight
        place_LD = (row[:, None] + col[None, :]).flatten(0, 1)  # (H * W, dim), raster order of the grid
        base = self.src_emb(source) + place_LD
        near_content, near_query = self._near(k, own, hidden, reveal_BL)
        content, query = own + near_content + base, hidden + near_query + base
        h = self.transformer.two_stream(content, query, *self._masks(k, reveal_BL),
                                        rotate=self._rotation(k, own.device))
        logits = self.tok_emb.add_scores(self.head(h), h)
        if k == self.no_pass_level:
            logits = logits.masked_fill(torch.arange(self.PASS + 1, device=logits.device) == self.PASS, -math.inf)
        return logits

    def _near(self, k, own_BLD, hidden_BLD, reveal_BL):
        """What each cell of level k sees of its neighbourhood: (content, query), (B, L, dim) each.

        A neighbour shows its symbol where it is revealed no later than the
        cell (the content stream, the cell itself included) or before it (the
        query stream), else what it shows unrevealed; beyond the edges of a
        grid that does not wrap around, nothing.
        """
        (H, W), n = self.grid_shapes[k], self.neighbourhood
        mode, p = ("circular" if self.periodic else "constant"), n // 2

        def padded(x_BL_):  # (B, L, C) -> (B, C, H + 2p, W + 2p)
            return F.pad(x_BL_.unflatten(1, (H, W)).permute(0, 3, 1, 2), (p, p, p, p), mode=mode)

        own, hidden, reveal = padded(own_BLD), padded(hidden_BLD), padded(reveal_BL[..., None].float())
        at = reveal_BL.view(-1, 1, H, W).float()
        content, query = [], []
        for di in range(n):
            for dj in range(n):
                window = (slice(None), slice(None), slice(di, di + H), slice(dj, dj + W))
                content.append(torch.where(reveal[window] <= at, own[window], hidden[window]))
                query.append(torch.where(reveal[window] < at, own[window], hidden[window]))
        return tuple(self.neighbours(torch.cat(seen, 1).flatten(2).transpose(1, 2)) for seen in (content, query))

    def _masks(self, k, reveal_BL):
        """Additive attention masks (content, query), (B, heads or 1, L, L), of level k's two streams."""
        query, key = reveal_BL[:, None, :, None], reveal_BL[:, None, None, :]
        blocked = torch.tensor(-math.inf, device=reveal_BL.device)
        content, earlier = (torch.where(key <= query, 0.0, blocked), torch.where(key < query, 0.0, blocked))
        bias = self._distance_bias(k, reveal_BL.device)
        if bias is None:
            return content, earlier
        return content + bias, earlier + bias

    def _rotation(self, k, device):
        """The transformer's `rotate` (query and key turns) for the cells of level k; None without rotary."""
        if self.rotary is None:
            return None
        H, W = self.grid_shapes[k]
        s = self.factors[-1] // self.factors[k]  # level-k cells per region side
        rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device), indexing="ij")
        at = (torch.stack([rows, cols], -1).flatten(0, 1)[None].float() + 0.5) / s  # centres, in regions
        turns = Rotary.turns(self.rotary.angles(at))
        return turns, turns

    def _distance_bias(self, k, device):
        """(heads, L, L) additive attention bias of level k: minus each head's slope times the cell distance;
        None without locality."""
        if self.locality is None:
            return None
        return -self.locality[k][:, None, None] * grid_distance(*self.grid_shapes[k], device, self.periodic)

    def _schedule(self, k):
        """The fixed reveal schedule of level k: (round (L,) of each cell, lead (L,) bool, its lead's round (L,)).

        A region's lead carries the region's grain decision, and a PASS
        reveals the whole region at the lead's round.
        """
        return getattr(self, f"rounds_{k}"), getattr(self, f"lead_{k}"), getattr(self, f"lead_round_{k}")

    def _reveal(self, k, grid_BL):
        """(B, L) the round at which each cell of level k is revealed: -1 when closed, its lead's when PASS.

        A cell not yet drawn (MASK) is given its own round, after every cell
        its prediction depends on.
        """
        rounds, _, lead_round = self._schedule(k)
        return torch.where(grid_BL < 0, -1, torch.where(grid_BL == self.PASS, lead_round, rounds))

    def forward(self, tokens):
        """The exact code length of ``bits``, in one pass per level; differentiable, with dropout when training.

        loss and parts are nats per token of ``tokens.count()``, bits the
        bits of each sample. parts = {"grain": the grain decisions, "code":
        the codes}; they sum to loss.
        """
        grids = self._level_grids(tokens)
        count = tokens.count()
        grain, code = self._code_length(grids, torch.float32)
        n = count.sum().clamp(min=1)
        return PriorOutput(
            loss=(grain + code).sum() / n,
            parts={"grain": grain.sum() / n, "code": code.sum() / n},
            bits=(grain + code) / math.log(2),
            count=count,
        )

    def _code_length(self, grids, dtype):
        """Code length of the level grids in nats, (grain (B,), code (B,)) in `dtype`.

        Each cell pays with the distribution its prediction gives in the state
        a decoder meets it in: a lead for its region's grain, a cell of a coded
        region for its code.
        """
        grain = code = 0.0
        for k in reversed(range(self.num_levels)):
            grid = grids[k].flatten(1)
            _, lead, _ = self._schedule(k)
            logits = self._logits(k, grid, self._reveal(k, grid), self._context(grids, k)).to(dtype)
            g, c = _split_nll(logits, grid)
            open_ = grid >= 0
            grain = grain + torch.where(open_ & lead, g, 0.0).sum(1)
            code = code + torch.where(open_ & (grid != self.PASS), c, 0.0).sum(1)
        return grain, code

    @torch.no_grad()
    def bits(self, tokens):
        """(B,) float64 exact code length in bits of each sample (grain and codes), deterministic."""
        grids = self._level_grids(tokens)
        with evaluating(self):
            grain, code = self._code_length(grids, torch.float64)
        return (grain + code) / math.log(2)

    @torch.no_grad()
    def sample(self, n, *, seed=0, temperature=1.0, top_k=None, top_p=None):
        """Draw `n` token sets, level by level, round by round of the reveal schedule.

        A region's lead cell draws among codes and PASS (PASS makes the whole
        region PASS); every later cell of a coded region draws among codes. At
        temperature 1 without filtering the samples follow the very
        distribution whose code length ``bits`` measures. Returns valid Tokens
        on the module's device.
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        check_sampling(temperature, top_k, top_p)
        with evaluating(self):
            return self._sample(n, seed, temperature, top_k, top_p)

    def _sample(self, n, seed, temperature, top_k, top_p):
        device = self.head.weight.device
        generator = torch.Generator(device).manual_seed(seed)
        N, K = self.codebook_size, self.num_levels
        grids = [None] * K
        open_regions = torch.ones(n, *self.region_shape, dtype=torch.bool, device=device)
        for k in reversed(range(K)):
            s = self.factors[-1] // self.factors[k]
            H, W = self.grid_shapes[k]
            grid = torch.where(repeat_cells(open_regions, s), self.MASK, -1).flatten(1)
            rounds, lead, _ = self._schedule(k)
            context = self._context([*grids[:k], grid.view(n, H, W), *grids[k + 1:]], k)
            known = grid < 0
            for r in range(self.level_rounds[k]):
                now = ~known & (rounds == r)
                if not now.any():
                    continue
                logits = self._logits(k, grid, self._reveal(k, grid), context).float()
                drawn = torch.where(lead, _draw(logits, generator, temperature, top_k, top_p),
                                    _draw(logits[..., :N], generator, temperature, top_k, top_p))
                passes = repeat_cells(to_regions((now & lead & (drawn == N)).view(n, H, W), s).any(-1), s).flatten(1)
                grid = torch.where(passes, N, torch.where(now, drawn, grid))
                known = known | now | passes
            grids[k] = grid.view(n, H, W)
            cells = to_regions(grids[k], s)
            # the regions open at the next level: with nested grains those coded here, else those passed
            open_regions = (is_code(cells, N) if self.nested else cells.eq(N)).all(-1)
        return grids_to_tokens(grids, self.factors, self.shape, N, self.nested)
