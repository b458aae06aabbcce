"""The transformer of the priors, with the attention biases that place their tokens in 2D.

Pre-norm blocks over (B, T, D) states; the mask makes them causal (the
autoregressive prior); a key/value cache for one-token steps; and a two-stream
pass (``Transformer.two_stream``, the bidirectional prior's) that predicts
every token in one pass from the tokens before it in any partial order.
Two ways to tell attention where the tokens lie, both from each token's
centre in coarsest-region units: an additive bias (the prior's distance
penalty, passed as the mask) and rotary embeddings in 2D (``Rotary``), which
rotate queries and keys by their places so that their products depend on
the offset between the two, direction included.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache:
    """Keys and values of one attention layer for the tokens seen so far, preallocated to `length`."""

    def __init__(self, B, heads, length, head_dim, device, dtype):
        self.k = torch.empty(B, heads, length, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.n = 0

    def extend(self, k_BH1d, v_BH1d):
        """Append one step's keys and values; return all of them, (B, heads, n, head_dim) each."""
        self.k[:, :, self.n] = k_BH1d[:, :, 0]
        self.v[:, :, self.n] = v_BH1d[:, :, 0]
        self.n += 1
        return self.k[:, :, : self.n], self.v[:, :, : self.n]


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be a multiple of heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BTD, mask=None, cache=None, rotate=None):
        """Attention over the sequence or, with `cache`, over the cached steps too.

        `mask`: (B, 1 or heads, T, T) bool (where a query may look) or float (an
        additive bias, -inf where it may not); with a cache (one new token, which
        may look at every cached one) None or a (B, heads, 1, n) bias.
        `rotate`: None or the (query, key) ``Rotary.turns`` of the T new
        tokens' places; keys are rotated before they are cached.
        """
        q, k, v = self._split(x_BTD, rotate)
        if cache is not None:
            k, v = cache.extend(k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self._merge(y)

    def _split(self, x_BTD, rotate):
        """Queries, keys and values of `x_BTD`, (B, heads, T, head_dim) each, queries and keys turned."""
        B, T, D = x_BTD.shape
        q, k, v = (z.view(B, T, self.heads, D // self.heads).transpose(1, 2) for z in self.qkv(x_BTD).split(D, -1))
        if rotate is not None:
            q, k = Rotary.rotate(q, rotate[0]), Rotary.rotate(k, rotate[1])
        return q, k, v

    def _merge(self, y_BHTd):
        B, _, T, _ = y_BHTd.shape
        return self.proj(y_BHTd.transpose(1, 2).reshape(B, T, -1))

    def two_stream(self, content_BTD, query_BTD, content_mask, query_mask, rotate=None):
        """Attention of both streams (``Transformer.two_stream``): (content update, query update).

        Content tokens look at the content tokens `content_mask` allows;
        query tokens at those `query_mask` allows and at their own query
        token, so that no query is left with nothing to look at. Masks are
        additive float biases, (B, 1 or heads, T, T).
        """
        drop = self.dropout if self.training else 0.0
        q_c, k_c, v_c = self._split(content_BTD, rotate)
        q_q, k_q, v_q = self._split(query_BTD, rotate)
        content = F.scaled_dot_product_attention(q_c, k_c, v_c, attn_mask=content_mask, dropout_p=drop)
        scale = q_q.shape[-1] ** -0.5
        scores = torch.cat([q_q @ k_c.transpose(-2, -1) * scale + query_mask, (q_q * k_q).sum(-1, keepdim=True) * scale], -1)
        weights = F.dropout(scores.softmax(-1), drop, self.training)
        query = weights[..., :-1] @ v_c + weights[..., -1:] * v_q
        return self._merge(content), self._merge(query)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))

    def forward(self, x, mask=None, cache=None, rotate=None):
        x = x + self.attn(self.ln1(x), mask, cache, rotate)
        return x + self.mlp(self.ln2(x))

    def two_stream(self, content, query, content_mask, query_mask, rotate=None):
        """Both streams through the block, with the same weights (``SelfAttention.two_stream``)."""
        dc, dq = self.attn.two_stream(self.ln1(content), self.ln1(query), content_mask, query_mask, rotate)
        content, query = content + dc, query + dq
        return content + self.mlp(self.ln2(content)), query + self.mlp(self.ln2(query))


class Transformer(nn.Module):
    """A stack of `depth` blocks and a final LayerNorm (causal or not by the mask)."""

    def __init__(self, dim, depth, heads, dropout):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)

    def forward(self, x_BTD, mask=None, caches=None, rotate=None):
        """(B, T, D) states; `caches` (one `KVCache` per block) for one-token steps; `rotate` see ``SelfAttention``."""
        for i, block in enumerate(self.blocks):
            x_BTD = block(x_BTD, mask, None if caches is None else caches[i], rotate)
        return self.ln(x_BTD)

    def two_stream(self, content_BTD, query_BTD, content_mask, query_mask, rotate=None):
        """The query stream's final (B, T, D) states: each token predicted from the tokens before it.

        Two-stream attention (XLNet's): the content stream carries each
        token's own symbol and looks at the tokens up to it (`content_mask`:
        itself and every token revealed no later); the query stream carries
        only a token's place and looks at the content of the tokens strictly
        before it (`query_mask`). One pass thus gives every token its
        prediction from exactly the tokens a decoder knows when it reaches
        that token, in any order where several tokens share a step.
        """
        for block in self.blocks:
            content_BTD, query_BTD = block.two_stream(content_BTD, query_BTD, content_mask, query_mask, rotate)
        return self.ln(query_BTD)

    def caches(self, B, length, like):
        """One empty `KVCache` per block for B sequences of up to `length` tokens (dtype/device of `like`)."""
        heads = self.blocks[0].attn.heads
        return [KVCache(B, heads, length, like.shape[-1] // heads, like.device, like.dtype) for _ in self.blocks]


class PlaceLog:
    """The ``_centre`` pairs of the tokens of a walk, step by step, preallocated to `length` steps.

    ``log.append((at (B, 2), is_code (B,)))`` adds a step; ``log[a:b]`` gives
    steps a..b - 1 as one pair, (B, b - a, 2) and (B, b - a).
    """

    def __init__(self, B, length, device):
        self.at = torch.zeros(B, length, 2, device=device)
        self.is_code = torch.zeros(B, length, dtype=torch.bool, device=device)
        self.n = 0

    def append(self, place):
        self.at[:, self.n], self.is_code[:, self.n] = place
        self.n += 1

    def __getitem__(self, steps):
        return self.at[:, steps], self.is_code[:, steps]


class Rotary(nn.Module):
    """Rotary embeddings in 2D: half of each head's channel pairs turn with the row, half with the column.

    The angle of a pair is the coordinate (in coarsest regions) times one of
    ``head_dim // 4`` frequencies per axis. Their wavelengths run
    geometrically from `shortest` to `longest`; on fields that wrap around
    with `period` (rows, columns) they are the period over 1, 2, 3...,
    so that offsets are taken on the torus. A query and a key rotated by their
    places then score by the offset between them alone.
    """

    def __init__(self, head_dim, shortest=0.5, longest=32.0, period=None):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"rotary embeddings in 2D need a head size that is a multiple of 4, got {head_dim}")
        n = head_dim // 4
        if period is None:
            wavelengths = shortest * (longest / shortest) ** (torch.arange(n) / max(n - 1, 1))
            freqs = (2 * math.pi / wavelengths).expand(2, n)
        else:
            freqs = 2 * math.pi * torch.arange(1, n + 1) / torch.tensor(period, dtype=torch.float)[:, None]
        self.register_buffer("freqs", freqs.float().contiguous(), persistent=False)  # (2, n): rows, columns

    def angles(self, at, is_code=None):
        """(B, 1, T, head_dim // 2) angles of places `at` (B, T, 2); markers (not `is_code`) stay unturned."""
        if is_code is not None:
            at = at * is_code[..., None]
        return torch.cat([at[..., :1] * self.freqs[0], at[..., 1:] * self.freqs[1]], -1)[:, None]

    @staticmethod
    def turns(angles):
        """(cos, sin) of `angles`, computed once for every block that rotates by them."""
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate(x_BHTd, turns):
        """`x_BHTd` with its channel pairs (i, i + d / 2) turned by `turns` (``Rotary.turns``)."""
        x1, x2 = x_BHTd.chunk(2, -1)
        cos, sin = turns
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)
