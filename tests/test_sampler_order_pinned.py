"""Pins the exact curriculum order: the sampler's schedule is part of the on-disk contract (a resumed run must see the
batches an uninterrupted one saw, across trl-edge versions), so a faster implementation must give the same bytes.

The digests were computed by the original per-position loop (trl-edge 0.1.0.dev0, before the sampler was
vectorised); a change to any of them changes which batches a resumed run trains on.
"""

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_edge import CurriculumSampler, Pacing


def _scores(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, n).astype(float) if ties else rng.random(n)


def _stages(n, labels, seed):
    return list(np.random.default_rng(seed + 100).choice(labels, n))


CASES = {
    "linear": dict(n=101, kwargs=dict(pacing="linear", c0=0.05), epochs=2),
    "root-ties": dict(n=257, ties=True, kwargs=dict(pacing="root", c0=0.1, degree=3.0, total_samples=600), epochs=3),
    "exponential": dict(n=97, kwargs=dict(pacing="exponential", c0=0.02, duration=0.7), epochs=2),
    "step": dict(n=64, kwargs=dict(pacing="step", boundaries=[0.2, 0.5], levels=[0.1, 0.4, 1.0]), epochs=2),
    "anti": dict(n=50, kwargs=dict(pacing="anti", c0=0.3), epochs=1),
    "none": dict(n=33, kwargs=dict(pacing="none", num_samples=80), epochs=2),
    "callable-nonmonotone": dict(n=40, kwargs=dict(pacing=lambda t: 0.6 if t < 0.3 else 0.2 + 0.8 * t), epochs=2),
    "pacing-object": dict(n=45, kwargs=dict(pacing=Pacing("root", c0=0.2)), epochs=1),
    "stages-shares-replay": dict(
        n=301, stages=("reasoning", "direct"),
        kwargs=dict(pacing="root", stage_order=["reasoning", "direct"], stage_shares=[0.75, 0.25], replay_ratio=0.1,
                    total_samples=700, seed=5),
        epochs=3,
    ),
    "three-stages-uniform-after": dict(
        n=211, stages=("a", "b", "c"),
        kwargs=dict(pacing="linear", c0=0.01, stage_shares=[1, 2, 1], replay_ratio=0.3, uniform_after=0.8,
                    num_samples=150, total_samples=420, seed=11),
        epochs=3,
    ),
    "uniform-after-only": dict(n=128, kwargs=dict(pacing="exponential", uniform_after=0.5, seed=2), epochs=2),
    "uniform-from-start": dict(n=30, kwargs=dict(pacing="linear", uniform_after=0.0, num_samples=70), epochs=1),
    "tiny-pools-replacement": dict(
        n=7, stages=("x", "y"), kwargs=dict(pacing="linear", c0=0.01, replay_ratio=0.5, num_samples=60), epochs=2
    ),
    "past-the-budget": dict(n=20, kwargs=dict(pacing="linear", total_samples=25, seed=9), epochs=3),
    "large": dict(
        n=5003, stages=("r", "d"),
        kwargs=dict(pacing="root", stage_shares=[2, 1], replay_ratio=0.2, uniform_after=0.9, total_samples=12007),
        epochs=3,
    ),
}  # fmt: skip


def schedule_digest(case) -> str:
    n = case["n"]
    stages = _stages(n, case["stages"], n) if "stages" in case else None
    sampler = CurriculumSampler(_scores(n, n, case.get("ties", False)), stages=stages, **case["kwargs"])
    digest = hashlib.sha256()
    for epoch in range(case["epochs"]):
        schedule = sampler.schedule(epoch)
        for array, dtype in ((schedule.indices, "<i8"), (schedule.competence, "<f8"), (schedule.stage, "<i8"),
                             (schedule.source, "<i1")):  # fmt: skip
            digest.update(np.ascontiguousarray(array, dtype=dtype).tobytes())
    return digest.hexdigest()[:16]


PINNED = {
    "anti": "c92829fefca45ec7",
    "callable-nonmonotone": "cd3b43b5d46f4106",
    "exponential": "76c54f9b01fb18e9",
    "large": "a52743bda4819a4b",
    "linear": "7c13577a492f9e71",
    "none": "6b525e4c4ea08d2b",
    "pacing-object": "8c3f90e48c17497a",
    "past-the-budget": "2081503a223a7f53",
    "root-ties": "65ab7c97b4042368",
    "stages-shares-replay": "756db804f109564e",
    "step": "32fc18ed677bfd91",
    "three-stages-uniform-after": "b3a0a3c2666f1838",
    "tiny-pools-replacement": "3ff0d1f6abc50565",
    "uniform-after-only": "dd4b0bf4d302a751",
    "uniform-from-start": "bec0961f11da1499",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_order_is_bit_identical_to_the_pinned_one(name):
    assert schedule_digest(CASES[name]) == PINNED[name]


def loop_schedule(sampler: CurriculumSampler, epoch: int):
    """The original implementation, one position at a time: the reference for the vectorised schedule."""

    class Pool:
        def __init__(self, order):
            self.order, self.size, self.fresh = order, 0, []

        def grow_to(self, size):
            if size > self.size:
                self.fresh.extend(self.order[self.size : size].tolist())
                self.size = size

        def draw(self, u):
            if self.fresh:
                j = int(u * len(self.fresh))
                self.fresh[j], self.fresh[-1] = self.fresh[-1], self.fresh[j]
                return self.fresh.pop()
            return int(self.order[int(u * self.size)])

    n, orders, starts = sampler.num_samples, sampler._stage_orders, sampler._stage_starts
    rng = np.random.default_rng([sampler.seed, int(epoch)])
    draws, replay_draws = rng.random(n), rng.random(n)
    progress = np.minimum((epoch * n + np.arange(n)) / sampler.total_samples, 1.0)
    stage = np.searchsorted(starts, progress, side="right") - 1
    pools = [Pool(o) for o in orders]
    replay_pools = [None] + [Pool(np.concatenate(orders[:s])) for s in range(1, len(orders))]
    uniform_pool = Pool(sampler._all)
    uniform_pool.grow_to(sampler.num_examples)
    indices, competence, source = np.empty(n, np.int64), np.ones(n), np.zeros(n, np.int8)
    for i in range(n):
        s = int(stage[i])
        if sampler.uniform_after is not None and progress[i] >= sampler.uniform_after:
            indices[i], source[i] = uniform_pool.draw(draws[i]), 2
        elif s > 0 and replay_draws[i] < sampler.replay_ratio:
            replay_pools[s].grow_to(replay_pools[s].order.size)
            indices[i], source[i] = replay_pools[s].draw(draws[i]), 1
        else:
            local = (progress[i] - starts[s]) / sampler.stage_shares[s]
            c = float(sampler.pacing(min(max(local, 0.0), 1.0)))
            pools[s].grow_to(max(1, math.ceil(c * pools[s].order.size - 1e-9)))
            indices[i], competence[i] = pools[s].draw(draws[i]), c
    return indices, competence, stage, source


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 120),
    num_stages=st.integers(1, 3),
    pacing=st.sampled_from(["linear", "root", "exponential", "anti", "none"]),
    c0=st.floats(0.01, 1.0),
    replay=st.sampled_from([0.0, 0.1, 0.5, 0.9]),
    uniform_after=st.sampled_from([None, 0.0, 0.3, 0.95]),
    samples_factor=st.floats(0.2, 3.0),
    total_factor=st.floats(0.5, 4.0),
    seed=st.integers(0, 2**16),
)
def test_the_schedule_equals_the_per_position_loop(
    n, num_stages, pacing, c0, replay, uniform_after, samples_factor, total_factor, seed
):
    rng = np.random.default_rng(seed)
    stages = list(range(num_stages)) + list(rng.integers(0, num_stages, max(0, n - num_stages)))
    stages = stages[:n] if n >= num_stages else list(range(n))
    num_samples = max(1, int(n * samples_factor))
    sampler = CurriculumSampler(
        rng.integers(0, 5, n).astype(float), pacing, c0=c0, stages=stages, replay_ratio=replay,
        uniform_after=uniform_after, num_samples=num_samples, total_samples=max(1, int(num_samples * total_factor)),
        seed=seed,
    )  # fmt: skip
    for epoch in range(3):
        got = sampler.schedule(epoch)
        want = loop_schedule(sampler, epoch)
        for a, b in zip((got.indices, got.competence, got.stage, got.source), want):
            np.testing.assert_array_equal(a, b)
