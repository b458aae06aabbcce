"""The dynfield codec: fields -> tokens -> bytes, with an optional guaranteed error bound.

File level: ``compress_file``, ``decompress_file`` and ``inspect_file``
stream a data set snapshot by snapshot through the ``.dfz`` container (see
``container``); the field level is in ``field``, the header in ``header``,
the chunks in ``chunks``.

How a file is coded
-------------------
- Channels. A tokenizer with one input channel is channel-agnostic: every
  variable is coded on its own, each 2D field normalised by its own mean and
  standard deviation (stored per field, float64). A tokenizer with C > 1
  channels codes its own variables jointly, normalised with the statistics
  of its checkpoint.
- Chunks. Variables with the same dimensions and shape form a group; one
  chunk holds one snapshot (one index of the leading sample/time/z
  dimensions) of one group. Fields smaller than two coarsest regions are
  padded by replication before tokenizing and cropped after decoding.
- Tokens are range coded under per-file count models (per variable, or per
  joint group), estimated on the first ``CALIBRATION_CHUNKS`` snapshots of
  each group plus one count per symbol, and stored in the header.
- Values. Non-finite values are kept exactly and replaced by the field mean
  before the tokenizer sees them. With an error bound E, the residual
  against the token reconstruction is coded so that every decoded value is
  within E of the original (see ``residual``).
- Plan. The first ``PLAN_CHUNKS`` snapshots of each group are coded every
  way the codec knows: with and without tokens, under every residual coder,
  and (for a bounded unit of a multi-stage tokenizer, when no rate was asked
  for) with tokens at full depth and at shallower depths
  (``Coder.rates``). The snapshots after them try only the ways those chose
  (``Coder.plan_for``): a unit that never kept its tokens skips the
  tokenizer, a unit that kept them uses the rate most of them chose, a
  variable tries only the residual coders that won. That is most of the
  bounded mode's time saved, and the file does not depend on the number of
  workers.

Determinism of the error bound
------------------------------
The residual is taken against a reconstruction that the decoder must
reproduce. The tokenizer's usual float32 decode differs between devices and
CPU kernels by ~1e-7 relative, far more than a small bound allows, so
fields with an error bound are reconstructed by a float64 copy of the
model, on both sides. Float64 reconstructions agree across devices and
machines to ~1e-13 relative, and the residual layer's margin (E / 1024)
absorbs that: the bound holds wherever the file is decoded, for any bound
above ~1e-10 of the field's spread. The price is a float64 decode of every
bounded field (a GPU with fast float64 helps). Fields without a bound are
decoded in float32.
"""

import concurrent.futures
import itertools
import multiprocessing
import time
import uuid
from collections import deque
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from dynfield import checkpoint as ckpt
from dynfield.checkpoint import weights_hash
from dynfield import paths
from dynfield.data import open_fields

from . import residual
from .chunks import Coder, Layout, unit_key
from .container import CodecError, ContainerReader, ContainerWriter, atomic_output, encode_header
from .entropy import TokenCounts, token_information_bits
from .field import default_checkpoint, tokens_from_numpy
from .header import CALIBRATION_CHUNKS, PLAN_CHUNKS, SNAPSHOT_CHUNKS, check_header, check_rate, job_phases, make_header
from .netcdf import NetCDFWriter
from .prior_coding import load_prior, open_prior, prior_for
from .reading import cache_no_chunks, no_chunk_cache


_WORKER = {}


def _encode_in_worker(spec, job, plan):
    """Encode one snapshot in a worker process under `plan` (``Coder.plan_for``); the coder and the open data
    set are made once per process."""
    if _WORKER.get("token") != spec["token"]:
        if spec["threads"]:
            torch.set_num_threads(spec["threads"])
            cache_no_chunks()  # a spawned pool process (dask workers have the plugin)
        model, _ = ckpt.load_model(spec["checkpoint"])
        if weights_hash(model) != spec["header"]["model"]["sha256"]:
            raise CodecError(f"{spec['checkpoint']} changed while compressing")
        _WORKER.update(token=spec["token"], coder=Coder(model, spec["header"], spec["device"]),
                       ds=open_fields(spec["in_path"], spec["variables"], spec["dims"], chunks=None))
    _WORKER["coder"].plan = plan
    return _WORKER["coder"].encode_snapshot(_WORKER["ds"], *job)


def _encode_all(coder, ds, phases, workers, spec, client=None):
    """Encoded snapshots, phase after phase (the calibration snapshots, then the rest): here, from a pool of
    `workers` processes, or on a dask cluster.

    Each phase is encoded under ``coder.plan`` as it stands when the phase
    starts: the consumer sets it from the first phase's results before it
    asks for the next phase's first.
    """
    if client is None and workers <= 1:
        for jobs in phases:
            for job in jobs:
                yield coder.encode_snapshot(ds, *job)
        return
    if client is not None:  # dask.distributed: the spec travels once to every worker
        executor, workers = client, max(1, len(client.scheduler_info()["workers"]))
        from .workers import prepare

        prepare(client)
        spec = client.scatter({**spec, "threads": None}, broadcast=True)
    else:
        # torch's threads split between the workers; spawned (not forked) so that no
        # OpenMP state or open file handle is inherited
        spec = {**spec, "threads": max(1, torch.get_num_threads() // workers)}
        executor = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending = deque()
    try:
        for jobs in phases:
            plan = coder.plan
            for job in jobs:
                pending.append(executor.submit(_encode_in_worker, spec, job, plan))
                if len(pending) >= 2 * workers:  # bounded look-ahead keeps memory flat
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        if client is None:
            executor.shutdown(wait=True, cancel_futures=True)
        else:
            for future in pending:
                future.cancel()


def _load_tokenizer(checkpoint):
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    model, state = ckpt.load_model(path)
    if state.get("kind") != "tokenizer":
        raise CodecError(f"{path} is a {state.get('kind')!r} checkpoint, not a tokenizer")
    return path, model, state


def model_for(header, checkpoint, path):
    """The tokenizer a file was made with: `checkpoint`; by default the bundled one, one bundled before it,
    or the one at the path the file remembers (where it still holds the same weights)."""
    expected = header["model"]["sha256"]
    hint = header["model"].get("path_hint")
    if checkpoint is not None:
        candidates = [checkpoint]
    else:
        candidates = [c for c in (paths.BUNDLED_TOKENIZER, paths.retired_tokenizer(expected), hint)
                      if c is not None and Path(c).is_file()]
    for candidate in candidates:
        candidate, model, _ = _load_tokenizer(candidate)
        if weights_hash(model) == expected:
            return model
    tried = ", ".join(map(str, candidates)) or "no checkpoint (the bundled one is not installed)"
    raise CodecError(f"{path} was compressed with the model of SHA-256 {expected[:16]}... (made from {hint}); "
                     f"{tried} holds other weights: pass the checkpoint it was made with")


def compress_file(in_path, out_path, checkpoint=None, variables=None, fine_ratio=None, max_abs_error=None,
                  rel_error=None, workers=1, progress=True, dims=None, device="cpu", bits_per_value=None, psnr=None,
                  client=None, prior=None):
    """Compress a field file or data set (anything ``open_fields`` reads) to a ``.dfz`` file.

    Parameters
    ----------
    checkpoint : tokenizer checkpoint; default the bundled ``dynfield/pretrained/tokenizer.pt``.
    variables : variables to compress (default: all; for a multi-channel
        tokenizer, exactly its own).
    fine_ratio : exact fraction of fine regions per field; None lets the router decide.
    bits_per_value, psnr : instead, the rate-distortion allocation of grains and
        depths: a token budget per field value (log2(codebook size) bits a code,
        before entropy coding, which only lowers it) or the fewest tokens that
        reach this PSNR (dB, by each field's range, averaged over a unit's
        channels). At most one of fine_ratio, bits_per_value and psnr.
    max_abs_error, rel_error : optional error bound, a number for every variable
        or a {variable: number} mapping; relative to each variable's range of
        finite values in the file (which costs one extra pass over the data).
    workers : processes encoding snapshots in parallel (chunk order is kept).
    client : a ``dask.distributed`` client whose workers encode the snapshots instead.
    dims : file dimension name -> dynfield name, as for ``open_fields``.
    device : torch device of the tokenizer (bounded fields are reconstructed there in float64).
    prior : a stage-2 autoregressive prior checkpoint over this tokenizer's
        tokens and fields of this shape: it codes the tokens instead of the
        per-file histograms (``prior_coding``; decoding then needs it too),
        unless the histograms, their own bytes included, would take fewer
        bytes (judged on the calibration snapshots; a prior of another flow),
        when the file is coded as without it.

    Returns
    -------
    dict : ``inspect_file`` of the output, plus ``seconds``, ``input_mb_per_s``
    and, with a prior, ``prior_declined`` (whether the histograms coded the
    tokens instead).

    The output is written to a temporary file and renamed at the end: an error
    or an interruption leaves no output file.
    """
    start = time.perf_counter()
    if (workers > 1 or client is not None) and isinstance(in_path, xr.Dataset):
        raise CodecError("parallel workers each open the input: give a file path, or workers=1 for a data set")
    checkpoint, model, state = _load_tokenizer(checkpoint)
    rate = check_rate(model, fine_ratio=fine_ratio, bits_per_value=bits_per_value, psnr=psnr)
    # the header's pass over the data (a relative bound's ranges) streams through dask; the snapshots are
    # read without it, each read a tenth of the time
    with no_chunk_cache(), open_fields(in_path, variables, dims, chunks=SNAPSHOT_CHUNKS) as chunked, \
            open_fields(in_path, variables, dims, chunks=None) as ds:
        header = make_header(chunked, model, state, rate, max_abs_error, rel_error)
        header["model"]["path_hint"] = str(Path(checkpoint).resolve())  # where decompress may find it again
        prior_coder = None
        if prior is not None:
            prior_coder, header["prior"] = open_prior(prior, header)
        coder = Coder(model, header, device, prior=prior_coder)
        spec = {"checkpoint": str(checkpoint), "in_path": None if isinstance(in_path, xr.Dataset) else in_path, "variables": list(header["variables"]),
                "dims": dims, "header": header, "device": device, "token": uuid.uuid4().hex}
        phases = job_phases(header["groups"], PLAN_CHUNKS, CALIBRATION_CHUNKS)
        _write(coder, _encode_all(coder, ds, phases, workers, spec, client), len(phases[0]),
               len(phases[0]) + len(phases[1]), out_path, progress)
    seconds = time.perf_counter() - start
    summary = inspect_file(out_path)
    summary["seconds"] = seconds
    summary["input_mb_per_s"] = summary["input_bytes"] / 1e6 / seconds
    if prior is not None:
        summary["prior_declined"] = summary["token_prior"] is None
    return summary


def _write(coder, results, n_plan, n_calibration, out_path, progress):
    """Write the encoded snapshots `results` (the `n_calibration` calibration chunks first) as a .dfz file,
    atomically; the first `n_plan` set the coder's plan for the rest, the calibration chunks its entropy
    models."""
    header = coder.header
    with atomic_output(out_path) as tmp, open(tmp, "wb") as f, closing(results), \
            tqdm(total=header["n_chunks"], desc="compress", unit="snapshot", disable=not progress) as bar:
        writer = ContainerWriter(f)
        calibration = []
        for result in itertools.islice(results, n_calibration):
            calibration.append(result)
            bar.update()
            if len(calibration) == n_plan:  # before the next snapshot is asked for
                coder.plan = coder.plan_for(calibration)
        payloads = _calibrate_tokens(coder, calibration)
        writer.write_header(header)
        for payload in payloads:
            writer.write_chunk(payload)
        del calibration, payloads
        for result in results:
            writer.write_chunk(coder.chunk(result))
            bar.update()
        writer.finish()


def _calibrate_tokens(coder, calibration):
    """Choose how the tokens are coded from the calibration chunks; return their payloads.

    Per-file histograms are fitted to them (stored in the header). With a
    prior the chunks are coded both ways, and the prior is kept where it takes
    fewer bytes than the histograms with their share of their own (spread
    over every chunk of the file); else the file is coded as without it, so
    that a prior never costs more than none.
    """
    header = coder.header
    entropy = coder.calibrate(calibration)
    prior_coder, coder.prior_coder = coder.prior_coder, None
    plain = [coder.chunk(r) for r in calibration]
    if prior_coder is not None:
        coder.prior_coder = prior_coder
        coded = [coder.chunk(r) for r in calibration]
        histogram_bytes = len(encode_header(entropy))
        share = histogram_bytes * len(calibration) / max(header["n_chunks"], 1)
        if sum(map(len, coded)) < sum(map(len, plain)) + share:
            return coded  # no histograms to store
        coder.prior_coder = None
        del header["prior"]
    header["entropy"] = entropy
    return plain


def decompress_file(in_path, out_path, checkpoint=None, progress=True, device="cpu", prior=None):
    """Decode a ``.dfz`` file to netCDF, snapshot by snapshot.

    The netCDF file has the compressed variables with their dims, coordinates,
    attributes and dtype, plus attributes naming the codec, the model's
    SHA-256 and the error bound. `checkpoint` must hold the very model the
    file was made with; by default the bundled tokenizer, or the checkpoint
    at the path the file was compressed from, is used where its weights
    match. `device` is the torch device that decodes (in float64 for
    bounded fields). A file whose tokens a prior coded needs that `prior`
    (by default the one at the path it was compressed with).
    Written atomically, like ``compress_file``. Returns the output path.
    """
    with ContainerReader(in_path) as reader:
        header = check_header(reader.header, in_path)
        model = model_for(header, checkpoint, in_path)
        coder = Coder(model, header, device, prior=prior_for(header, prior, in_path))
        seen = set()
        with atomic_output(out_path) as tmp:
            out = NetCDFWriter(tmp, header)
            try:
                for payload in tqdm(reader.chunks(), total=header["n_chunks"], desc="decompress", unit="snapshot",
                                    disable=not progress):
                    g, i, fields = coder.decode_chunk(payload)
                    if (g, i) in seen:
                        raise CodecError(f"{in_path} holds snapshot {i} of group {g} twice (corrupt file)")
                    seen.add((g, i))
                    index = tuple(coder.index(g, i).values())
                    for v, values in fields.items():
                        out.write(v, index, values)
            finally:
                out.close()
    return Path(out_path)


def inspect_file(path):
    """Figures of a ``.dfz`` file, read without the model.

    Returns a dict: sizes and bits per value overall and per variable (a
    joint token stream is shared evenly among its variables), compression
    ratio against the decoded dtypes, the model's identity, the settings,
    the fraction of fine regions and the mean depth of the regions' tokens
    (of ``stages``), token bits spent against their ideal code
    length under the stored model and their empirical entropy, non-finite
    values and escapes per variable. Where a prior coded the tokens (named
    under ``token_prior``) only their bits are counted: the rest needs the prior.
    """
    with ContainerReader(path) as reader:
        header = check_header(reader.header, path)
        layout = Layout(header)
        K = len(layout.factors)
        per_var = {v: {"bytes": 0.0, "nonfinite": 0, "escapes": 0, "residual_bytes": 0, "residual_coders": {}}
                   for v in header["variables"]}
        tokens = {"codes": 0, "bits": 0.0, "ideal_bits": 0.0, "entropy_bits": 0.0, "units_without": 0}
        hists = {}
        prior_coded = "prior" in header
        for payload in reader.chunks():
            g, _, streams, sections = layout.parse(payload)
            without = set()  # variables of units coded without tokens
            # reading the tokens themselves of a prior-coded file needs the prior
            decoded = [None] * len(streams) if prior_coded else layout.tokens(g, streams)
            for unit, stream, field_tokens in zip(layout.units(g), streams, decoded):
                if not stream:
                    tokens["units_without"] += 1
                    without.update(unit)
                    continue
                tokens["bits"] += 8 * len(stream)
                for v in unit:
                    per_var[v]["bytes"] += len(stream) / len(unit)
                if prior_coded:
                    continue
                key = unit_key(unit)
                tokens["ideal_bits"] += token_information_bits(field_tokens, layout.factors, layout.entropy[key])
                tokens["codes"] += int(sum((c >= 0).sum() for c in field_tokens.codes))
                hists.setdefault(key, TokenCounts(K, layout.codebook_size, layout.stages)).add(field_tokens, layout.factors)
            for v, data in zip(header["groups"][g]["variables"], sections):
                r, _ = layout.section(v, data, with_tokens=v not in without)
                stats = residual.section_stats(r, layout.bound(v))
                per_var[v]["bytes"] += len(data)
                for k in ("nonfinite", "escapes", "residual_bytes"):
                    per_var[v][k] += stats[k]
                if "transform" in stats:
                    coder = residual.CODER_NAMES[stats["transform"]]
                    per_var[v]["residual_coders"][coder] = per_var[v]["residual_coders"].get(coder, 0) + 1
        tokens["entropy_bits"] = sum(h.entropy_bits() for h in hists.values())
        levels = sum((h.grain for h in hists.values()), np.zeros(K, np.int64))
        depths = sum((h.depth for h in hists.values()), np.zeros(layout.stages, np.int64))
        size, version, header_bytes = reader.size, reader.version, reader.chunks_start
    variables, n_values, input_bytes = {}, 0, 0
    for v, meta in header["variables"].items():
        n = int(np.prod(meta["shape"], dtype=np.int64))
        n_values += n
        input_bytes += n * np.dtype(meta["dtype"]).itemsize
        variables[v] = {"dims": meta["dims"], "shape": meta["shape"], "dtype": np.dtype(meta["dtype"]).name,
                        "values": n, "bits_per_value": 8 * per_var[v]["bytes"] / n,
                        "max_abs_error": meta["max_abs_error"], **per_var[v]}
    config = header["model"]["config"]
    return {
        "path": str(path), "format_version": version, "bytes": size, "header_bytes": header_bytes, "values": n_values,
        "input_bytes": input_bytes,
        "bits_per_value": 8 * size / n_values, "compression_ratio": input_bytes / size,
        "model": {"sha256": header["model"]["sha256"], "class": header["model"]["class"],
                  "in_channels": config["in_channels"], "factors": list(layout.factors),
                  "codebook_size": layout.codebook_size},
        "mode": header["mode"], "settings": header["settings"], "chunks": header["n_chunks"],
        "fine_fraction": float(levels[:-1].sum() / max(levels.sum(), 1)),
        "level_fractions": (levels / max(levels.sum(), 1)).tolist(),
        "stages": layout.stages, "mean_depth": float(depths @ np.arange(1, layout.stages + 1) / max(depths.sum(), 1)),
        "tokens": tokens, "variables": variables, "token_prior": header.get("prior"),
    }


def prior_code_length(path, prior_checkpoint, device="cpu"):
    """Ideal code length of a ``.dfz`` file's tokens under a stage-2 prior, beside what the file spends on them.

    The prior must model this file's tokenizer (the same weights' SHA-256)
    and fields of its shape. Nothing is decoded but the tokens.

    Returns
    -------
    dict : ``prior_bits`` (the sum of -log2 p of every token under the
    prior), ``token_bits`` (what the file's range-coded token streams take),
    ``values`` covered, and both per value.
    """
    prior, state = load_prior(prior_checkpoint)
    prior.to(device)
    with ContainerReader(path) as reader:
        header = check_header(reader.header, path)
        if state["tokenizer"]["sha256"] != header["model"]["sha256"]:
            raise CodecError(f"{prior_checkpoint} is a prior over the tokens of another tokenizer (sha256 "
                             f"{state['tokenizer']['sha256'][:12]}...) than the one {path} was made with "
                             f"({header['model']['sha256'][:12]}...)")
        layout, shape = Layout(header), tuple(prior.config["shape"])
        prior_bits = token_bits = 0.0
        values = 0
        for payload in reader.chunks():
            g, _, streams, _ = layout.parse(payload)
            field_shape = tuple(header["groups"][g]["shape"][-2:])
            if field_shape != shape:
                raise CodecError(f"the prior models {shape[0]}x{shape[1]} fields; {path} holds {field_shape}")
            for unit, stream, field_tokens in zip(layout.units(g), streams, layout.tokens(g, streams)):
                if not stream:
                    continue  # a unit coded without tokens
                tokens = tokens_from_numpy([field_tokens], layout.factors, shape, layout.codebook_size)
                prior_bits += float(prior.bits(tokens.to(device)).sum())
                token_bits += 8 * len(stream)
                values += len(unit) * shape[0] * shape[1]
    return {"prior_bits": prior_bits, "token_bits": token_bits, "values": values,
            "prior_bits_per_value": prior_bits / max(values, 1), "token_bits_per_value": token_bits / max(values, 1)}
