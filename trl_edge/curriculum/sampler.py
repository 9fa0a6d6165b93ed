"""CurriculumSampler: a deterministic, resumable, rank-consistent curriculum over dataset indices.

The whole sequence of indices for an epoch is a pure function of ``(seed, epoch)`` and the
configuration, so every rank builds the same global order (accelerate then deals consecutive
batches to the ranks) and a resumed run that skips the first ``n`` batches sees exactly what an
uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from .pacing import Pacing, PacingFn, make_pacing


@dataclass(frozen=True)
class CurriculumSchedule:
    """One epoch of the curriculum, position by position.

    Attributes:
        indices: dataset index drawn at each position.
        competence: competence of the pacing function at each position (1.0 for replayed or
            uniform draws).
        stage: index (into ``CurriculumSampler.stage_order``) of the stage the position belongs to.
        source: 0 = drawn from the current stage's paced pool, 1 = replay of an earlier stage,
            2 = uniform draw after ``uniform_after``.
    """

    indices: np.ndarray
    competence: np.ndarray
    stage: np.ndarray
    source: np.ndarray


class _Pool:
    """A growing prefix of an ordered list of indices, drawn fresh-first: every example in the prefix
    is drawn once before any is drawn again."""

    def __init__(self, order: np.ndarray):
        self.order = order
        self.size = 0
        self.fresh: list[int] = []

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self.fresh.extend(self.order[self.size : size].tolist())
            self.size = size

    def draw(self, u: float) -> int:
        if self.fresh:
            j = int(u * len(self.fresh))
            self.fresh[j], self.fresh[-1] = self.fresh[-1], self.fresh[j]
            return self.fresh.pop()
        return int(self.order[int(u * self.size)])


class CurriculumSampler(Sampler[int]):
    """Sample dataset indices easy to hard, optionally in stages, following a pacing schedule.

    At training progress ``t`` (0 at the first sample of training, 1 at the last) the sampler
    draws from the easiest ``ceil(c(t) * n)`` examples of the current stage, where ``c`` is the
    pacing function (competence-based curriculum, Platanios et al. 2019). Inside that pool every
    example is drawn once before any is repeated. Stages (e.g. reasoning data, then direct answers)
    take consecutive shares of training; the pacing restarts at ``c0`` in each stage.

    Args:
        difficulties: one score per example, higher is harder (any scale: only the order matters).
        pacing: a pacing name (see :class:`~trl_edge.curriculum.pacing.Pacing`) or a callable
            ``progress -> competence``.
        stages: optional stage label per example.
        stage_order: the order in which stages are visited (default: order of first appearance).
        stage_shares: share of the training samples given to each stage (default: proportional to
            the stage sizes); normalised to sum to 1.
        replay_ratio: in every stage after the first, the fraction of samples drawn (uniformly) from
            the earlier stages, so that the model keeps what it learned.
        uniform_after: fraction of training after which sampling is uniform over the whole dataset.
        num_samples: samples per epoch (default: the number of examples).
        total_samples: the number of samples the whole schedule is spread over, across epochs
            (default: one epoch, ``num_samples``). Trainers set it from their training budget.
            Samples past it stay at the end of the schedule (full competence, last stage).
        seed: the seed; with the epoch it determines the whole order.
        **pacing_kwargs: passed to :class:`~trl_edge.curriculum.pacing.Pacing` when ``pacing`` is
            a name (``c0``, ``duration``, ``degree``, ``boundaries``, ``levels``).
    """

    def __init__(
        self,
        difficulties: Sequence[float],
        pacing: str | PacingFn = "linear",
        *,
        stages: Sequence[Hashable] | None = None,
        stage_order: Sequence[Hashable] | None = None,
        stage_shares: Sequence[float] | None = None,
        replay_ratio: float = 0.0,
        uniform_after: float | None = None,
        num_samples: int | None = None,
        total_samples: int | None = None,
        seed: int = 0,
        **pacing_kwargs,
    ):
        scores = np.asarray(difficulties, dtype=np.float64)
        if scores.ndim != 1 or scores.size == 0:
            raise ValueError("CurriculumSampler needs a non-empty 1-D sequence of difficulty scores.")
        bad = np.flatnonzero(~np.isfinite(scores))
        if bad.size:
            raise ValueError(
                f"Difficulty scores must be finite; example {int(bad[0])} has {scores[bad[0]]} "
                f"({bad.size} non-finite in all). Fix or drop those examples before building the curriculum."
            )
        self.pacing = make_pacing(pacing, **pacing_kwargs)
        reverse = isinstance(self.pacing, Pacing) and self.pacing.reverse
        if not 0.0 <= replay_ratio < 1.0:
            raise ValueError(f"`replay_ratio` must be in [0, 1), got {replay_ratio}.")
        if uniform_after is not None and not 0.0 <= uniform_after <= 1.0:
            raise ValueError(f"`uniform_after` must be in [0, 1], got {uniform_after}.")
        self.num_examples = scores.size
        self.num_samples = int(num_samples) if num_samples is not None else self.num_examples
        if self.num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        self.total_samples = int(total_samples) if total_samples is not None else self.num_samples
        if self.total_samples < 1:
            raise ValueError(f"`total_samples` must be >= 1, got {total_samples}.")
        self.replay_ratio = float(replay_ratio)
        self.uniform_after = uniform_after
        self.seed = int(seed)
        self.epoch = 0

        labels = [0] * self.num_examples if stages is None else list(stages)
        if len(labels) != self.num_examples:
            raise ValueError(f"Got {len(labels)} stage labels for {self.num_examples} difficulty scores.")
        if stage_order is None:
            stage_order = list(dict.fromkeys(labels))
        self.stage_order = list(stage_order)
        if len(set(self.stage_order)) != len(self.stage_order):
            raise ValueError(f"`stage_order` has duplicates: {self.stage_order}.")
        position = {label: i for i, label in enumerate(self.stage_order)}
        unknown = sorted({str(label) for label in labels if label not in position})
        if unknown:
            raise ValueError(
                f"Examples have stage labels {unknown} that are not in the stage order {self.stage_order}. "
                "Add them to the stage order or drop those examples."
            )
        stage_of = np.array([position[label] for label in labels], dtype=np.int64)
        sizes = np.bincount(stage_of, minlength=len(self.stage_order))
        empty = [self.stage_order[i] for i in np.flatnonzero(sizes == 0)]
        if empty:
            raise ValueError(f"Curriculum stage(s) {empty} have no examples. Remove them from the stage order.")

        if stage_shares is None:
            shares = sizes / sizes.sum()
        else:
            shares = np.asarray(stage_shares, dtype=np.float64)
            if shares.shape != (len(self.stage_order),) or np.any(~(shares > 0)):
                raise ValueError(
                    f"`stage_shares` needs one positive share per stage ({len(self.stage_order)} stages: "
                    f"{self.stage_order}), got {list(stage_shares)}."
                )
            shares = shares / shares.sum()
        self.stage_shares = shares
        self._stage_starts = np.concatenate([[0.0], np.cumsum(shares)[:-1]])

        # Easy-to-hard order inside each stage; ties in a seeded random order that is fixed across
        # epochs (so that the pools are the same sets whatever the epoch).
        tiebreak = np.random.default_rng([self.seed, 2**31 - 1]).permutation(self.num_examples)
        key = -scores if reverse else scores
        order = np.lexsort((tiebreak, key))
        self._stage_orders = [order[stage_of[order] == s] for s in range(len(self.stage_order))]
        self._all = np.random.default_rng([self.seed, 2**31 - 2]).permutation(self.num_examples)
        self._cache: dict[int, CurriculumSchedule] = {}  # this epoch and the one before

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        yield from self.schedule(self.epoch).indices.tolist()

    def progress(self, epoch: int, position: int) -> float:
        """Training progress in [0, 1] of the sample at ``position`` of ``epoch``."""
        return min((epoch * self.num_samples + position) / self.total_samples, 1.0)

    def schedule(self, epoch: int) -> CurriculumSchedule:
        """The full order of ``epoch``: a pure function of the configuration, the seed and the epoch."""
        if epoch in self._cache:
            return self._cache[epoch]
        n = self.num_samples
        rng = np.random.default_rng([self.seed, int(epoch)])
        draws = rng.random(n)
        replay_draws = rng.random(n)
        progress = np.minimum((epoch * n + np.arange(n)) / self.total_samples, 1.0)
        stage = np.searchsorted(self._stage_starts, progress, side="right") - 1

        pools = [_Pool(o) for o in self._stage_orders]
        replay_pools = [None] + [
            _Pool(np.concatenate(self._stage_orders[:s])) for s in range(1, len(self._stage_orders))
        ]
        uniform_pool = _Pool(self._all)
        uniform_pool.grow_to(self.num_examples)

        indices = np.empty(n, dtype=np.int64)
        competence = np.ones(n, dtype=np.float64)
        source = np.zeros(n, dtype=np.int8)
        for i in range(n):
            s = int(stage[i])
            if self.uniform_after is not None and progress[i] >= self.uniform_after:
                indices[i] = uniform_pool.draw(draws[i])
                source[i] = 2
            elif s > 0 and replay_draws[i] < self.replay_ratio:
                pool = replay_pools[s]
                pool.grow_to(pool.order.size)
                indices[i] = pool.draw(draws[i])
                source[i] = 1
            else:
                local = (progress[i] - self._stage_starts[s]) / self.stage_shares[s]
                c = float(self.pacing(min(max(local, 0.0), 1.0)))
                if not 0.0 <= c <= 1.0 or math.isnan(c):
                    raise ValueError(
                        f"The pacing function returned {c} at progress {local:.4f}; it must be in [0, 1]."
                    )
                pool = pools[s]
                pool.grow_to(max(1, math.ceil(c * pool.order.size - 1e-9)))
                indices[i] = pool.draw(draws[i])
                competence[i] = c
        result = CurriculumSchedule(indices=indices, competence=competence, stage=stage, source=source)
        self._cache = {**{k: v for k, v in self._cache.items() if k == epoch - 1}, int(epoch): result}
        return result
