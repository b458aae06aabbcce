"""Range coding of tokens: exact round trips, and code lengths close to the ideal."""

import numpy as np
import pytest
import torch

from dynfield.codec import TokenModel, compress_field, decompress_field
from dynfield.codec.entropy import (
    FieldTokens,
    SymbolReader,
    SymbolWriter,
    TokenCounts,
    decode_tokens,
    encode_tokens,
    entropy_bits,
    information_bits,
    level_masks,
    token_information_bits,
)
from dynfield.codec.field import tokens_to_numpy
from dynfield.models import DQVAE, precision

FACTORS = (2, 4, 8)


def random_tokens(rng, grid, codebook_size, stages=1, p_levels=(0.5, 0.3, 0.2)):
    grain = rng.choice(len(FACTORS), size=grid, p=p_levels)
    depth = rng.integers(1, stages + 1, size=grid)
    codes = []
    for mask, f in zip(level_masks(grain, FACTORS), FACTORS):
        cell_depth = depth.repeat(FACTORS[-1] // f, 0).repeat(FACTORS[-1] // f, 1)
        c = [np.where(mask & (cell_depth > s), rng.integers(0, 7, size=mask.shape) ** 2 % codebook_size, -1)
             for s in range(stages)]  # skewed usage
        codes.append(np.stack(c))
    return FieldTokens(grain, depth, codes)


@pytest.mark.parametrize("stages", [1, 3])
def test_tokens_round_trip_and_cost_close_to_ideal(stages):
    rng = np.random.default_rng(0)
    N = 64
    fields = [random_tokens(rng, (6, 5), N, stages) for _ in range(20)]
    counts = TokenCounts(len(FACTORS), N, stages)
    for t in fields:
        counts.add(t, FACTORS)
    model = TokenModel.from_histograms(counts.grain, counts.codes, counts.depth)
    model = TokenModel.from_json(model.to_json())  # what the file stores is what the decoder uses
    for t in fields:
        data = encode_tokens(t, FACTORS, model)
        back = decode_tokens(data, t.grain.shape, FACTORS, model)
        assert np.array_equal(back.grain, t.grain) and np.array_equal(back.depth, t.depth)
        assert all(np.array_equal(a, b) for a, b in zip(back.codes, t.codes))
        ideal = token_information_bits(t, FACTORS, model)
        assert ideal <= 8 * len(data) <= ideal + 64  # a range coder's flush costs at most two words
    # deeper stages are coded only where the depth map asks: every stored code is one the decoder reads
    stored = sum(int((c >= 0).sum()) for t in fields for c in t.codes)
    assert stored == sum(int(sum(u.sum() for level in t.used(FACTORS) for u in level)) for t in fields)


def test_single_stage_models_of_older_files_still_read():
    # before residual stages a model stored one count list per level and no depth counts
    old = {"grain": [3, 2, 1], "codes": [[1] * 8, [2] * 8, [3] * 8]}
    model = TokenModel.from_json(old)
    assert model.stages == 1 and model.codes[2][0].tolist() == [3] * 8


def test_trivial_distributions_cost_nothing():
    w = SymbolWriter()
    w.add(np.zeros(100, dtype=int), [5])
    assert w.bytes() == b""
    assert SymbolReader(b"").take([5], 100).tolist() == [0] * 100


def test_several_models_share_one_stream():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 3, 500), rng.integers(0, 40, 300)
    ca, cb = np.bincount(a, minlength=3), np.bincount(b, minlength=40) + 1
    w = SymbolWriter()
    w.add(a, ca)
    w.add(b, cb)
    r = SymbolReader(w.bytes())
    assert np.array_equal(r.take(ca, 500), a) and np.array_equal(r.take(cb, 300), b)


def test_entropy_and_information():
    hist = np.array([2, 2, 4])
    assert np.isclose(entropy_bits(hist), 8 * 1.5)  # H = 1.5 bits
    assert np.isclose(information_bits(np.array([0, 2]), hist), 2 + 1)


@pytest.mark.parametrize("stages", [1, 3])
def test_compress_field_round_trip(stages, monkeypatch):
    monkeypatch.setenv(precision.ENV, "0")  # float32, to compare with the model's own encode and decode
    torch.manual_seed(0)
    model = DQVAE(in_channels=2, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, periodic=True, stages=stages)
    model.train()
    model(torch.randn(4, 2, 16, 16))  # initialises the codebook from data, so codes get used
    model.eval()
    x = torch.randn(3, 2, 12, 20)
    out = compress_field(model, x, fine_ratio=0.5)
    assert out["shape"] == (12, 20) and len(out["strings"][0]) == 3
    # the default entropy model comes from the codebook usage: a receiver holding
    # only the weights derives the same counts and decodes the same tokens
    receiver = DQVAE(**model.config)
    receiver.load_state_dict(model.state_dict())
    receiver.eval()
    assert all(np.array_equal(a, b) for a, b in zip(TokenModel.from_quantizer(receiver).codes[0],
                                                   TokenModel.from_quantizer(model).codes[0]))
    recon = decompress_field(receiver, out["strings"], out["shape"])
    assert torch.equal(recon, model.decode(model.encode(x, fine_ratio=0.5)))


def test_tokens_stopped_at_a_shallower_depth_are_those_encoded_at_it():
    torch.manual_seed(0)
    model = DQVAE(in_channels=1, factors=(2, 4), hidden=8, code_dim=8, codebook_size=32, stages=3, periodic=False)
    x = torch.randn(2, 1, 16, 24)
    model.train()
    model(x)  # codebooks from data
    model.eval()
    full = tokens_to_numpy(model.encode(x, fine_ratio=0.5))
    for depth in (1, 2):
        encoded = tokens_to_numpy(model.encode(x, fine_ratio=0.5, depth=depth))
        for a, b in zip(full, encoded):
            cut = a.shallower(depth)
            assert np.array_equal(cut.grain, b.grain) and np.array_equal(cut.depth, b.depth)
            assert all(np.array_equal(c, d) for c, d in zip(cut.codes, b.codes))
    with pytest.raises(ValueError, match="nested"):
        full[0]._replace(nested=True).shallower(1)
