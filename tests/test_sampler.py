import math

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler

from trl_edge import CurriculumSampler, Pacing


def test_same_seed_and_epoch_give_the_same_order_and_epochs_differ():
    scores = np.random.default_rng(0).random(200)
    a, b = CurriculumSampler(scores, seed=3), CurriculumSampler(scores, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(a) != list(CurriculumSampler(scores, seed=3))
    assert list(CurriculumSampler(scores, seed=4)) != list(CurriculumSampler(scores, seed=3))
    assert len(a) == 200 and all(0 <= i < 200 for i in a)


@settings(max_examples=60, deadline=None)
@given(
    scores=st.lists(st.integers(0, 20), min_size=1, max_size=80),
    name=st.sampled_from(["linear", "root", "exponential", "anti"]),
    c0=st.floats(0.01, 1.0),
    total_factor=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_every_draw_is_inside_the_competence_window(scores, name, c0, total_factor, seed):
    """At competence c only the ceil(c * n) easiest examples (hardest for anti) may be drawn."""
    n = len(scores)
    sampler = CurriculumSampler(scores, name, c0=c0, total_samples=n * total_factor, seed=seed)
    key = -np.asarray(scores, float) if name == "anti" else np.asarray(scores, float)
    sorted_keys = np.sort(key)
    for epoch in range(total_factor):
        schedule = sampler.schedule(epoch)
        for idx, c in zip(schedule.indices, schedule.competence):
            window = max(1, math.ceil(c * n - 1e-9))
            assert key[idx] <= sorted_keys[window - 1]
        assert np.all(np.diff(schedule.competence) >= -1e-12)


def test_pool_is_drawn_fresh_first():
    scores = np.arange(100)
    # Full competence from the start: an epoch is a permutation.
    assert sorted(CurriculumSampler(scores, "none", seed=1)) == list(range(100))
    # Growing pool: no example repeats while an unseen one is open.
    schedule = CurriculumSampler(scores, "linear", c0=0.1, seed=1).schedule(0)
    seen = set()
    for idx, c in zip(schedule.indices, schedule.competence):
        window = set(range(max(1, math.ceil(c * 100 - 1e-9))))
        if window - seen:
            assert idx not in seen
        seen.add(int(idx))


def test_easy_first_then_hard():
    scores = np.arange(1000)
    order = np.array(list(CurriculumSampler(scores, "linear", c0=0.05, seed=0)))
    assert order[:100].mean() < 100 < 800 < order[-100:].mean()
    anti = np.array(list(CurriculumSampler(scores, "anti", c0=0.05, seed=0)))
    assert anti[:100].mean() > 900


def test_stages_are_visited_in_order_with_their_shares_and_replay():
    n = 2000
    stages = ["reasoning"] * 1500 + ["direct"] * 500
    scores = np.random.default_rng(0).random(n)
    sampler = CurriculumSampler(
        scores, "linear", stages=stages, stage_order=["reasoning", "direct"], stage_shares=[3, 1], replay_ratio=0.2
    )
    schedule = sampler.schedule(0)
    idx, stage, source = schedule.indices, schedule.stage, schedule.source
    assert (stage[:1500] == 0).all() and (stage[1500:] == 1).all()
    assert (source[:1500] == 0).all()  # nothing to replay in the first stage
    in_direct = np.array([stages[i] == "direct" for i in idx])
    assert not in_direct[:1500].any()
    replayed = source[1500:] == 1
    assert 0.15 < replayed.mean() < 0.25
    assert not in_direct[1500:][replayed].any()
    assert in_direct[1500:][~replayed].all()
    # Pacing restarts in each stage: the start of the second stage is easy again.
    paced = (source == 0) & (stage == 1)
    assert schedule.competence[paced][0] < 0.1


def test_uniform_after_returns_to_random_order():
    scores = np.arange(1000)
    schedule = CurriculumSampler(scores, "linear", c0=0.01, uniform_after=0.5, seed=0).schedule(0)
    assert (schedule.source[:500] == 0).all() and (schedule.source[500:] == 2).all()
    assert schedule.indices[:50].mean() < 100
    assert 300 < schedule.indices[500:550].mean() < 700


def test_total_samples_spreads_the_schedule_over_epochs():
    sampler = CurriculumSampler(np.arange(100), "linear", c0=0.01, total_samples=300)
    assert sampler.schedule(0).competence[-1] < 0.4
    assert sampler.schedule(2).competence[-1] == pytest.approx(1.0, abs=0.01)
    assert sampler.schedule(5).competence.min() == 1.0  # past the budget: full competence


def test_callable_pacing_and_its_range_check():
    scores = np.arange(50)
    half = CurriculumSampler(scores, lambda t: 0.5).schedule(0)
    assert half.indices.max() < 25
    with pytest.raises(ValueError, match="pacing function returned 1.5"):
        CurriculumSampler(scores, lambda t: 1.5).schedule(0)


def test_ranks_share_one_global_order_under_accelerate_sharding():
    """Each rank builds its own sampler; accelerate deals batches round-robin: disjoint, one schedule."""
    scores = np.random.default_rng(1).random(64)
    batches = {}
    for rank in range(2):
        sampler = CurriculumSampler(scores, "root", seed=7)
        sampler.set_epoch(1)
        shard = BatchSamplerShard(BatchSampler(sampler, 4, drop_last=False), num_processes=2, process_index=rank)
        batches[rank] = list(shard)
    reference = CurriculumSampler(scores, "root", seed=7).schedule(1).indices.tolist()
    interleaved = [i for pair in zip(batches[0], batches[1]) for batch in pair for i in batch]
    assert interleaved == reference  # every position of the one schedule goes to exactly one rank
    assert batches[0] != batches[1]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(difficulties=[]), "non-empty"),
        (dict(difficulties=[1.0, float("nan")]), "example 1 has nan"),
        (dict(difficulties=[1, 2], pacing="cosine"), "Unknown pacing"),
        (dict(difficulties=[1, 2], stages=["a"]), "1 stage labels for 2"),
        (dict(difficulties=[1, 2], stages=["a", "b"], stage_order=["a"]), r"stage labels \['b'\]"),
        (dict(difficulties=[1, 2], stages=["a", "a"], stage_order=["a", "b"]), r"stage\(s\) \['b'\] have no examples"),
        (dict(difficulties=[1, 2], stages=["a", "b"], stage_shares=[1.0]), "one positive share per stage"),
        (dict(difficulties=[1, 2], replay_ratio=1.0), "replay_ratio"),
        (dict(difficulties=[1, 2], uniform_after=2.0), "uniform_after"),
        (dict(difficulties=[1, 2], total_samples=0), "total_samples"),
    ],
)
def test_bad_configuration_fails_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurriculumSampler(**kwargs)


def test_pacing_object_is_accepted():
    sampler = CurriculumSampler(np.arange(10), Pacing("step", boundaries=[0.5], levels=[0.3, 1.0]))
    assert max(sampler.schedule(0).indices[:5]) < 3
