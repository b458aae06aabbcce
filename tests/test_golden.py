"""A .dfz file made by an earlier build still decodes to what it decoded to then; damaged copies are refused."""

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import tiny_tokenizer

from dynfield import paths
from dynfield.checkpoint import bundle
from dynfield.codec import CodecError, codec, decompress_file, inspect_file
from dynfield.models import precision

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden.dfz"  # made by tests/data/make_golden.py with the bundled tokenizer
BOUNDS = {"u": 0.01, "v": 0.01}


@pytest.mark.parametrize("bfloat16", ["0", "1"])
def test_the_golden_file_decodes_as_it_did(tmp_path, monkeypatch, bfloat16):
    monkeypatch.setenv(precision.ENV, bfloat16)
    # the file was decoded in float32; a CPU with bfloat16 decodes token-only fields in it (``precision``)
    token_tolerance = 1e-2 if precision.bfloat16_on_cpu() else 1e-4
    out = decompress_file(GOLDEN, tmp_path / "back.nc", progress=False)
    with xr.open_dataset(out) as back, xr.open_dataset(DATA / "golden_decoded.nc") as then, \
            xr.open_dataset(DATA / "golden_source.nc") as source:
        assert list(back.data_vars) == ["u", "v", "scalar"]
        for v in back.data_vars:
            a, b = back[v].values, then[v].values
            assert np.array_equal(np.isnan(a), np.isnan(source[v].values)) and np.array_equal(np.isnan(a), np.isnan(b))
            if v in BOUNDS:  # float64 reconstruction: at most the last bit of a float32 may differ on another CPU
                assert np.nanmax(np.abs(a - b) - np.spacing(np.abs(b))) <= 0
                assert np.nanmax(np.abs(a - source[v].values)) <= BOUNDS[v]
            else:  # token-only
                assert np.nanmax(np.abs(a - b)) <= token_tolerance * float(np.nanmax(b) - np.nanmin(b))
    info = inspect_file(GOLDEN)
    assert info["format_version"] == 3 and info["tokens"]["units_without"] == 4  # u and v went without tokens
    assert info["variables"]["v"]["residual_coders"] == {"integer-lorenzo": 1, "sz3": 1}


def test_bundling_a_new_tokenizer_keeps_the_files_of_the_old_one_decoding(tmp_path, monkeypatch):
    """What `make pretrained` does (``bundle``), in a scratch package: the golden file's model is bundled,
    then a newly trained one replaces it."""
    sha = inspect_file(GOLDEN)["model"]["sha256"]
    header = {"model": {"sha256": sha}}  # (the golden file also remembers where its model was, on its maker's disk)
    golden_model = paths.retired_tokenizer(sha)  # retired in the package itself since
    monkeypatch.setattr(paths, "RETIRED_TOKENIZERS", tmp_path / "pretrained" / "retired")
    monkeypatch.setattr(paths, "BUNDLED_TOKENIZER", tmp_path / "pretrained" / "tokenizer.pt")
    (tmp_path / "pretrained").mkdir()
    shutil.copyfile(golden_model, paths.BUNDLED_TOKENIZER)
    run = tmp_path / "run"
    run.mkdir()
    tiny_tokenizer(run / "tokenizer.pt")
    (run / "metrics.json").write_text('{"steps": 12, "train_time_s": 3.4}')
    (run / "metrics.csv").write_text("step,split\n")
    provenance = bundle(run, "python -m dynfield.train experiment=tiny", note="a test")
    new = codec.model_for({"model": {"sha256": provenance["weights_sha256"]}}, None, GOLDEN)
    assert codec.weights_hash(new) == provenance["weights_sha256"] != sha
    assert (provenance["command"], provenance["steps"], provenance["note"]) == (
        "python -m dynfield.train experiment=tiny", 12, "a test")
    assert json.loads((tmp_path / "pretrained" / "provenance.json").read_text()) == provenance
    assert (tmp_path / "pretrained" / "retired" / f"{sha[:16]}.pt").is_file()
    # the golden file's model is no longer the bundled one, and the file still decodes as it did
    assert codec.weights_hash(codec.model_for(header, None, GOLDEN)) == sha
    out = decompress_file(GOLDEN, tmp_path / "back.nc", progress=False)
    with xr.open_dataset(out) as back, xr.open_dataset(DATA / "golden_decoded.nc") as then:
        assert np.nanmax(np.abs(back["u"].values - then["u"].values)) <= 1e-6


def damaged_copies(n, seed):
    """(kind, bytes) of n damaged versions of the golden file: byte flips, truncations, header edits."""
    data = GOLDEN.read_bytes()
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = ("flip", "truncate", "header")[i % 3]
        b = bytearray(data)
        if kind == "flip":
            for pos in rng.integers(0, len(b), size=rng.integers(1, 4)):
                b[pos] ^= 1 << int(rng.integers(8))
        elif kind == "truncate":
            b = b[: int(rng.integers(0, len(b)))]
        else:  # the magic, version and header length and the header itself sit in the first bytes
            pos = int(rng.integers(0, 200))
            b[pos] = (b[pos] + int(rng.integers(1, 256))) % 256
        yield kind, bytes(b)


@pytest.fixture
def one_model_load(monkeypatch):
    """The bundled model loaded once for all cases (decoding does not change it)."""
    monkeypatch.setattr(codec, "_load_tokenizer", functools.lru_cache(codec._load_tokenizer))


def fuzz(tmp_path, n, seed):
    for k, (kind, data) in enumerate(damaged_copies(n, seed)):
        path, out = tmp_path / "damaged.dfz", tmp_path / "out.nc"
        path.write_bytes(data)
        with pytest.raises(CodecError) as err:
            decompress_file(path, out, progress=False)
        message = str(err.value)
        assert message and "\n" not in message, f"case {k} ({kind}): {message!r}"
        assert not out.exists(), f"case {k} ({kind}) left an output"
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_damaged_files_are_refused_in_one_line(tmp_path, one_model_load):
    fuzz(tmp_path, 60, seed=0)


@pytest.mark.slow
def test_a_thousand_damaged_files_are_refused_in_one_line(tmp_path, one_model_load):
    fuzz(tmp_path, 1000, seed=1)


def test_the_golden_prior_coded_file_decodes_to_its_tokens(tmp_path):
    """Tokens range coded under a prior's probabilities come back the same on this machine as where they were
    coded (tests/data/make_golden_prior.py): the counts do not depend on the processor or the BLAS."""
    from dynfield.codec.chunks import Layout
    from dynfield.codec.container import ContainerReader
    from dynfield.codec.prior_coding import prior_for

    golden, prior = DATA / "golden_prior.dfz", DATA / "golden_prior.pt"
    expected = np.load(DATA / "golden_prior_tokens.npz")
    with ContainerReader(golden) as reader:
        layout = Layout(reader.header)
        layout.prior_coder = prior_for(reader.header, prior, golden)
        seen = set()
        for payload in reader.chunks():
            g, i, streams, _ = layout.parse(payload)
            for unit, t in zip(layout.units(g), layout.tokens(g, streams)):
                if t is not None:
                    key = f"{unit[0]}_{i}"
                    assert np.array_equal(t.grain, expected[f"{key}_grain"])
                    assert all(np.array_equal(c, expected[f"{key}_codes{k}"]) for k, c in enumerate(t.codes))
                    seen.add(key)
    assert seen == {"scalar_0", "scalar_1"}
    out = decompress_file(golden, tmp_path / "back.nc", checkpoint=DATA / "golden_prior_tokenizer.pt", prior=prior,
                          progress=False)
    with xr.open_dataset(out) as back, xr.open_dataset(DATA / "golden_prior_source.nc") as source:
        assert np.abs(back["u"].values - source["u"].values).max() <= 0.01
