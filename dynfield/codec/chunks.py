"""Chunks of a ``.dfz`` file: one snapshot of one group of variables.

A chunk holds the group and snapshot index, one token stream per unit (a
variable, or the variables coded jointly; empty where the unit's bounded
fields are cheaper coded as they are than against the tokens) and one value
section per variable (see ``residual``). ``Layout`` reads what a header says
about the chunks; ``Coder`` encodes and decodes them with the tokenizer and, for
bounded fields, its float64 copy.
"""

import copy
from typing import NamedTuple

import numpy as np
import torch

from dynfield.data import field_stats
from dynfield.models import precision

from . import residual
from .container import ByteReader, ByteWriter, CodecError
from .entropy import TokenCounts, TokenModel, decode_tokens, encode_tokens
from .field import normalise, prediction, reconstruct, token_grid, token_shape, tokenize, tokens_to_numpy
from .header import PER_VARIABLE, RATE_SETTINGS, snapshots

DEPTH_FRACTIONS = (0.25, 0.5)  # shallower depths a bounded unit also tries, as fractions of the full depth


def unit_key(unit):
    return "+".join(unit)


class Encoded(NamedTuple):
    """A snapshot encoded, before entropy coding: its group and index, the ``FieldTokens`` of each unit (None
    for a unit without tokens), each variable's value section, the residual coder each bounded variable
    chose ({variable: "integer" | "sperr" | "sz3"}) and the rate setting each unit's kept tokens were
    chosen at ({unit key: {"depth": ...}}, see ``Coder.rates``)."""

    group: int
    snapshot: int
    tokens: list
    sections: list
    coders: dict
    rates: dict


class Layout:
    """What a header says about the chunks: groups, units (what one token stream codes), entropy models."""

    def __init__(self, header):
        self.header, self.meta = header, header["variables"]
        config = header["model"]["config"]
        self.factors, self.codebook_size = tuple(config["factors"]), int(config["codebook_size"])
        self.stages = int(config.get("stages", 1))
        self.nested = bool(config.get("nested", False))
        self.entropy = {k: TokenModel.from_json(m) for k, m in header.get("entropy", {}).items()}
        self.prior_coder = None  # a ``PriorCoder`` where the header names a prior (``prior_coding``)

    def units(self, g):
        """The variables of each token stream of group g: one each, or all jointly."""
        names = self.header["groups"][g]["variables"]
        return [[v] for v in names] if self.header["mode"] == PER_VARIABLE else [names]

    def bound(self, v):
        """The bound the coder keeps for v: tighter than the file's where v is packed again to integers."""
        meta = self.meta[v]
        return meta.get("coding_error", meta["max_abs_error"])

    def index(self, g, i):
        """{leading dim: index} of snapshot i of group g."""
        group = self.header["groups"][g]
        return {d: int(j) for d, j in zip(group["dims"][:-2], np.unravel_index(i, group["shape"][:-2]))}

    def parse(self, payload):
        """(group, snapshot, token streams per unit, value sections per variable) of a chunk."""
        r = ByteReader(payload)
        g, i = r.uvarint(), r.uvarint()
        groups = self.header["groups"]
        if g >= len(groups) or i >= snapshots(groups[g]):
            raise CodecError(f"a chunk names snapshot {i} of group {g}, which does not exist (corrupt file)")
        streams = [r.blob() for _ in self.units(g)]
        sections = [r.blob() for _ in groups[g]["variables"]]
        r.done()
        return g, i, streams, sections

    def section(self, v, data, with_tokens=True):
        """Reader over a variable's section, and its (mean, std).

        A per-variable section starts with its field's mean and std, unless its
        unit went without tokens (nothing to normalise: it is coded against 0).
        """
        r = ByteReader(data, f"the section of {v!r}")
        if self.header["mode"] == PER_VARIABLE:
            return r, ((r.f64(), r.f64()) if with_tokens else (0.0, 1.0))
        n = self.meta[v]["normalisation"]
        return r, (n["mean"], n["std"])

    def tokens(self, g, streams):
        """The ``FieldTokens`` of each unit's stream of a chunk of group g; None for a unit coded without tokens
        (an empty stream)."""
        shape = self.header["groups"][g]["shape"][-2:]
        coded = [j for j, stream in enumerate(streams) if stream]
        out = [None] * len(streams)
        if "prior" in self.header and coded:
            if self.prior_coder is None:
                raise CodecError("this file's tokens are coded with a prior: reading them needs that prior")
            fields = self.prior_coder.decode([streams[j] for j in coded], token_shape(shape, self.factors))
            for j, field_tokens in zip(coded, fields):
                out[j] = field_tokens
            return out
        units = self.units(g)
        for j in coded:
            out[j] = decode_tokens(streams[j], token_grid(shape, self.factors), self.factors,
                                   self.entropy[unit_key(units[j])], self.nested)
        return out


def _families(unit, sections):
    """{variable: [the residual coder its section chose]}: what a later coding of the unit may try."""
    return {v: [family] for v, (_, family) in zip(unit, sections)}


def _size(sections):
    return sum(len(data) for data, _ in sections)


class Coder(Layout):
    """Encodes and decodes the chunks of one file with the tokenizer and its float64 copy."""

    def __init__(self, model, header, device="cpu", shared=None, prior=None):
        super().__init__(header)
        self.prior_coder = prior
        if (tuple(model.factors) != self.factors or model.quantizer.codebook_size != self.codebook_size
                or model.quantizer.num_stages != self.stages or model.nested != self.nested):
            raise CodecError("the model does not have the factors, codebook size, stages and nesting the file was "
                             "made with")
        self.device = torch.device(device)
        self.model = precision.prepare(model, self.device)
        self.rate = {k: header["settings"].get(k) for k in RATE_SETTINGS}
        # the float64 copy and the usage model, made on first use; `shared` (a dict) keeps them
        # across the coders of one model (the zarr codec makes a coder per chunk)
        self._derived = {} if shared is None else shared
        self.plan = None  # what later snapshots try (``plan_for``); None: every way

    def decoder(self, unit):
        """The model that reconstructs `unit`: its float64 copy when any of its variables has a bound."""
        if all(self.bound(v) is None for v in unit):
            return self.model
        if "reference" not in self._derived:
            self._derived["reference"] = copy.deepcopy(self.model).to(torch.float64)
        return self._derived["reference"]

    def normalisation(self, v, x):
        if self.header["mode"] == PER_VARIABLE:
            return field_stats(x)
        n = self.meta[v]["normalisation"]
        return n["mean"], n["std"]

    def encode_snapshot(self, ds, g, i):
        """Snapshot i of group g, encoded (an ``Encoded``).

        A unit whose variables all have a bound may go without tokens: its
        residual is then the field itself (the prediction is 0), and whichever way
        costs fewer bytes (tokens priced under the codebook's usage) is kept,
        so the tokens never cost more than they save. The tokens' way is priced
        first against the fast float32 reconstruction; only where it wins there
        is the float64 reconstruction made (the bounded mode's slowest step),
        its residual coded by the coders that won, and the two ways compared
        again. Under a ``plan`` (see ``plan_for``) only the ways it names are
        tried.
        """
        units = self.units(g)
        names = [v for unit in units for v in unit]
        # One synchronous read of the whole snapshot: starting dask's thread pool
        # costs more than reading a 2D field.
        planes = ds[names].isel(self.index(g, i)).compute(scheduler="synchronous")
        xs = {v: np.asarray(planes[v].values) for v in names}  # (H, W) each
        norms = {v: self.normalisation(v, xs[v]) for v in names}
        shape = xs[names[0]].shape
        tries = {j: self.rates(unit) for j, unit in enumerate(units)
                 if self.plan is None or self.plan["tokens"].get(unit_key(unit), True)}
        options = self._tokenize(units, xs, norms, tries)  # {j: [(rate, FieldTokens)]}
        fields, chosen = [None] * len(units), {}
        for j, tried in options.items():
            chosen[j], fields[j] = tried[0]
        # a unit whose variables all have a bound may do better without tokens, or with tokens at another
        # rate: each way is priced first against the model's fast reconstruction, so that the float64 one is
        # made only for the way that wins (tokens priced under the codebook's usage: the file's own models
        # come later)
        optional = [j for j in options if all(self.bound(v) is not None for v in units[j])]
        ways = [(j, rate, tokens) for j in optional for rate, tokens in options[j]]
        estimates = self._reconstructions([units[j] for j, _, _ in ways], [t for _, _, t in ways], shape,
                                          exact=False)  # every way of every unit in one batch
        alone, families, token_bytes, best, cheapest = {}, {}, {}, {}, {}
        for j in optional:
            alone[j] = self._sections(units[j], xs, norms, None)
            best[j], fields[j] = _size(alone[j]), None
        for (j, rate, tokens), estimate in zip(ways, estimates):
            # a unit's ways are ranked with the coders its fields chose alone; only its cheapest tries them all
            price = len(encode_tokens(tokens, self.factors, self.usage_model()))
            ranked = price
            if len(options[j]) > 1:
                ranked += _size(self._sections(units[j], xs, norms, tokens, estimate, _families(units[j], alone[j])))
            if j not in cheapest or ranked < cheapest[j][0]:
                cheapest[j] = (ranked, rate, tokens, estimate, price)
        for j, (_, rate, tokens, estimate, price) in cheapest.items():
            guess = self._sections(units[j], xs, norms, tokens, estimate)
            if _size(guess) + price < best[j]:
                best[j], fields[j], chosen[j], token_bytes[j] = _size(guess) + price, tokens, rate, price
                # the exact reconstruction's residual tries only the coders that won against the estimate
                families[j] = _families(units[j], guess)
        # the residuals of bounded units are taken against their exact reconstructions
        bounded = [any(self.bound(v) is not None for v in unit) for unit in units]
        recons = self._reconstructions(units, [t if b else None for t, b in zip(fields, bounded)], shape)
        kept, sections, coders, rates = [], [], {}, {}
        for j, (unit, unit_tokens, recon) in enumerate(zip(units, fields, recons)):
            if unit_tokens is None:
                coded = alone[j] if j in alone else self._sections(unit, xs, norms, None)
            else:
                coded = self._sections(unit, xs, norms, unit_tokens, recon, families.get(j))
                if j in alone and _size(alone[j]) <= _size(coded) + token_bytes[j]:
                    unit_tokens, coded = None, alone[j]
            kept.append(unit_tokens)
            if unit_tokens is not None:
                rates[unit_key(unit)] = chosen[j]
            sections += [data for data, _ in coded]
            coders.update((v, family) for v, (_, family) in zip(unit, coded) if family is not None)
        return Encoded(g, i, kept, sections, coders, rates)

    def rates(self, unit):
        """The rate settings (keyword arguments of ``tokenize``) a unit's tokens are tried at.

        The file's own setting, and where none was asked for and every
        variable of the unit has a bound, also shallower depths
        (``DEPTH_FRACTIONS`` of the full depth, every region at it): under a
        loose bound a few tokens and a larger residual can cost less than
        every stage. A depth costs one pass of the tokenizer, where a token
        budget (the rd allocation) would decode every choice. The plan's
        snapshots try them all; the snapshots after them use the setting the
        plan chose (``plan_for``).
        """
        if self.plan is not None:
            return [self.plan["rates"].get(unit_key(unit), self.rate)]
        if (any(value is not None for value in self.rate.values()) or self.stages == 1
                or any(self.bound(v) is None for v in unit)):
            return [self.rate]
        depths = sorted({max(1, round(f * self.stages)) for f in DEPTH_FRACTIONS} - {self.stages})
        return [self.rate] + [{"depth": d} for d in depths]

    def _tokenize(self, units, xs, norms, tries):
        """{j: [(rate, FieldTokens)]}: the tokens of units[j] at each rate of tries[j], the units of one rate
        in one batch (per-variable coding: the variables side by side)."""
        out, by_rate = {}, {}
        for j, rates in tries.items():
            for rate in rates:
                by_rate.setdefault(tuple(sorted(rate.items())), []).append(j)
        for key, js in by_rate.items():
            rate = dict(key)
            if set(rate) == {"depth"} and not self.nested and all(j in out for j in js):
                # the full depth's tokens stopped earlier: the grains do not depend on the depth, nor do the
                # codes of the stages kept (``DQVAE.encode``), so the tokenizer need not run again
                for j in js:
                    out[j].append((rate, out[j][0][1].shallower(rate["depth"])))
                continue
            x_UCHW = torch.from_numpy(np.stack([np.stack([normalise(xs[v], *norms[v]) for v in units[j]])
                                                for j in js]))
            for j, t in zip(js, tokens_to_numpy(tokenize(self.model, x_UCHW.to(self.device), **dict(key)))):
                out.setdefault(j, []).append((dict(key), t))
        return out

    def plan_for(self, results):
        """What the snapshots after `results` (the calibration snapshots, encoded every way) try.

        A unit goes through the tokenizer only where one of them kept its
        tokens, and a bounded variable tries only the residual coders one of
        them chose. The plan is made from those snapshots alone, so a file
        comes out the same whatever the number of workers.
        """
        tokens, coders, rates = {}, {}, {}
        for r in results:
            for unit, field_tokens in zip(self.units(r.group), r.tokens):
                tokens[unit_key(unit)] = tokens.get(unit_key(unit), False) or field_tokens is not None
            for v, family in r.coders.items():
                coders.setdefault(v, set()).add(family)
            for key, rate in r.rates.items():
                rates.setdefault(key, []).append(rate)
        # each unit's tokens at the rate most of those snapshots chose (the earliest of a tie)
        rates = {k: max(rs, key=lambda rate, rs=rs: (rs.count(rate), -rs.index(rate))) for k, rs in rates.items()}
        return {"tokens": tokens, "coders": {v: sorted(f) for v, f in coders.items()}, "rates": rates}

    def usage_model(self):
        """Token model from the codebook's usage: the price of tokens before the file's own models exist."""
        if "usage" not in self._derived:
            self._derived["usage"] = TokenModel.from_quantizer(self.model)
        return self._derived["usage"]

    def _sections(self, unit, xs, norms, unit_tokens, recon=None, families=None):
        """(value section, residual coder or None) of each variable of a unit, against its tokens'
        reconstruction `recon` (C, H, W; given where the unit has a bound), or against 0 (no tokens: None).
        `families` ({variable: [residual coder]}) narrows the coders the plan lets a variable try."""
        shape = xs[unit[0]].shape
        if unit_tokens is None:
            preds = [np.zeros(shape)] * len(unit)
        elif any(self.bound(v) is not None for v in unit):
            preds = [prediction(r, *norms[v]) for r, v in zip(recon, unit)]
        else:
            preds = [None] * len(unit)  # no residual: the decoder's reconstruction is not needed here
        out = []
        for v, pred in zip(unit, preds):
            w = ByteWriter()
            if self.header["mode"] == PER_VARIABLE and unit_tokens is not None:
                w.f64(norms[v][0])
                w.f64(norms[v][1])
            coders = None if self.plan is None else self.plan["coders"].get(v)
            if families is not None:
                coders = families[v]
            info = residual.encode_values(w, xs[v], pred, self.bound(v), coders)
            out.append((w.bytes(), info.get("family")))
        return out

    def calibrate(self, results):
        """Set the token models from the tokens of `results` (plus one count per symbol); return them as JSON."""
        hists = {unit_key(u): TokenCounts(len(self.factors), self.codebook_size, self.stages)
                 for g in range(len(self.header["groups"])) for u in self.units(g)}
        for r in results:
            for unit, field_tokens in zip(self.units(r.group), r.tokens):
                if field_tokens is not None:
                    hists[unit_key(unit)].add(field_tokens, self.factors)
        self.entropy = {k: TokenModel.from_histograms(h.grain, h.codes, h.depth) for k, h in hists.items()}
        return {k: m.to_json() for k, m in self.entropy.items()}

    def streams(self, g, tokens):
        """The token stream (bytes) of each unit of a chunk of group g: the inverse of ``tokens``."""
        coded = [j for j, t in enumerate(tokens) if t is not None]
        out = [b""] * len(tokens)
        if self.prior_coder is not None and coded:
            shape = token_shape(self.header["groups"][g]["shape"][-2:], self.factors)
            for j, stream in zip(coded, self.prior_coder.encode([tokens[j] for j in coded], shape)):
                out[j] = stream
            return out
        units = self.units(g)
        for j in coded:
            out[j] = encode_tokens(tokens[j], self.factors, self.entropy[unit_key(units[j])])
        return out

    def chunk(self, encoded):
        """Chunk payload of an ``Encoded`` snapshot."""
        g, i, tokens, sections = encoded[:4]
        w = ByteWriter()
        w.uvarint(g)
        w.uvarint(i)
        for field_tokens, stream in zip(tokens, self.streams(g, tokens)):
            if field_tokens is not None and not stream:
                raise CodecError("a token stream came out empty, which marks a unit without tokens")
            w.blob(stream)
        for s in sections:
            w.blob(s)
        return w.bytes()

    def decode_chunk(self, payload):
        """(group, snapshot, {variable: (H, W) array}) of a chunk."""
        g, i, streams, sections = self.parse(payload)
        shape = tuple(self.header["groups"][g]["shape"][-2:])
        units, tokens = self.units(g), self.tokens(g, streams)
        for unit, field_tokens in zip(units, tokens):
            if field_tokens is None and any(self.bound(v) is None for v in unit):
                raise CodecError(f"a chunk has no tokens for {unit}, which has no error bound (corrupt file)")
        sections, out = iter(sections), {}
        for unit, recon in zip(units, self._reconstructions(units, tokens, shape)):
            for c, v in enumerate(unit):
                r, (mean, std) = self.section(v, next(sections), with_tokens=recon is not None)
                pred = np.zeros(shape) if recon is None else prediction(recon[c], mean, std)
                out[v] = residual.decode_values(r, pred, self.bound(v), np.dtype(self.meta[v]["dtype"]))
                r.done()
        return g, i, out

    def _reconstructions(self, units, tokens, shape, exact=True):
        """(C, H, W) reconstruction of each unit from its ``FieldTokens`` (None for a unit without tokens),
        the units that share a decoder in one batch; with `exact` False all by the fast model (an estimate of
        what a bounded unit's float64 decoder gives)."""
        out = [None] * len(units)
        batches = {}
        for j, (unit, field_tokens) in enumerate(zip(units, tokens)):
            if field_tokens is not None:
                batches.setdefault(id(self.decoder(unit)) if exact else 0, []).append(j)
        for js in batches.values():
            model = self.decoder(units[js[0]]) if exact else self.model
            recon = reconstruct(model, [tokens[j] for j in js], shape).cpu().numpy()
            for j, r in zip(js, recon):
                out[j] = r
        return out
