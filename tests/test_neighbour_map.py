import pytest
import torch

from conftest import make_tokens

from dynfield.models.neighbour_map import NeighbourMap
from dynfield.models.sequences import CODE, make_scan

# a 2 x 3 grid of regions, factors (4, 8): region (0, 1) and (1, 2) fine (2 x 2 cells each), the others coarse
GRAIN = torch.tensor([[[1, 0, 1], [1, 1, 0]]])
SHAPE = (16, 24)


def painted(order, periodic=False, size=3):
    tokens = make_tokens(GRAIN, (4, 8), SHAPE, B=1)
    scan = make_scan(order, (4, 8), SHAPE)
    seq = scan.encode(tokens)
    neighbours = NeighbourMap(scan, 1, "cpu", size, periodic)
    b, t = ((seq.kind == CODE) & seq.valid).nonzero(as_tuple=True)
    neighbours.paint(b, t, seq.level[b, t], seq.row[b, t], seq.col[b, t], seq.code[b, t])
    return tokens, seq, neighbours


def index_of(seq, level, row, col):
    hit = (seq.kind[0] == CODE) & (seq.level[0] == level) & (seq.row[0] == row) & (seq.col[0] == col)
    return int(hit.nonzero()[0, 0])


def look(neighbours, level, row, col, before):
    code, lvl, known = neighbours.gather(*(torch.tensor([[v]]) for v in (level, row, col, before)))
    return code[0, 0].view(3, 3), lvl[0, 0].view(3, 3), known[0, 0].view(3, 3)


def test_a_fine_cell_sees_its_coarse_and_fine_neighbours_where_they_came_earlier():
    tokens, seq, neighbours = painted("coarse_to_fine")
    fine, coarse = tokens.codes
    # fine cell (1, 2): the lower left cell of fine region (0, 1); every coarse code came before it
    at = index_of(seq, 0, 1, 2)
    code, level, known = look(neighbours, 0, 1, 2, at)
    # row 0: fine cells (0, 1) [coarse region (0, 0)], (0, 2) and (0, 3) [region (0, 1), fine, earlier]
    assert code[0].tolist() == [coarse[0, 0, 0], fine[0, 0, 2], fine[0, 0, 3]]
    assert level[0].tolist() == [1, 0, 0] and known[0].all()
    # the middle row: the coarse region to the left, the cell itself (not yet), its right neighbour (later)
    assert code[1, 0] == coarse[0, 0, 0] and known[1].tolist() == [True, False, False]
    # row 2 lies in coarse regions (1, 0) and (1, 1): known, at level 1
    assert code[2].tolist() == [coarse[0, 1, 0], coarse[0, 1, 1], coarse[0, 1, 1]] and known[2].all()
    assert level[2].tolist() == [1, 1, 1]


def test_a_coarse_region_sees_a_fine_neighbour_by_its_centre_cell_and_nothing_beyond_the_edge():
    tokens, seq, neighbours = painted("raster")
    fine, coarse = tokens.codes
    at = index_of(seq, 1, 1, 1)  # coarse region (1, 1): fine region (0, 1) above it came earlier in raster
    code, level, known = look(neighbours, 1, 1, 1, at)
    assert code[0, 1] == fine[0, 1, 3] and level[0, 1] == 0 and known[0, 1]  # its centre: fine cell (1, 3)
    assert code[1, 0] == coarse[0, 1, 0] and known[1, 0]
    assert not known[2].any()  # below the last row of regions
    assert not known[1, 1:].any()  # itself, and fine region (1, 2) after it


def test_neighbourhoods_wrap_around_on_periodic_fields():
    tokens, seq, neighbours = painted("raster", periodic=True)
    fine, coarse = tokens.codes
    code, _, known = look(neighbours, 1, 0, 0, seq.valid.shape[1])  # seen after the whole sequence
    assert known.all()
    assert code[0, 0] == fine[0, 3, 5]  # above left, across both edges: fine region (1, 2), centre cell (3, 5)
    assert code[1, 0] == coarse[0, 0, 2] and code[2, 2] == coarse[0, 1, 1]  # left: region (0, 2)
    _, _, bounded = look(painted("raster")[2], 1, 0, 0, seq.valid.shape[1])
    assert not bounded[0].any() and not bounded[:, 0].any() and bounded[1:, 1:].all()


@pytest.mark.parametrize("order", ["raster", "coarse_to_fine"])
@pytest.mark.parametrize("place", [(0, 1, 2), (1, 0, 0)])
def test_the_prior_cost_of_a_token_does_not_depend_on_later_codes(order, place):
    from test_prior import tiny

    prior = tiny(order, shape=SHAPE, neighbourhood=5, locality=True, rotary=True)
    tokens = make_tokens(GRAIN, (4, 8), SHAPE, B=1)
    seq = prior.scan.encode(tokens)
    at = index_of(seq, *place)
    changed = prior.scan.encode(tokens)
    later = (changed.kind[0] == CODE) & (torch.arange(changed.code.shape[1]) > at)
    changed.code[0, later] = (changed.code[0, later] + 1) % 32
    with torch.no_grad():
        (decided, before), (moved, after) = prior._nats(seq), prior._nats(changed)
    # step t predicts token t + 1: the steps up to the one predicting token `at` pay the same,
    # for its code and for the position decisions (which see the regions around theirs)
    assert torch.equal(before[0, :at], after[0, :at]) and torch.equal(decided[0, :at + 1], moved[0, :at + 1])
    assert not torch.equal(before[0, at:], after[0, at:])
    if (seq.choice[0, at + 2:] >= 0).any():  # free decisions after it (none at coarse-to-fine's finest level)
        assert not torch.equal(decided[0, at + 1:], moved[0, at + 1:])
