"""Range coding of tokens and other integer symbols under stored count models.

A model is an array of integer counts, one per symbol. Encoder and decoder
turn the same counts into the same float probabilities (counts / total, in
float64) and constriction quantises those deterministically
(``perfect=False``), so both sides use bit-identical models; only the
integers travel in the file. A distribution over a single symbol costs
nothing and is not coded at all.

Tokens of one field (the grain map, the depth map, then the codes of each
level and residual stage at the places the two maps select) go into one
range-coded stream under a ``TokenModel``: a count per grain level, per
depth, and per code for each level and stage.
"""

from typing import NamedTuple

import constriction
import numpy as np

from .container import CodecError


def categorical(counts):
    """constriction's categorical model for integer `counts` (float64 probabilities, ``perfect=False``)."""
    counts = np.asarray(counts, dtype=np.float64)
    return constriction.stream.model.Categorical(counts / counts.sum(), perfect=False)


def information_bits(symbols, counts):
    """Ideal code length in bits of `symbols` under the model `counts`: -sum log2 p(symbol)."""
    counts = np.asarray(counts, dtype=np.float64)
    if len(symbols) == 0 or len(counts) == 1:
        return 0.0
    return float(-np.log2(counts[symbols] / counts.sum()).sum())


def entropy_bits(histogram):
    """Empirical entropy code length n * H(p) in bits of symbols with this `histogram`."""
    h = np.asarray(histogram, dtype=np.float64)
    h = h[h > 0]
    n = h.sum()
    return float(-(h * np.log2(h / n)).sum()) if n else 0.0


class SymbolWriter:
    """One range-coded stream; successive ``add`` calls may use different models."""

    def __init__(self):
        self.encoder = constriction.stream.queue.RangeEncoder()

    def add(self, symbols, counts):
        symbols = np.asarray(symbols, dtype=np.int32).ravel()
        if len(symbols) and len(counts) > 1:
            self.encoder.encode(symbols, categorical(counts))

    def bytes(self):
        return self.encoder.get_compressed().astype("<u4").tobytes()


class SymbolReader:
    """Read back what a ``SymbolWriter`` wrote, with the same models in the same order."""

    def __init__(self, data):
        if len(data) % 4:
            raise CodecError("a range-coded stream must hold whole 32-bit words (corrupt file)")
        self.decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))

    def take(self, counts, n):
        """(n,) int64 symbols."""
        if n == 0 or len(counts) == 1:
            return np.zeros(n, dtype=np.int64)
        return self.decoder.decode(categorical(counts), n).astype(np.int64)


def repeat_cells(x, scale):
    """Nearest-neighbour copy of a 2D array onto a grid `scale` times finer."""
    return x.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else x


def level_masks(grain, factors, nested=False):
    """Per level k, the bool mask of the level-k grid where the grain map selects level k (reaches it, when nested)."""
    return [repeat_cells(grain <= k if nested else grain == k, factors[-1] // f) for k, f in enumerate(factors)]


class FieldTokens(NamedTuple):
    """One field's tokens as int64 arrays: what the codec stores.

    grain : (Hc, Wc) level per coarsest region; depth : (Hc, Wc) residual
    stages per region (>= 1); codes : per level k an (S, Hk, Wk) array, -1
    where level k is unused or a stage lies past the region's depth. nested :
    the levels refine each other (``Tokens.nested``): a region also carries
    every coarser level's codes, to every stage.
    """

    grain: np.ndarray
    depth: np.ndarray
    codes: list
    nested: bool = False

    def used(self, factors):
        """Per level k and stage s, the bool mask of the codes that are stored."""
        out = []
        for k, (mask, f, c) in enumerate(zip(level_masks(self.grain, factors), factors, self.codes)):
            cell_depth = repeat_cells(self.depth, factors[-1] // f)
            above = repeat_cells(self.grain < k, factors[-1] // f) if self.nested else False
            out.append([(mask & (cell_depth > s)) | above for s in range(len(c))])
        return out


    def shallower(self, depth):
        """The same tokens with every region stopped at `depth` stages at most (alternative levels only)."""
        if self.nested:
            raise ValueError("nested tokens keep every stage of their coarser levels: encode them again")
        stages = [np.arange(len(c))[:, None, None] for c in self.codes]
        return FieldTokens(self.grain, np.minimum(self.depth, depth),
                           [np.where(s < depth, c, -1) for s, c in zip(stages, self.codes)])


class TokenModel:
    """Integer counts per grain level (``grain``, (K,)), per depth (``depth``, (S,), depth d at d - 1)
    and per code of each level and stage (``codes``, K x S x (N,))."""

    def __init__(self, grain, codes, depth=(1,)):
        self.grain = np.asarray(grain, dtype=np.int64)
        self.depth = np.asarray(depth, dtype=np.int64)
        self.codes = [[np.asarray(c, dtype=np.int64) for c in level] for level in codes]
        if any(len(level) != len(self.depth) for level in self.codes):
            raise CodecError(f"token model: {len(self.depth)} depths but code counts for "
                             f"{[len(level) for level in self.codes]} stages")
        counts = [self.grain, self.depth] + [c for level in self.codes for c in level]
        if any((c <= 0).any() for c in counts):
            raise CodecError("token model counts must be positive")

    @property
    def stages(self):
        return len(self.depth)

    @classmethod
    def from_histograms(cls, grain_hist, code_hists, depth_hist=(0,)):
        """Counts from observed histograms plus one, so every symbol stays codable."""
        return cls(np.asarray(grain_hist) + 1, [[np.asarray(h) + 1 for h in level] for level in code_hists],
                   np.asarray(depth_hist) + 1)

    @classmethod
    def from_quantizer(cls, model):
        """Counts from a DQVAE's codebook usage (each stage's EMA code counts), the same for every level.

        Computed in float64 from the stored buffers, so both sides of a channel
        derive the same integers from the same checkpoint.
        """
        per_stage = []
        for vq in model.quantizer.stages:
            usage = vq.cluster_size.detach().cpu().double().numpy()
            per_stage.append(np.floor(usage / usage.sum() * 2**16).astype(np.int64) + 1)
        K, S = len(model.factors), len(per_stage)
        return cls(np.ones(K, dtype=np.int64), [per_stage] * K, np.ones(S, dtype=np.int64))

    def to_json(self):
        return {"grain": self.grain.tolist(), "depth": self.depth.tolist(),
                "codes": [[c.tolist() for c in level] for level in self.codes]}

    @classmethod
    def from_json(cls, obj):
        codes = obj["codes"]
        if "depth" not in obj:  # single-stage files: one count list per level
            return cls(obj["grain"], [[c] for c in codes])
        return cls(obj["grain"], codes, obj["depth"])


class TokenCounts:
    """Running histograms of the grain levels (K,), the depths (S,) and each level's and stage's codes."""

    def __init__(self, K, N, S=1):
        self.grain = np.zeros(K, np.int64)
        self.depth = np.zeros(S, np.int64)
        self.codes = [[np.zeros(N, np.int64) for _ in range(S)] for _ in range(K)]

    def add(self, tokens, factors):
        K, S, N = len(self.grain), len(self.depth), len(self.codes[0][0])
        self.grain += np.bincount(tokens.grain.ravel(), minlength=K)
        self.depth += np.bincount(tokens.depth.ravel() - 1, minlength=S)
        for acc, codes, used in zip(self.codes, tokens.codes, tokens.used(factors)):
            for a, c, u in zip(acc, codes, used):
                a += np.bincount(c[u], minlength=N)
        return self

    def entropy_bits(self):
        """Empirical entropy of everything counted, in bits."""
        return entropy_bits(self.grain) + entropy_bits(self.depth) + sum(
            entropy_bits(c) for level in self.codes for c in level)


def encode_tokens(tokens, factors, model):
    """One field's ``FieldTokens`` -> bytes: the grain map, the depth map, then each level's codes stage by stage."""
    writer = SymbolWriter()
    writer.add(tokens.grain, model.grain)
    writer.add(tokens.depth - 1, model.depth)
    for codes, used, counts in zip(tokens.codes, tokens.used(factors), model.codes):
        for c, u, n in zip(codes, used, counts):
            writer.add(c[u], n)
    return writer.bytes()


def decode_tokens(data, grid, factors, model, nested=False):
    """Inverse of ``encode_tokens`` for a coarsest grid `grid` = (Hc, Wc): ``FieldTokens``."""
    K, f_K, S = len(factors), factors[-1], model.stages
    reader = SymbolReader(data)
    grain = reader.take(model.grain, grid[0] * grid[1]).reshape(grid)
    if grain.size and grain.max() >= K:
        raise CodecError(f"decoded grain level {grain.max()} for a {K}-level model (corrupt file)")
    depth = reader.take(model.depth, grid[0] * grid[1]).reshape(grid) + 1
    codes = [np.full((S, grid[0] * f_K // f, grid[1] * f_K // f), -1, dtype=np.int64) for f in factors]
    tokens = FieldTokens(grain, depth, codes, nested)
    for c, used, counts in zip(codes, tokens.used(factors), model.codes):
        for s, (u, n) in enumerate(zip(used, counts)):
            c[s][u] = reader.take(n, int(u.sum()))
    return tokens


def token_information_bits(tokens, factors, model):
    """Ideal code length in bits of one field's ``FieldTokens`` under `model`."""
    bits = information_bits(tokens.grain.ravel(), model.grain)
    bits += information_bits(tokens.depth.ravel() - 1, model.depth)
    for codes, used, counts in zip(tokens.codes, tokens.used(factors), model.codes):
        for c, u, n in zip(codes, used, counts):
            bits += information_bits(c[u], n)
    return bits
