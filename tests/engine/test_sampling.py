"""Sampling: parameters are validated; each row samples by its own parameters and seed only."""

import math

import pytest
import torch

from engine.errors import InvalidRequestError
from engine.sampling import Sampler, SamplingParams, exponential_noise, seed_key

VOCAB = 50


def make_sampler(params: list[SamplingParams], num_slots: int = 8) -> Sampler:
    sampler = Sampler(num_slots, VOCAB, torch.device("cpu"))
    for slot, p in enumerate(params):
        sampler.set_params(slot, p)
    return sampler


def sample(sampler, logits, params, slots=None, steps=None):
    slots = torch.arange(len(params)) if slots is None else torch.as_tensor(slots)
    steps = torch.zeros(len(params), dtype=torch.long) if steps is None else torch.as_tensor(steps)
    return sampler.sample(logits, slots, steps, params)


@pytest.mark.parametrize("bad", [
    dict(max_tokens=0), dict(max_tokens=-3), dict(temperature=-0.1), dict(temperature=2.5),
    dict(temperature=float("nan")), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0),
    dict(min_p=-0.1), dict(min_p=1.1), dict(presence_penalty=2.1), dict(frequency_penalty=-3),
    dict(logit_bias={1: 101.0}), dict(logit_bias={"a": 1.0}), dict(logprobs=21),
    dict(logprobs=-1), dict(seed=1.5), dict(stop_token_ids=("x",)),
    dict(repetition_penalty=0.0), dict(repetition_penalty=11.0),
])
def test_out_of_range_params_are_refused(bad):
    with pytest.raises(InvalidRequestError):
        SamplingParams(**bad)


def test_params_are_frozen_and_normalised():
    p = SamplingParams(logit_bias={3: 1.0, 1: -2.0}, stop_token_ids=[7])
    assert p.logit_bias == ((1, -2.0), (3, 1.0)) and p.stop_token_ids == (7,)
    hash(p)
    with pytest.raises(AttributeError):
        p.temperature = 0.5


def test_greedy_rows_take_the_argmax():
    logits = torch.randn(4, VOCAB)
    params = [SamplingParams(temperature=0.0)] * 4
    out = sample(make_sampler(params), logits, params)
    assert out.token_ids == logits.argmax(-1).tolist()


def test_top_k_1_tiny_top_p_and_full_min_p_are_greedy():
    logits = torch.randn(3, VOCAB)
    params = [SamplingParams(top_k=1, seed=1), SamplingParams(top_p=1e-6, seed=2),
              SamplingParams(min_p=1.0, seed=3)]
    sampler = make_sampler(params)
    for step in range(5):
        out = sample(sampler, logits, params, steps=[step] * 3)
        assert out.token_ids == logits.argmax(-1).tolist()


def test_seeded_rows_ignore_the_rest_of_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(6, VOCAB)
    params = [SamplingParams(temperature=0.9, top_p=0.9, top_k=20, seed=i) for i in range(6)]
    sampler = make_sampler(params)
    together = sample(sampler, logits, params, steps=[3] * 6).token_ids
    for i in range(6):  # alone, and in another order, the row draws the same token
        alone = sample(sampler, logits[i : i + 1], params[i : i + 1], slots=[i], steps=[3])
        assert alone.token_ids == [together[i]]
    order = [5, 2, 0, 4, 1, 3]
    shuffled = sample(sampler, logits[order], [params[i] for i in order], slots=order,
                      steps=[3] * 6).token_ids
    assert shuffled == [together[i] for i in order]


def test_same_seed_same_draw_other_seed_or_step_differs():
    logits = torch.zeros(1, VOCAB)  # uniform: the draw is the noise
    params = [SamplingParams(seed=42)]
    draws = [sample(make_sampler(params), logits, params, steps=[s]).token_ids[0]
             for s in range(20)]
    again = [sample(make_sampler(params), logits, params, steps=[s]).token_ids[0]
             for s in range(20)]
    other = [sample(make_sampler([SamplingParams(seed=43)]), logits, params,
                    steps=[s]).token_ids[0] for s in range(20)]
    assert draws == again
    assert draws != other and len(set(draws)) > 5


def test_samples_follow_the_tempered_distribution():
    torch.manual_seed(0)
    logits = torch.randn(VOCAB) * 2
    params = [SamplingParams(temperature=0.7, seed=7)]
    sampler = make_sampler(params)
    n = 20000  # one step per row: rows share the slot and differ by step
    out = sampler.sample(logits.expand(n, VOCAB), torch.zeros(n, dtype=torch.long),
                         torch.arange(n), params * n)
    freq = torch.bincount(torch.tensor(out.token_ids), minlength=VOCAB) / n
    expected = torch.softmax(logits / 0.7, -1)
    assert (freq - expected).abs().max() < 0.015


def test_top_p_and_top_k_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0] + [-10.0] * (VOCAB - 4)])
    n = 2000
    probs = torch.softmax(logits[0], -1)
    top_p = float(probs[:2].sum()) - 1e-4  # the two best reach it
    for params, support in ((SamplingParams(top_k=3, seed=1), {0, 1, 2}),
                            (SamplingParams(top_p=top_p, seed=1), {0, 1})):
        out = make_sampler([params]).sample(logits.expand(n, VOCAB), torch.zeros(n, dtype=int),
                                            torch.arange(n), [params] * n)
        assert set(out.token_ids) == support


def test_penalties_and_logit_bias():
    logits = torch.zeros(1, VOCAB)
    logits[0, 5], logits[0, 6] = 1.0, 0.5
    params = [SamplingParams(temperature=0.0, presence_penalty=1.0)]
    sampler = make_sampler(params)
    assert sample(sampler, logits, params).token_ids == [5]
    assert sample(sampler, logits, params).token_ids == [6]  # 5 was generated: penalised
    sampler.set_params(0, params[0])  # a new sequence in the slot starts with no counts
    assert sample(sampler, logits, params).token_ids == [5]
    biased = [SamplingParams(temperature=0.0, logit_bias={9: 100.0})]
    assert sample(make_sampler(biased), logits, biased).token_ids == [9]
    frequency = [SamplingParams(temperature=0.0, frequency_penalty=0.3)]
    sampler = make_sampler(frequency)
    assert [sample(sampler, logits, frequency).token_ids[0] for _ in range(4)] == [5, 5, 6, 5]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    positive = torch.full((1, VOCAB), -1.0)
    positive[0, 5], positive[0, 6] = 1.0, 0.6
    negative = torch.full((1, VOCAB), -1.0)
    negative[0, 5], negative[0, 6] = -0.2, -0.3
    params = [SamplingParams(temperature=0.0, repetition_penalty=2.0)]
    for logits in (positive, negative):  # 5 seen: 1.0 -> 0.5 < 0.6; -0.2 -> -0.4 < -0.3
        sampler = make_sampler(params)
        assert [sample(sampler, logits, params).token_ids[0] for _ in range(2)] == [5, 6]
    plain = [SamplingParams(temperature=0.0)]
    assert sample(make_sampler(plain), negative, plain).token_ids == [5]


def test_logprobs_are_the_model_distribution():
    torch.manual_seed(1)
    logits = torch.randn(2, VOCAB)
    params = [SamplingParams(temperature=0.0, logprobs=3), SamplingParams(temperature=0.0)]
    out = sample(make_sampler(params), logits, params)
    ref = torch.log_softmax(logits[0], -1)
    lp = out.logprobs[0]
    assert lp.token_id == out.token_ids[0]
    assert math.isclose(lp.logprob, ref[lp.token_id].item(), rel_tol=1e-5)
    assert [t for t, _ in lp.top] == ref.topk(3).indices.tolist()
    assert out.logprobs[1] is None


def test_noise_is_exponential_and_keyed():
    weyl = torch.arange(4096) * 0x9E3779B1
    keys = torch.tensor([seed_key(s) for s in range(64)])
    noise = exponential_noise(keys, torch.zeros(64, dtype=torch.long), weyl)
    assert noise.min() > 0 and abs(noise.mean().item() - 1.0) < 0.01
    assert abs(noise.var().item() - 1.0) < 0.03
    assert not torch.equal(noise[0], noise[1])
    assert seed_key(5) == seed_key(5) != seed_key(6)
