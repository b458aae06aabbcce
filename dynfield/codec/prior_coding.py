"""Range coding of a field's tokens under an autoregressive prior, with the same probabilities on every machine.

    coder = PriorCoder(prior)
    streams = coder.encode([field_tokens, ...], shape)   # one stream per field
    fields = coder.decode(streams, shape)               # the same fields back

The prior (``ARPrior``, raster or coarse-to-fine) predicts every free
position decision and every code from the tokens before it. Encoder and
decoder must turn its logits into the very same integer counts, or the range
decoder reads garbage. Three things see to that:

- The logits are computed on the CPU in float64, by the same token-by-token
  walk (``ARPrior.walk``, key/value cache) on both sides. On one machine
  they are then bit-identical; across processors and BLAS libraries they
  differ by ~1e-13.
- They are rounded to a grid of 1/``GRID`` nat, and counts come from the
  rounded values by integer arithmetic only (a fixed-point table of
  exp(-j / GRID), built from an integer constant), with a floor of one count
  per symbol. The encoder shifts the grid by one of ``OFFSETS`` offsets, the
  one that keeps every logit of the stream farthest from a rounding edge,
  and records it: no logit lies within ``MARGIN`` grid steps (~1e-9 nat) of
  an edge, far more than the differences between machines.
- The stream carries a CRC-32 of its symbols. Should the probabilities still
  not reproduce, decoding stops with a ``CodecError`` instead of returning
  other tokens.

Stream layout: the offset (one byte), the CRC-32 (4 bytes, little endian),
then the range coder's 32-bit words. Only the free decisions (the grain of a
region, where the scan leaves a choice) and the codes are coded; places
the scan forces cost nothing, as in the prior's own code length.
"""

import copy
import struct
import zlib
from pathlib import Path

import constriction
import numpy as np
import torch

from dynfield import checkpoint as ckpt
from dynfield.checkpoint import weights_hash
from dynfield.models.prior import ARPrior

from .container import CodecError
from .entropy import FieldTokens, categorical
from .field import token_shape, tokens_from_numpy

GRID = 16  # logits are rounded to 1/16 nat
OFFSETS = 8  # grid shifts the encoder chooses among
MARGIN = 1e-8  # grid steps between any logit and a rounding edge, at the chosen offset (checked, not assumed)
SPAN = 24 * GRID  # a symbol 24 nats below the most likely one gets the floor count
_FIXED = 40  # fixed-point bits of the exp table
_EXP_STEP = 1032895585848  # round(2**40 * exp(-1/16)), an integer: no libm call decides a count


def _exp_table():
    """Counts per grid step below the top: floor(2^20 exp(-j / GRID)) + 1 for j = 0..SPAN, integers only."""
    values, x = [], 1 << _FIXED
    for _ in range(SPAN + 1):
        values.append((x >> (_FIXED - 20)) + 1)
        x = (x * _EXP_STEP) >> _FIXED
    return np.array(values, dtype=np.int64)


_COUNTS = _exp_table()


def _scaled(logits, offset):
    """Logits (..., V) as grid steps below their maximum, shifted by `offset` / OFFSETS of a step."""
    logits = np.asarray(logits, dtype=np.float64)
    return (logits - logits.max(-1, keepdims=True)) * GRID + offset / OFFSETS


def counts(logits, offset):
    """Integer counts (..., V) of float64 `logits` at grid `offset`: the same on every machine."""
    steps = np.clip(-np.floor(_scaled(logits, offset)), 0, SPAN).astype(np.int64)
    return _COUNTS[steps]


def margin(logits, offset):
    """Smallest distance, in grid steps, of any logit that decides a count from a rounding edge."""
    s = _scaled(logits, offset)
    frac = s - np.floor(s)
    distance = np.minimum(frac, 1 - frac)
    return float(distance[s > -SPAN].min(initial=np.inf))


def _checksum(symbols):
    return zlib.crc32(np.asarray(symbols, dtype="<i4").tobytes())


class PriorCoder:
    """Codes the tokens of fields under an autoregressive prior (a float64 copy, on the CPU).

    The fields of one call walk the prior together, one token a step for all
    (as many rows as fields), each into a stream of its own; decoding the
    same streams in one call repeats the same computation.
    """

    def __init__(self, prior):
        if not isinstance(prior, ARPrior):
            raise CodecError(f"a {type(prior).__name__} cannot code tokens: the codec takes an autoregressive "
                             f"prior (prior=raster or prior=coarse_to_fine)")
        self.prior = copy.deepcopy(prior).to("cpu", torch.float64).eval()
        self.codebook_size = self.prior.codebook_size

    def _tokens(self, fields, shape):
        if any((f.depth != 1).any() for f in fields):
            raise CodecError("the prior codes single-stage tokens; these fields were coded with residual stages")
        tokens = tokens_from_numpy(fields, self.prior.scan.factors, shape, self.codebook_size)
        try:
            return self.prior.scan.check(tokens)
        except ValueError as e:
            raise CodecError(f"the prior cannot code these tokens: {e}") from None

    def encode(self, fields, shape):
        """One stream (bytes) per ``FieldTokens`` of `fields`, fields of a token grid `shape` (the prior's own)."""
        seq = self.prior.scan.encode(self._tokens(fields, shape))
        symbols = [[] for _ in fields]  # every coded symbol of each field, with the logits it is coded under
        rows = [[] for _ in fields]

        def position(logits, t, free):
            target = seq.choice[:, t + 1]
            for b in free.nonzero()[:, 0].tolist():
                allowed = torch.isfinite(logits[b])
                symbols[b].append(int(allowed[: target[b]].sum()))
                rows[b].append(logits[b][allowed].numpy())
            return target.clamp(min=0)

        def code(logits, t, is_code):
            target = seq.code[:, t + 1]
            for b in is_code.nonzero()[:, 0].tolist():
                symbols[b].append(int(target[b]))
                rows[b].append(logits[b].numpy())
            return target.clamp(min=0)

        with torch.no_grad():
            self.prior.walk(len(fields), position, code)
        return [self._stream(s, r) for s, r in zip(symbols, rows)]

    @staticmethod
    def _stream(symbols, rows):
        worst = [min((margin(r, o) for r in rows), default=np.inf) for o in range(OFFSETS)]
        offset = int(np.argmax(worst))
        if worst[offset] < MARGIN:
            raise CodecError("no grid offset keeps the prior's logits clear of a rounding edge; code without --prior")
        encoder = constriction.stream.queue.RangeEncoder()
        for s, r in zip(symbols, rows):
            encoder.encode(np.array([s], dtype=np.int32), categorical(counts(r, offset)))
        words = encoder.get_compressed().astype("<u4").tobytes()
        return bytes([offset]) + struct.pack("<I", _checksum(symbols)) + words

    def decode(self, streams, shape):
        """The ``FieldTokens`` of each stream of `streams` made by one ``encode`` call, for a token grid `shape`."""
        heads = []
        for data in streams:
            if len(data) < 5 or data[0] >= OFFSETS or (len(data) - 5) % 4:
                raise CodecError("a prior-coded token stream is damaged (bad length or offset)")
            words = np.frombuffer(data[5:], dtype="<u4").astype(np.uint32)
            heads.append((data[0], struct.unpack("<I", data[1:5])[0], constriction.stream.queue.RangeDecoder(words)))
        symbols = [[] for _ in streams]

        def take(b, logits):
            offset, _, decoder = heads[b]
            symbols[b].append(int(decoder.decode(categorical(counts(logits.numpy(), offset)), 1)[0]))
            return symbols[b][-1]

        def position(logits, t, free):
            choice = torch.zeros(len(streams), dtype=torch.long)
            for b in free.nonzero()[:, 0].tolist():
                places = torch.isfinite(logits[b]).nonzero()[:, 0]
                choice[b] = places[take(b, logits[b][places])]
            return choice

        def code(logits, t, is_code):
            codes = torch.zeros(len(streams), dtype=torch.long)
            for b in is_code.nonzero()[:, 0].tolist():
                codes[b] = take(b, logits[b])
            return codes

        try:
            with torch.no_grad():
                tokens = self.prior.scan.decode(self.prior.walk(len(streams), position, code), self.codebook_size)
        except (ValueError, RuntimeError, IndexError) as e:
            raise CodecError(f"a prior-coded token stream does not decode ({e}): damaged data") from None
        if any(_checksum(s) != checksum for s, (_, checksum, _) in zip(symbols, heads)):
            raise CodecError("a prior-coded token stream fails its checksum: the data are damaged, or the prior's "
                             "probabilities did not reproduce on this machine (decode where it was encoded)")
        out = []
        for b in range(len(streams)):
            grain = tokens.grain[b].numpy()
            out.append(FieldTokens(grain, np.ones_like(grain), [c[b].numpy()[None] for c in tokens.codes],
                                   tokens.nested))
        return out


def load_prior(path):
    """(prior, checkpoint dictionary) of a prior checkpoint; a checkpoint of another kind is a ``CodecError``."""
    try:
        prior, _, state = ckpt.load_prior(path)
    except ValueError as e:
        raise CodecError(str(e)) from None
    return prior, state


def open_prior(path, header):
    """(PriorCoder, header entry) of the prior at `path`, checked against a file's tokenizer and field shapes."""
    prior, state = load_prior(path)
    made_for, tokenizer = state["tokenizer"]["sha256"], header["model"]["sha256"]
    if made_for != tokenizer:
        raise CodecError(f"{path} is a prior over the tokens of the tokenizer {made_for[:16]}..., not of the one "
                         f"compressing ({tokenizer[:16]}...): train a prior on this tokenizer's tokens")
    factors = header["model"]["config"]["factors"]
    for group in header["groups"]:
        shape = token_shape(group["shape"][-2:], factors)
        if tuple(shape) != tuple(prior.config["shape"]):
            raise CodecError(f"{path} models {prior.config['shape'][0]}x{prior.config['shape'][1]} fields; "
                             f"{group['variables']} are {shape[0]}x{shape[1]}")
    coder = PriorCoder(prior)
    return coder, {"sha256": weights_hash(prior), "order": prior.config["order"],
                   "path_hint": str(Path(path).resolve())}


def prior_for(header, prior, path):
    """The ``PriorCoder`` of the prior a file's tokens were coded with: `prior`, or the one at the path it
    remembers (where it holds the same weights); None for a file coded without a prior."""
    entry = header.get("prior")
    if entry is None:
        return None
    candidates = [prior] if prior is not None else [c for c in [entry.get("path_hint")] if c and Path(c).is_file()]
    for candidate in candidates:
        model, _ = load_prior(candidate)
        if weights_hash(model) == entry["sha256"]:
            return PriorCoder(model)
    tried = ", ".join(map(str, candidates)) or f"nothing at {entry.get('path_hint')}"
    raise CodecError(f"{path} codes its tokens with the {entry['order']} prior of SHA-256 {entry['sha256'][:16]}...; "
                     f"{tried} is not it: pass that prior with --prior")
