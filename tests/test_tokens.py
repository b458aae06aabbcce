import pytest
import torch
from conftest import make_tokens, same_tokens


@pytest.mark.parametrize("factors", [(4, 8), (2, 4, 8), (8,)])
def test_count_is_tokens_per_region(factors):
    t = make_tokens(factors=factors).validate()
    f_K = factors[-1]
    expected = sum((t.grain == k).flatten(1).sum(1) * (f_K // f) ** 2 for k, f in enumerate(factors))
    assert torch.equal(t.count(), expected)
    assert t.padded_shape == (40, 56)
    assert torch.allclose(t.level_fractions().sum(1), torch.ones(t.batch_size))
    assert torch.allclose(t.fine_fraction(), (t.grain < len(factors) - 1).flatten(1).float().mean(1))


def test_to_keeps_content():
    t = make_tokens()
    u = t.to("cpu")
    assert same_tokens(u, t)
    assert (u.factors, u.shape, u.codebook_size) == (t.factors, t.shape, t.codebook_size)


def _corrupt(name):
    t = make_tokens()
    fine, coarse = t.codes
    if name == "code_at_unused_level":
        i = (t.grain == 0).nonzero()[0]
        coarse[tuple(i)] = 3
    elif name == "missing_code":
        i = (fine >= 0).nonzero()[0]
        fine[tuple(i)] = -1
    elif name == "code_out_of_range":
        i = (coarse >= 0).nonzero()[0]
        coarse[tuple(i)] = t.codebook_size
    elif name == "grain_out_of_range":
        t.grain[0, 0, 0] = 2
    elif name == "shape_mismatch":
        t.shape = (48, 56)
    elif name == "wrong_level_count":
        t.codes = (fine,)
    elif name == "code_shape":
        t.codes = (fine[:, :-1], coarse)
    elif name == "float_grain":
        t.grain = t.grain.float()
    return t


@pytest.mark.parametrize(
    "name, message",
    [
        ("code_at_unused_level", "level 1 codes are set"),
        ("missing_code", "level 0 codes are set"),
        ("code_out_of_range", "must lie in"),
        ("grain_out_of_range", "grain levels"),
        ("shape_mismatch", "grain map is"),
        ("wrong_level_count", "one code tensor per level"),
        ("code_shape", "level 0 codes must be"),
        ("float_grain", "long tensor"),
    ],
)
def test_validate_catches_inconsistent_tokens(name, message):
    make_tokens().validate()
    with pytest.raises(ValueError, match=message):
        _corrupt(name).validate()


def test_validate_rejects_bad_factors():
    t = make_tokens()
    t.factors = (8, 4)
    with pytest.raises(ValueError, match="ascending"):
        t.validate()
