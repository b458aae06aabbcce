import pytest
import torch
from conftest import make_tokens, same_tokens

from dynfield.models import Tokens
from dynfield.models.tokens import repeat_cells


def test_count_of_a_hand_made_grain_map():
    # a 2 x 3 grid of 8x8 regions at factors (4, 8): a fine region holds 4 codes, a coarse one 1
    grain = torch.tensor([[[0, 1, 1], [1, 0, 1]], [[1, 1, 1], [1, 1, 1]]])
    t = make_tokens(grain=grain, shape=(16, 24), B=2)
    assert t.count().tolist() == [2 * 4 + 4, 6]
    assert t.fine_fraction().tolist() == pytest.approx([2 / 6, 0.0])
    assert t.level_fractions().flatten().tolist() == pytest.approx([2 / 6, 4 / 6, 0.0, 1.0])
    assert t.padded_shape == (16, 24)
    three = make_tokens(grain=torch.tensor([[[0, 1], [2, 2]]]), factors=(2, 4, 8), shape=(16, 16), B=1)
    assert three.count().tolist() == [16 + 4 + 1 + 1]


def with_depth(t, depth, stages, seed=1):
    """`t` with a depth map and residual codes of `stages` stages where the depth asks for them."""
    g = torch.Generator().manual_seed(seed)
    residual = []
    for k, f in enumerate(t.factors):
        cell_depth = repeat_cells(depth, t.factors[-1] // f)
        used = t.level_mask(k)[:, None] & (torch.arange(1, stages)[None, :, None, None] < cell_depth[:, None])
        residual.append(torch.where(used, torch.randint(t.codebook_size, used.shape, generator=g), -1))
    return Tokens(t.grain, t.codes, t.factors, t.shape, t.codebook_size, depth=depth, residual=residual)


def test_depth_adds_codes_per_stage_and_is_validated():
    grain = torch.tensor([[[0, 1, 1], [1, 0, 1]]])
    depth = torch.tensor([[[3, 1, 2], [1, 2, 3]]])
    t = with_depth(make_tokens(grain=grain, shape=(16, 24), B=1), depth, stages=3).validate()
    # fine regions: 4 cells x depth (3 and 2); coarse regions: 1 cell x depth (1, 2, 1, 3)
    assert t.count().tolist() == [4 * 3 + 4 * 2 + 1 + 2 + 1 + 3]
    assert t.stages == 3 and [c.shape[1] for c in t.stage_codes()] == [3, 3]
    assert same_tokens(t.to("cpu"), t) and torch.equal(t.to("cpu").depth, depth)
    bad = with_depth(make_tokens(grain=grain, shape=(16, 24), B=1), depth, stages=3)
    bad.residual[1][0, 1, 0, 1] = 5  # a third-stage code in a depth-1 coarse region
    with pytest.raises(ValueError, match="disagree with the depth map"):
        bad.validate()
    deep = with_depth(make_tokens(grain=grain, shape=(16, 24), B=1), depth, stages=3)
    deep.depth = depth + 1
    with pytest.raises(ValueError, match="depths must lie in"):
        deep.validate()
    with pytest.raises(ValueError, match="single-stage"):
        t.require_single_stage("this prior")


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
