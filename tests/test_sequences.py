import pytest
import torch

from conftest import make_tokens, same_tokens

from dynfield.models.sequences import CODE, END, PASS, START, make_scan

FIELDS = ["level", "kind", "row", "col", "code", "choice", "allowed", "valid"]
ORDERS = ["coarse_to_fine", "raster"]
FACTORS = [(8,), (4, 8), (2, 4, 8)]


def walk(scan, choose, n):
    """Drive a cursor: choose(t, allowed_nV) gives the choices before token t, codes are t-dependent."""
    cursor = scan.cursor(n, "cpu")
    t = 0
    while not cursor.finished:
        t += 1
        cursor.advance(choose(t, cursor.options()))
        cursor.emit(torch.full((n,), t % 7))
    return cursor.sequence()


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("factors", FACTORS)
@pytest.mark.parametrize("grain", ["random", "coarse", "fine"])
@pytest.mark.parametrize("nested", [False, True])
def test_round_trip_and_the_cursor_walks_the_same_sequence(order, factors, grain, nested):
    tokens = make_tokens(grain, factors, nested=nested)  # (40, 56) with f_K = 8: a 5 x 7 grid, no padding
    scan = make_scan(order, factors, tokens.shape, nested=nested)
    seq = scan.encode(tokens)
    assert same_tokens(scan.decode(seq, tokens.codebook_size).validate(), tokens)
    K = len(factors)
    if order == "raster":  # a start (nested: and an end)
        extra = 1 + int(nested and K > 1)
    elif nested:  # a start and an end per level, and a pass where a region stops above the finest level
        extra = 2 * K + (tokens.grain > 0).flatten(1).sum(1)
    else:  # a start and an end per level, and a pass at each level coarser than a region's grain
        extra = 2 * K + (K - 1 - tokens.grain).flatten(1).sum(1)
    assert torch.equal(seq.valid.sum(1), tokens.count() + extra)
    # every free decision picks one of its (at least two) candidates
    free = seq.choice >= 0
    assert bool(seq.allowed[free].gather(1, seq.choice[free][:, None]).all())
    assert bool((seq.allowed[free].sum(1) >= 2).all()) and not seq.allowed[~free].any()
    # sampling walks through the same rules: fed the true choices, the cursor lists the same sequence
    walked = walk(scan, lambda t, allowed: seq.choice[:, t].clamp(min=0), len(seq.level))
    walked.code = torch.where(walked.kind == CODE, seq.code, -1)  # walk() emits dummy codes
    for name in FIELDS:
        assert torch.equal(getattr(walked, name), getattr(seq, name)), name


def test_padding_is_at_the_end_only():
    grain = torch.stack([torch.full((5, 7), 1), torch.zeros(5, 7, dtype=torch.long)])
    seq = make_scan("coarse_to_fine", (4, 8), (40, 56)).encode(make_tokens(grain))
    assert seq.valid.shape == (2, 4 + 35 + 35 * 4)  # 4 markers; all fine: 35 passes, then 35 x 4 codes
    assert int(seq.valid[0].sum()) == 4 + 35 and bool(seq.valid[1].all())
    L = int(seq.valid[0].sum())
    assert bool(seq.valid[0, :L].all()) and not seq.valid[0, L:].any()
    pad = ~seq.valid
    assert bool((seq.code[pad] == -1).all() & (seq.choice[pad] == -1).all()) and not seq.allowed[pad].any()


def test_coarse_to_fine_layout():
    """Levels coarsest first, framed by markers; each open region is taken or passed, its cells follow."""
    grain = torch.tensor([[[1, 0, 1], [0, 0, 1]]])
    tokens = make_tokens(grain, (4, 8), (16, 24))
    seq = make_scan("coarse_to_fine", (4, 8), (16, 24)).encode(tokens)
    kind, level, choice = seq.kind[0].tolist(), seq.level[0].tolist(), seq.choice[0].tolist()
    assert kind == [START, CODE, PASS, CODE, PASS, PASS, CODE, END, START] + [CODE] * 12 + [END]
    assert level == [1] * 8 + [0] * 14
    # coarse: a take (0) or a pass (1) before each of the 6 regions; the end after the last is forced
    assert choice[:8] == [-1, 0, 1, 0, 1, 1, 0, -1]
    assert seq.allowed[0, 1:7].all() and not seq.allowed[0, 7].any()
    # a pass sits at its region's place in the coarse grid
    assert (seq.row[0, 2].item(), seq.col[0, 2].item()) == (0, 1)
    assert (seq.row[0, 5].item(), seq.col[0, 5].item()) == (1, 1)
    # the finest level is all forced; regions 1, 3, 4 in raster order, 4 cells each in raster order
    assert choice[8:] == [-1] * 14
    rows, cols = seq.row[0, 9:21].tolist(), seq.col[0, 9:21].tolist()
    assert list(zip(rows, cols))[:5] == [(0, 2), (0, 3), (1, 2), (1, 3), (2, 0)]
    assert seq.code[0, [1, 3, 6]].tolist() == tokens.codes[1][0][grain[0] == 1].tolist()
    assert seq.allowed.shape[-1] == 2


@pytest.mark.parametrize("grain, choice", [("fine", 1), ("coarse", 0)])
def test_coarse_to_fine_forced_decisions(grain, choice):
    """One free decision per region at the coarse level, all passes (all fine) or all takes (all
    coarse); the coarse level's end after the last region is forced, and so is all of level 0."""
    seq = make_scan("coarse_to_fine", (4, 8), (40, 56)).encode(make_tokens(grain, B=1))
    free = seq.choice >= 0
    assert int(free.sum()) == 35 and bool((seq.choice[free] == choice).all())
    assert bool((seq.level[free] == 1).all())


def test_raster_with_one_level_is_the_plain_raster_scan():
    tokens = make_tokens("random", (8,), (40, 56))
    seq = make_scan("raster", (8,), (40, 56)).encode(tokens)
    assert seq.kind[:, 0].eq(START).all() and seq.kind[:, 1:].eq(CODE).all()
    assert torch.equal(seq.code[:, 1:], tokens.codes[0].flatten(1))
    assert not (seq.choice >= 0).any()


def test_raster_decides_each_regions_grain():
    tokens = make_tokens("random", (2, 4, 8), (16, 16), B=2)
    seq = make_scan("raster", (2, 4, 8), (16, 16)).encode(tokens)
    first_cells = seq.choice >= 0
    assert torch.equal(first_cells.sum(1), torch.tensor([4, 4]))
    assert torch.equal(seq.choice[first_cells].view(2, 4), tokens.grain.flatten(1))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("factors", [(4, 8), (2, 4, 8)])
@pytest.mark.parametrize("nested", [False, True])
def test_random_walks_give_valid_tokens_and_every_region_takes_every_level(order, factors, nested):
    scan = make_scan(order, factors, (16, 24), nested=nested)
    g = torch.Generator().manual_seed(0)

    def uniform(t, allowed):
        return torch.multinomial(allowed.float() + 1e-30 * ~allowed.any(1, keepdim=True), 1, generator=g)[:, 0]

    n = 64
    seq = walk(scan, uniform, n)
    tokens = scan.decode(seq, 7).validate()
    reencoded = scan.encode(tokens)
    for name in FIELDS:
        assert torch.equal(getattr(reencoded, name), getattr(seq, name)), name
    taken = torch.nn.functional.one_hot(tokens.grain.flatten(1), len(factors)).sum(0)  # (R, K)
    assert bool((taken > 0).all()), taken


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(shape=(48, 56)), "shape"),
        (dict(factors=(2, 8)), "factors"),
    ],
)
def test_tokens_of_another_tokenizer_are_refused(change, message):
    scan = make_scan("coarse_to_fine", (4, 8), (40, 56))
    tokens = make_tokens("random", change.get("factors", (4, 8)), change.get("shape", (40, 56)))
    with pytest.raises(ValueError, match=message):
        scan.encode(tokens)


def test_nested_coarse_to_fine_codes_the_coarse_level_whole_then_refines():
    """Nested: every region's coarse code first, without decisions; then each region refines or stops."""
    grain = torch.tensor([[[1, 0, 1], [0, 0, 1]]])
    tokens = make_tokens(grain, (4, 8), (16, 24), nested=True)
    seq = make_scan("coarse_to_fine", (4, 8), (16, 24), nested=True).encode(tokens)
    kind, level, choice = seq.kind[0].tolist(), seq.level[0].tolist(), seq.choice[0].tolist()
    assert kind == [START] + [CODE] * 6 + [END, START, PASS] + [CODE] * 4 + [PASS] + [CODE] * 8 + [PASS, END]
    assert level == [1] * 8 + [0] * 17
    assert choice[:8] == [-1] * 8  # the coarse level is forced
    # regions 0, 2 and 5 stop (1), regions 1, 3 and 4 take the fine level (0); the end is forced
    assert choice[8:] == [-1, 1, 0, -1, -1, -1, 1, 0, -1, -1, -1, 0, -1, -1, -1, 1, -1]
    assert seq.code[0, 1:7].tolist() == tokens.codes[1][0].flatten().tolist()


def test_nested_raster_decides_after_each_coarser_level_whether_to_go_finer():
    grain = torch.tensor([[[1, 0], [0, 1]]])
    tokens = make_tokens(grain, (4, 8), (16, 16), nested=True)
    seq = make_scan("raster", (4, 8), (16, 16), nested=True).encode(tokens)
    assert seq.kind[0].tolist() == [START] + [CODE] * 12 + [END]
    assert seq.level[0].tolist() == [1, 1, 1] + [0] * 4 + [1] + [0] * 4 + [1, 0]
    free = seq.choice[0] >= 0
    assert seq.choice[0][free].tolist() == [0, 1, 1, 0]  # stop, finer, finer, stop (to the end)


@pytest.mark.parametrize("nested", [False, True])
def test_nested_and_alternative_tokens_are_not_mistaken(nested):
    scan = make_scan("raster", (4, 8), (40, 56), nested=nested)
    with pytest.raises(ValueError, match="nested tokens|one grain per region"):
        scan.encode(make_tokens("random", nested=not nested))


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="unknown autoregressive order"):
        make_scan("bidirectional", (4, 8), (40, 56))
