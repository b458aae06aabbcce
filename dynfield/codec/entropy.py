"""Range coding of tokens and other integer symbols under stored count models.

A model is an array of integer counts, one per symbol. Encoder and decoder
turn the same counts into the same float probabilities (counts / total, in
float64) and constriction quantises those deterministically
(``perfect=False``), so both sides use bit-identical models; only the
integers travel in the file. A distribution over a single symbol costs
nothing and is not coded at all.

Tokens of one field (the grain map, then the codes of each level at the
places the grain map selects) go into one range-coded stream under a
``TokenModel``: a count per grain level and a count per code for each level.
"""

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


def level_masks(grain, factors):
    """Per level k, the bool mask of the level-k grid where the grain map selects level k."""
    return [repeat_cells(grain == k, factors[-1] // f) for k, f in enumerate(factors)]


class TokenModel:
    """Integer counts per grain level (``grain``, (K,)) and per code of each level (``codes``, K x (N,))."""

    def __init__(self, grain, codes):
        self.grain = np.asarray(grain, dtype=np.int64)
        self.codes = [np.asarray(c, dtype=np.int64) for c in codes]
        if (self.grain <= 0).any() or any((c <= 0).any() for c in self.codes):
            raise CodecError("token model counts must be positive")

    @classmethod
    def from_histograms(cls, grain_hist, code_hists):
        """Counts from observed histograms plus one, so every symbol stays codable."""
        return cls(np.asarray(grain_hist) + 1, [np.asarray(h) + 1 for h in code_hists])

    @classmethod
    def from_quantizer(cls, model):
        """Counts from a DQVAE's codebook usage (its EMA code counts), the same for every level.

        Computed in float64 from the stored buffer, so both sides of a channel
        derive the same integers from the same checkpoint.
        """
        usage = model.quantizer.cluster_size.detach().cpu().double().numpy()
        counts = np.floor(usage / usage.sum() * 2**16).astype(np.int64) + 1
        K = len(model.factors)
        return cls(np.ones(K, dtype=np.int64), [counts] * K)

    def to_json(self):
        return {"grain": self.grain.tolist(), "codes": [c.tolist() for c in self.codes]}

    @classmethod
    def from_json(cls, obj):
        return cls(obj["grain"], obj["codes"])


def token_histograms(grain, codes, K, N):
    """Histograms of the grain levels (K,) and of the used codes of each level (K x (N,))."""
    return (np.bincount(grain.ravel(), minlength=K),
            [np.bincount(c[c >= 0], minlength=N) for c in codes])


class TokenCounts:
    """Running histograms of the grain levels (K,) and of each level's used codes (K x (N,))."""

    def __init__(self, K, N):
        self.grain = np.zeros(K, np.int64)
        self.codes = [np.zeros(N, np.int64) for _ in range(K)]

    def add(self, grain, codes):
        grain_hist, code_hists = token_histograms(grain, codes, len(self.grain), len(self.codes[0]))
        self.grain += grain_hist
        for acc, h in zip(self.codes, code_hists):
            acc += h
        return self

    def entropy_bits(self):
        """Empirical entropy of everything counted, in bits."""
        return entropy_bits(self.grain) + sum(entropy_bits(c) for c in self.codes)


def encode_tokens(grain, codes, factors, model):
    """One field's tokens -> bytes.

    grain : (Hc, Wc) int level per coarsest region; codes : per level k an
    (Hc f_K / f_k, Wc f_K / f_k) int array, -1 where level k is unused.
    """
    writer = SymbolWriter()
    writer.add(grain, model.grain)
    for c, mask, counts in zip(codes, level_masks(grain, factors), model.codes):
        writer.add(c[mask], counts)
    return writer.bytes()


def decode_tokens(data, grid, factors, model):
    """Inverse of ``encode_tokens`` for a coarsest grid `grid` = (Hc, Wc): (grain, codes)."""
    K, f_K = len(factors), factors[-1]
    reader = SymbolReader(data)
    grain = reader.take(model.grain, grid[0] * grid[1]).reshape(grid)
    if grain.size and grain.max() >= K:
        raise CodecError(f"decoded grain level {grain.max()} for a {K}-level model (corrupt file)")
    codes = []
    for mask, counts, f in zip(level_masks(grain, factors), model.codes, factors):
        c = np.full((grid[0] * f_K // f, grid[1] * f_K // f), -1, dtype=np.int64)
        c[mask] = reader.take(counts, int(mask.sum()))
        codes.append(c)
    return grain, codes


def token_information_bits(grain, codes, factors, model):
    """Ideal code length in bits of one field's tokens under `model`."""
    bits = information_bits(grain.ravel(), model.grain)
    for c, counts in zip(codes, model.codes):
        bits += information_bits(c[c >= 0], counts)
    return bits

