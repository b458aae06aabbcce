import json
import math

import pytest
import torch

from dynfield.models.prior import ARPrior, Sampler, filter_logits
from conftest import make_tokens
from test_masked_prior import diagonal_tokens
from test_sequences import FIELDS, ORDERS

SHAPE = (40, 56)  # padded 40 x 56, a 5 x 7 grid of regions at f_K = 8


# where the tokens lie: no bias, the distance bias of the content transformer, every bias and rotary
# embeddings, and the neighbours' codes handed to the content transformer (on a grid that wraps around)
LOCALITY = [{}, {"locality": True}, {"locality": True, "position_locality": True, "rotary": True},
            {"locality": True, "rotary": True, "neighbourhood": 3, "periodic": True}]


def tiny(order="coarse_to_fine", factors=(4, 8), shape=SHAPE, codebook_size=32, **kw):
    torch.manual_seed(0)
    kw = dict(dim=32, depth=2, heads=2) | kw
    return ARPrior(order=order, factors=factors, shape=shape, codebook_size=codebook_size, **kw)


def stepwise_bits(prior, tokens):
    """Code length by teacher forcing the sampling walk (cached one-token steps), and the walked sequence."""
    seq = prior.scan.encode(tokens)
    cost = torch.zeros(tokens.batch_size, dtype=torch.float64)

    def pay(target, logits):
        paid = target >= 0
        cost[paid] -= logits.double().log_softmax(-1)[paid, target[paid]]
        return target.clamp(min=0)

    walked = prior.walk(tokens.batch_size, lambda logits, t, rows: pay(seq.choice[:, t + 1], logits),
                        lambda logits, t, rows: pay(seq.code[:, t + 1], logits))
    return cost / math.log(2), walked, seq


@pytest.mark.parametrize("order", ORDERS)
def test_forward_objective(order):
    prior = tiny(order)
    tokens = make_tokens("random")
    out = prior(tokens)
    assert torch.equal(out.count, tokens.count())
    assert out.loss.item() == pytest.approx((out.parts["position"] + out.parts["code"]).item())
    # the loss is nats per code token, bits are per sample: the same total
    assert (out.loss * out.count.sum()).item() == pytest.approx(out.bits.sum().item() * math.log(2), rel=1e-5)
    assert out.parts["position"] > 0 and out.bits.shape == (3,)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in prior.parameters() if p.grad is not None)


@pytest.mark.parametrize("order", ORDERS)
def test_a_padded_sample_costs_what_it_costs_alone(order):
    prior = tiny(order)
    short = make_tokens("coarse", B=1, seed=1)
    both = make_tokens(torch.stack([short.grain[0], torch.zeros_like(short.grain[0])]), seed=1)
    both.codes[1][0] = short.codes[1][0]  # sample 0 of the batch is `short`, padded next to an all-fine one
    assert prior.scan.encode(both).valid[0].sum() < prior.scan.encode(both).valid.shape[1]
    alone, batched = prior(short).bits, prior(both).bits
    assert batched[0].item() == pytest.approx(alone[0].item(), rel=1e-5)
    assert prior.bits(both)[0].item() == pytest.approx(prior.bits(short)[0].item(), rel=1e-5)


@pytest.mark.parametrize(
    "order, factors, knobs",
    [
        ("coarse_to_fine", (4, 8), {}),
        ("coarse_to_fine", (2, 4, 8), dict(temperature=0.7, top_k=5)),
        ("raster", (4, 8), dict(top_p=0.9)),
        ("raster", (8,), {}),
    ],
)
@pytest.mark.parametrize("locality", LOCALITY)
def test_cached_sampling_draws_exactly_what_rerunning_the_prefix_draws(order, factors, knobs, locality):
    prior = tiny(order, factors, shape=(16, 24), **locality)
    cached = prior.walk(3, *[Sampler("cpu", 7, **knobs)] * 2)
    rerun = prior.walk(3, *[Sampler("cpu", 7, **knobs)] * 2, use_cache=False)
    for name in FIELDS:
        assert torch.equal(getattr(cached, name), getattr(rerun, name)), name
    tokens = prior.sample(3, seed=7, **knobs)
    assert torch.equal(tokens.grain, prior.scan.decode(cached, 32).grain)


def test_samples_are_valid_seeded_and_the_config_rebuilds_the_prior():
    prior = tiny("coarse_to_fine", (2, 4, 8), dropout=0.1, code_dim=3).train()
    prior.code_emb.set_vectors(torch.randn(32, 3))  # saved with the weights
    tokens = prior.sample(5, seed=3)
    assert prior.training  # sampling leaves the mode alone
    assert tokens.validate().shape == SHAPE and tokens.factors == (2, 4, 8) and tokens.batch_size == 5
    assert torch.equal(prior.sample(5, seed=3).grain, tokens.grain)
    assert not torch.equal(prior.sample(5, seed=4).codes[2], tokens.codes[2])
    rebuilt = ARPrior(**json.loads(json.dumps(prior.config)))
    rebuilt.load_state_dict(prior.state_dict())
    assert torch.equal(rebuilt.bits(tokens), prior.bits(tokens))


@pytest.mark.parametrize(
    "order, factors, code_dim, nested",
    [("coarse_to_fine", (4, 8), 0, False), ("coarse_to_fine", (2, 4, 8), 0, False), ("raster", (4, 8), 0, False),
     ("raster", (4, 8), 5, False), ("coarse_to_fine", (2, 4, 8), 0, True), ("raster", (2, 4, 8), 0, True)],
)
@pytest.mark.parametrize("locality", LOCALITY)
def test_bits_is_the_sum_of_the_step_costs_and_deterministic(order, factors, code_dim, nested, locality):
    prior = tiny(order, factors, dropout=0.2, code_dim=code_dim, nested=nested, **locality).train()  # bits: eval
    if code_dim:
        prior.code_emb.set_vectors(torch.randn(32, code_dim))
    tokens = make_tokens("random", factors, nested=nested)
    bits = prior.bits(tokens)
    assert bits.dtype == torch.float64 and torch.equal(bits, prior.bits(tokens)) and prior.training
    stepwise, walked, seq = stepwise_bits(prior, tokens)
    for name in FIELDS:
        assert torch.equal(getattr(walked, name), getattr(seq, name)), name
    assert torch.allclose(bits, stepwise, rtol=1e-5)


def test_forced_positions_cost_nothing():
    # all fine, two levels: the only free decisions are the passes of the 35 regions at the coarse level
    prior = tiny("coarse_to_fine")
    tokens = make_tokens("fine", B=2)
    position, _ = prior._nats(prior.scan.encode(tokens), torch.float64)
    assert position[:, :35].gt(0).all() and not position[:, 35:].any()
    # one level, raster: no position bits at all, the plain VQ transformer
    prior = tiny("raster", (8,))
    tokens = make_tokens("random", (8,))
    out = prior(tokens)
    assert out.parts["position"].item() == 0.0
    assert torch.allclose(prior.bits(tokens), stepwise_bits(prior, tokens)[0], rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
def test_a_tiny_prior_overfits_four_sequences(order):
    prior = tiny(order, shape=(32, 32), codebook_size=16, dim=64, depth=2, heads=2)
    tokens = make_tokens("random", shape=(32, 32), codebook_size=16, B=4, seed=2)
    # nothing tells the four samples apart before their first token: the best a
    # model can do is spread log(4) nats over their first differing choices
    floor = 4 * math.log(4) / tokens.count().sum().item()
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for _ in range(300):
        loss = prior(tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < floor + 0.05, (loss.item(), floor)


@pytest.mark.parametrize(
    "change, message",
    [(dict(shape=(48, 56)), "shape"), (dict(factors=(2, 8)), "factors"), (dict(codebook_size=64), "codebook")],
)
def test_tokens_of_another_tokenizer_are_refused(change, message):
    prior = tiny()
    tokens = make_tokens(
        "random", change.get("factors", (4, 8)), change.get("shape", SHAPE), change.get("codebook_size", 32)
    )
    for call in (prior, prior.bits):
        with pytest.raises(ValueError, match=message):
            call(tokens)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least one block"):
        tiny(depth=1)
    with pytest.raises(ValueError, match="unknown autoregressive order"):
        tiny("bidirectional")
    for knobs, message in [({"temperature": 0.0}, "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 0.0}, "top_p")]:
        with pytest.raises(ValueError, match=message):
            tiny().sample(1, **knobs)


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    # 0.5 + 0.3 = 0.8 reaches top_p = 0.75: the rest goes
    assert torch.isinf(filter_logits(logits, top_p=0.75)).tolist() == [[False, True, False, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, True, False, False]]
    assert torch.allclose(filter_logits(logits, temperature=2.0), logits / 2)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("factors, shape, nested", [((2,), (4, 4), False), ((2, 4), (8, 4), False),
                                                    ((2, 4), (8, 4), True)])
def test_bits_is_a_complete_code(order, factors, shape, nested):
    # Kraft's equality over every valid token set: the prior is a normalised
    # distribution over valid tokens, nothing is spent on invalid grain maps
    from test_masked_prior import all_tokens

    prior = tiny(order, factors=factors, shape=shape, codebook_size=2, neighbourhood=3, nested=nested)
    bits = prior.bits(all_tokens(factors, shape, 2, nested))
    assert torch.allclose(torch.exp2(-bits).sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9)


def test_unigram_code_length_is_the_cost_of_the_training_frequencies():
    from dynfield.evaluation import unigram_code_length

    # training: 4 regions all coarse (level 1), codes 0, 0, 0, 1 at level 1; level 0 unused
    train = {"grain": torch.ones(1, 2, 2, dtype=torch.long),
             "codes": [torch.full((1, 4, 4), -1), torch.tensor([[[0, 0], [0, 1]]])]}
    held_out = {"grain": torch.tensor([[[1, 0]]]), "codes": [torch.tensor([[[-1, -1, 3, -1]]]).view(1, 2, 2),
                                                            torch.tensor([[[1, -1]]])]}
    rate = unigram_code_length(train, held_out, num_levels=2, codebook_size=4)["unigram_bits_per_token"]
    grain = -math.log2(5 / 6) - math.log2(1 / 6)  # counts plus one: level 1 seen 4 times of 4
    codes = -math.log2(1 / 4) - math.log2(2 / 8)  # level 0 code 3 unseen (1 of 4); level 1 code 1 seen once of 4
    assert rate == pytest.approx((grain + codes) / 2)


def train_on_diagonals(prior, steps):
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(steps):
        loss = prior(diagonal_tokens(16, prior.scan.factors, prior.scan.shape, prior.codebook_size, seed=step)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.slow
def test_locality_finds_the_spatial_neighbours_of_codes_far_back_in_the_sequence():
    # Coarse-to-fine lists the fine codes of a region after every coarse code
    # and pass, so a code's spatial neighbours sit anywhere in the sequence;
    # with the distance bias the content transformer finds them sooner. After
    # 220 steps on diagonal codes: 0.80 bit/token without, 0.63 with (the
    # random grain maps cost 0.39 of both); at 60 steps neither has found them.
    factors, shape, N = (2, 4), (16, 32), 8
    held_out = diagonal_tokens(16, factors, shape, N, seed=999)
    rates = {}
    for locality in (False, True):
        prior = tiny("coarse_to_fine", factors=factors, shape=shape, codebook_size=N, locality=locality)
        train_on_diagonals(prior, 220)
        rates[locality] = float(prior.bits(held_out).sum() / held_out.count().sum())
    assert rates[True] < 0.9 * rates[False], rates


@pytest.mark.parametrize("order", ["raster", "coarse_to_fine"])
def test_a_tiny_prior_beats_the_unigram_rate_on_planted_structure(order):
    from dynfield.evaluation import unigram_code_length

    factors, shape, N = (2, 4), (16, 32), 8
    prior = tiny(order, factors=factors, shape=shape, codebook_size=N)
    train = diagonal_tokens(64, factors, shape, N, seed=0)
    held_out = diagonal_tokens(16, factors, shape, N, seed=999)
    train_on_diagonals(prior, 60)

    def split(t):
        return {"grain": t.grain, "codes": list(t.codes)}

    unigram = unigram_code_length(split(train), split(held_out), len(factors), N)["unigram_bits_per_token"]
    rate = float(prior.bits(held_out).sum() / held_out.count().sum())
    assert rate < 0.75 * unigram, (rate, unigram)
