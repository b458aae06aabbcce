"""The autoregressive stage-2 prior: the DQ-Transformer over token sequences.

Two stacked causal transformers read a `TokenSequence` (sequences.py). At
step t the position transformer has read tokens 0..t and predicts the free
decision that places token t + 1 (its logits are masked to the decision's
candidates; forced places are neither predicted nor sampled). The content
transformer reads the position transformer's states, each plus the embedding
of the place of the NEXT token, and predicts that token's code. Sampling runs
both with a key/value cache, one token per step.

With a neighbourhood, the code head is also handed what is already known
around the place in question (``NeighbourMap``): the earlier codes of its own
level's n x n cells.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .code_embedding import CodeEmbedding
from .neighbour_map import NeighbourMap
from .sequences import CODE, PASS, make_scan
from .transformer import PlaceLog, Rotary, Transformer


@dataclass
class PriorOutput:
    """Training objective of a stage-2 prior on a batch.

    Attributes
    ----------
    loss : scalar, mean nats per code token (positions and codes together).
    parts : {"position": ..., "code": ...} scalars in nats per code token; they add up to `loss`.
    bits : (B,) code length of each sample in bits.
    count : (B,) long, number of codes of each sample.
    """

    loss: torch.Tensor
    parts: dict
    bits: torch.Tensor
    count: torch.Tensor


@contextmanager
def evaluating(module):
    """Run a block in eval mode (no dropout), then restore the module's mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def filter_logits(logits, temperature=1.0, top_k=None, top_p=None):
    """Logits (..., V) divided by `temperature`, outside the top-k and the top-p nucleus set to -inf."""
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None:
        sorted_logits, order = logits.sort(-1, descending=True)
        p = sorted_logits.softmax(-1)
        # drop a logit when the more likely ones already hold top_p of the mass (the first always stays)
        drop_sorted = p.cumsum(-1) - p > top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return logits


def check_sampling(temperature, top_k, top_p):
    """Refuse sampling settings that select nothing (shared by every prior's ``sample``)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")


class Sampler:
    """Draws choices from masked logits: temperature, top-k, top-p, one seeded generator.

    Every free decision and every code is drawn with the same settings.
    """

    def __init__(self, device, seed=0, temperature=1.0, top_k=None, top_p=None):
        check_sampling(temperature, top_k, top_p)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def __call__(self, logits_BV, t=None, rows=None):
        """(B,) index drawn from each row of `logits_BV` (the step `t` and the `rows` that count do not matter)."""
        p = filter_logits(logits_BV.float(), self.temperature, self.top_k, self.top_p).softmax(-1)
        # inverse CDF with one uniform per row: far cheaper than multinomial over a
        # large codebook; right=True never lands on a zero-probability entry
        cdf = p.cumsum(-1)
        u = torch.rand(len(p), 1, generator=self.generator, device=p.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=p.shape[-1] - 1)


class ARPrior(nn.Module):
    """Autoregressive prior over the tokens of one tokenizer and field shape (see the module docstring).

    Parameters
    ----------
    order : "coarse_to_fine" (the DQ-Transformer's) or "raster".
    factors : the tokenizer's downsampling factors; shape : (H, W) of the fields.
    codebook_size : size of the tokenizer's codebook.
    dim, heads, dropout : width, attention heads and dropout of both transformers.
    depth : blocks in all; the position transformer gets depth // 2 unless
        `position_depth` / `content_depth` say otherwise.
    code_dim : size of the tokenizer's code vectors that the code embedding
        and the code head see (``CodeEmbedding``; set them with
        ``code_emb.set_vectors``); 0 for free code embeddings alone.
    locality : the content transformer, which predicts the code at a known
        place, penalises attention by a learned slope per head times the
        distance (in coarsest regions) between that place and the cell of each
        earlier code (ALiBi, in 2D), so that a code finds its spatial
        neighbours wherever the order put them; markers are not penalised.
    position_locality : the same bias, with slopes of its own, in the position
        transformer, between each token read and the earlier ones: its states
        gather a token's spatial neighbours however far back the order put them.
    rotary : rotary embeddings in 2D (``Rotary``) in both transformers: queries
        turned by the place they read (position) or predict (content), keys by
        the place of the code they read, so that attention sees the offset
        between two places, direction included, across levels and orders.
    neighbourhood : odd side n of the squares of neighbours handed to the
        code head (see the module docstring); 0 for none.
    periodic : the fields wrap around, so the neighbourhoods do too.
    nested : the tokenizer's grains are nested (``Tokens.nested``; see ``sequences``).
    """

    def __init__(self, *, order, factors, shape, codebook_size, dim=256, depth=4, heads=4, dropout=0.0,
                 position_depth=None, content_depth=None, code_dim=0, locality=False, position_locality=False,
                 rotary=False, neighbourhood=0, periodic=False, nested=False):
        super().__init__()
        self.scan = make_scan(order, factors, shape, nested)
        position_depth = depth // 2 if position_depth is None else position_depth
        content_depth = depth - position_depth if content_depth is None else content_depth
        if position_depth < 1 or content_depth < 1:
            raise ValueError(
                f"both transformers need at least one block, got position_depth={position_depth}, "
                f"content_depth={content_depth} (depth={depth})"
            )
        self.config = dict(
            order=order, factors=list(self.scan.factors), shape=list(self.scan.shape),
            codebook_size=int(codebook_size), dim=dim, depth=position_depth + content_depth, heads=heads,
            dropout=dropout, position_depth=position_depth, content_depth=content_depth, code_dim=code_dim,
            locality=locality, position_locality=position_locality, rotary=rotary, neighbourhood=neighbourhood,
            periodic=periodic, nested=self.scan.nested,
        )
        if neighbourhood < 0 or neighbourhood % 2 == 0 and neighbourhood:
            raise ValueError(f"neighbourhood must be 0 or a positive odd size, got {neighbourhood}")
        self.neighbourhood, self.periodic = neighbourhood, periodic
        self.codebook_size = int(codebook_size)
        grids = self.scan.grids
        # factorised row + column embeddings per level: each level's grid has its own tables
        self.register_buffer("row_offset", torch.tensor([0] + [h for h, _ in grids[:-1]]).cumsum(0), persistent=False)
        self.register_buffer("col_offset", torch.tensor([0] + [w for _, w in grids[:-1]]).cumsum(0), persistent=False)
        self.level_emb = nn.Embedding(self.scan.num_levels, dim)
        self.kind_emb = nn.Embedding(self.scan.num_kinds, dim)
        self.row_emb = nn.Embedding(sum(h for h, _ in grids), dim)
        self.col_emb = nn.Embedding(sum(w for _, w in grids), dim)
        self.code_emb = CodeEmbedding(self.codebook_size, dim, code_dim=code_dim)
        self.drop = nn.Dropout(dropout)
        self.position_transformer = Transformer(dim, position_depth, heads, dropout)
        self.content_transformer = Transformer(dim, content_depth, heads, dropout)
        self.position_head = nn.Linear(dim, self.scan.num_choices)
        self.code_head = nn.Linear(dim, self.codebook_size)
        self.neighbours = nn.Linear(neighbourhood**2 * dim, dim) if neighbourhood else None
        self.apply(self._init_weights)
        # ALiBi slopes 1, 1/2, 1/4, ... per head: from the nearest regions to most of the grid
        slopes = [2.0 ** -h for h in range(heads)]
        self.locality = nn.Parameter(torch.tensor(slopes)) if locality else None
        self.position_locality = nn.Parameter(torch.tensor(slopes)) if position_locality else None
        self.rotary = Rotary(dim // heads) if rotary else None
        self.register_buffer("cells_per_region", torch.tensor(self.scan.scales, dtype=torch.float), persistent=False)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    # -- embeddings --------------------------------------------------------------
    def _place(self, level, kind, row, col):
        """(..., D) embedding of where a token sits: level, kind and, for codes and passes, its row and column."""
        grid = self.row_emb(self.row_offset[level] + row) + self.col_emb(self.col_offset[level] + col)
        return self.level_emb(level) + self.kind_emb(kind) + grid * self._placed(kind).unsqueeze(-1)

    @staticmethod
    def _placed(kind):
        """(...) bool: the token sits at a place of the grid (a code or a pass, not a marker)."""
        return (kind == CODE) | (kind == PASS)

    def _embed(self, level, kind, row, col, code):
        """(..., D) embedding of a token: its place and, for codes, its code."""
        return self._place(level, kind, row, col) + self.code_emb(code.clamp(min=0)) * (code >= 0).unsqueeze(-1)

    def _centre(self, level, kind, row, col):
        """((..., 2) centre of each token's cell in coarsest-region units, (...) bool: the token has a place)."""
        scale = self.cells_per_region[level]
        return torch.stack([(row + 0.5) / scale, (col + 0.5) / scale], -1), self._placed(kind)

    @staticmethod
    def _distance_bias(slopes, query, key, causal=None):
        """(B, heads, Tq, Tk) attention bias, `slopes` (heads,) times the distance between places `query`
        and `key` (``_centre`` pairs); -inf where `causal` (B, 1, Tq, Tk) bool forbids; no slopes: `causal`."""
        if slopes is None:
            return causal
        (q_at, q_code), (k_at, k_code) = query, key
        distance = (q_at[:, :, None] - k_at[:, None, :]).norm(dim=-1) * (q_code[:, :, None] & k_code[:, None, :])
        bias = -slopes[:, None, None] * distance[:, None]
        return bias if causal is None else bias.masked_fill(~causal, -math.inf)

    def _rotation(self, query, key):
        """The `rotate` argument of the transformers for places `query` and `key`; None without rotary."""
        if self.rotary is None:
            return None
        return Rotary.turns(self.rotary.angles(*query)), Rotary.turns(self.rotary.angles(*key))

    def _neighbour_map(self, n, device):
        """An empty `NeighbourMap` of `n` sequences; None without neighbourhood."""
        return NeighbourMap(self.scan, n, device, self.neighbourhood, self.periodic) if self.neighbourhood else None

    def _near(self, neighbours, level, kind, row, col, before):
        """(B, T, D) what the codes to be predicted at places (level, kind, row, col) see of their
        neighbourhoods from sequence index `before`, all (B, T); 0 without neighbourhood and on markers."""
        if neighbours is None:
            return 0
        code, code_level, known = neighbours.gather(level, row, col, before)
        seen = (self.code_emb(code) + self.level_emb(code_level)) * known[..., None]
        return self.neighbours(seen.flatten(-2)) * (kind == CODE)[..., None]

    def _code_logits(self, z):
        """(..., N) code logits from content states z (..., D)."""
        return self.code_emb.add_scores(self.code_head(z), z)

    # -- training ------------------------------------------------------------------
    def _check(self, tokens):
        if tokens.codebook_size != self.codebook_size:
            raise ValueError(f"tokens use a codebook of {tokens.codebook_size} codes, the prior {self.codebook_size}")
        return self.scan.check(tokens)

    def _states(self, seq):
        """States (B, T - 1, D) of both transformers; step t predicts token t + 1."""
        x = self._embed(seq.level, seq.kind, seq.row, seq.col, seq.code)[:, :-1]
        valid = seq.valid[:, :-1]
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        # pads sit only at the end, so causality alone keeps real tokens off them;
        # the key mask also keeps pads off pads: nothing depends on how long the padding is
        mask = causal & valid[:, None, None, :]
        places = [getattr(seq, name) for name in ("level", "kind", "row", "col")]
        read = self._centre(*(p[:, :-1] for p in places))
        h = self.position_transformer(self.drop(x), self._distance_bias(self.position_locality, read, read, mask),
                                      rotate=self._rotation(read, read))
        nxt = self._place(*(p[:, 1:] for p in places))
        neighbours = self._neighbour_map(len(x), x.device)
        if neighbours is not None:
            b, t = ((seq.kind == CODE) & seq.valid).nonzero(as_tuple=True)
            neighbours.paint(b, t, seq.level[b, t], seq.row[b, t], seq.col[b, t], seq.code[b, t])
            before = torch.arange(1, T + 1, device=x.device).expand(len(x), T)
            nxt = nxt + self._near(neighbours, *(p[:, 1:] for p in places), before)
        # content step t predicts the code at token t + 1's place from the tokens read up to t
        predicted = self._centre(*(p[:, 1:] for p in places))
        z = self.content_transformer(h + nxt, self._distance_bias(self.locality, predicted, read, mask),
                                     rotate=self._rotation(predicted, read))
        return h, z

    def _nats(self, seq, dtype=torch.float32):
        """Cost in nats of each free decision and each code, (B, T - 1) each, 0 elsewhere."""
        h, z = self._states(seq)
        free = seq.choice[:, 1:] >= 0
        is_code = (seq.kind[:, 1:] == CODE) & seq.valid[:, 1:]
        logits = self.position_head(h[free]).masked_fill(~seq.allowed[:, 1:][free], -math.inf)
        position = h.new_zeros(free.shape, dtype=dtype)
        position[free] = F.cross_entropy(logits.to(dtype), seq.choice[:, 1:][free], reduction="none")
        code = h.new_zeros(free.shape, dtype=dtype)
        logits = self._code_logits(z[is_code])
        code[is_code] = F.cross_entropy(logits.to(dtype), seq.code[:, 1:][is_code], reduction="none")
        return position, code

    def forward(self, tokens):
        """Training objective on a batch of `Tokens` (see `PriorOutput`)."""
        tokens = self._check(tokens)
        position, code = self._nats(self.scan.encode(tokens))
        count = tokens.count()
        per_token = 1.0 / count.sum().clamp(min=1)
        parts = {"position": position.sum() * per_token, "code": code.sum() * per_token}
        bits = (position + code).sum(1).detach() / math.log(2)
        return PriorOutput(loss=parts["position"] + parts["code"], parts=parts, bits=bits, count=count)

    @torch.no_grad()
    def bits(self, tokens):
        """(B,) float64 exact code length in bits of each sample: free position decisions plus codes."""
        tokens = self._check(tokens)
        with evaluating(self):
            position, code = self._nats(self.scan.encode(tokens), torch.float64)
        return (position + code).sum(1) / math.log(2)

    # -- sampling ------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, *, seed=0, temperature=1.0, top_k=None, top_p=None):
        """`n` valid `Tokens` drawn from the prior (eval mode, key/value cache, seeded)."""
        device = self.code_head.weight.device
        sampler = Sampler(device, seed, temperature, top_k, top_p)
        return self.scan.decode(self.walk(n, sampler, sampler), self.codebook_size).validate()

    @torch.no_grad()
    def walk(self, n, pick_position, pick_code, use_cache=True):
        """Walk `n` sequences token by token; the `pick_*` functions turn logits into choices.

        `pick_position(logits_nV, t, free_n)` gets the position logits at step t
        masked to the candidates (its answer counts only in the rows `free_n`
        with a free decision), `pick_code(logits_nC, t, code_n)` the code logits
        (its answer counts in the rows `code_n` whose new token is a code: an
        entropy coder needs to know). `use_cache=False` re-runs
        both transformers over the whole prefix at every step (slow; it exists
        to check the cache). Returns the walked `TokenSequence`.
        """
        cursor = self.scan.cursor(n, self.code_head.weight.device)
        x = self._embed(*cursor.place(), cursor.code)
        length = self.scan.max_length
        caches = (self.position_transformer.caches(n, length, x), self.content_transformer.caches(n, length, x))
        xs, us = [], []  # the prefixes, for the uncached path
        # the places of the tokens read and of the codes predicted, step by step
        read, predicted = PlaceLog(n, length, x.device), PlaceLog(n, length, x.device)
        neighbours = self._neighbour_map(n, x.device)
        b = torch.arange(n, device=x.device)
        with evaluating(self):
            for t in range(length - 1):  # the cursor says when every sequence has ended
                if cursor.finished:
                    break
                read.append(self._centre(*cursor.place()))
                h = self._step(self.position_transformer, x, xs, caches[0], use_cache,
                               self.position_locality, read, read)
                allowed = cursor.options()
                free = allowed.sum(-1) > 1
                choice = torch.zeros_like(cursor.choice)
                if bool(free.any()):
                    logits = self.position_head(h).masked_fill(~allowed & free[:, None], -math.inf)
                    choice = pick_position(logits, t, free)
                cursor.advance(choice)
                place = cursor.place()
                predicted.append(self._centre(*place))
                seen = self._near(neighbours, *(p[:, None] for p in place), torch.full((n, 1), t + 1, device=x.device))
                z = self._step(self.content_transformer, ((h + self._place(*place))[:, None] + seen)[:, 0], us,
                               caches[1], use_cache, self.locality, predicted, read)
                is_code = cursor.kind == CODE
                cursor.emit(pick_code(self._code_logits(z), t, is_code))
                if neighbours is not None:
                    level, _, row, col = place
                    c = is_code.nonzero()[:, 0]
                    neighbours.paint(b[c], torch.full_like(c, t + 1), level[c], row[c], col[c], cursor.code[c])
                x = self._embed(*cursor.place(), cursor.code)
        return cursor.sequence()

    def _step(self, transformer, x_BD, prefix, caches, use_cache, slopes, queries, keys):
        """State (B, D) of `transformer` at the newest input `x_BD`, with the cache or by re-running `prefix`.

        `queries` and `keys` (``PlaceLog``) hold the places of the steps so far,
        the newest included, for the distance bias of `slopes` and the rotary
        embeddings.
        """
        n = len(prefix) + 1 if not use_cache else caches[0].n + 1
        if use_cache:  # one new query, over every cached key; only the new key is turned
            mask = self._distance_bias(slopes, queries[n - 1:n], keys[:n])
            rotate = self._rotation(queries[n - 1:n], keys[n - 1:n])
            return transformer(x_BD[:, None], mask, caches=caches, rotate=rotate)[:, 0]
        prefix.append(x_BD)
        causal = torch.ones(n, n, dtype=torch.bool, device=x_BD.device).tril()
        mask = self._distance_bias(slopes, queries[:n], keys[:n], causal)
        return transformer(torch.stack(prefix, 1), mask, rotate=self._rotation(queries[:n], keys[:n]))[:, -1]
