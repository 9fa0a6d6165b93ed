"""CurriculumSampler: a deterministic, resumable, rank-consistent curriculum over dataset indices.

The whole sequence of indices for an epoch is a pure function of ``(seed, epoch)`` and the
configuration, so every rank builds the same global order (accelerate then deals consecutive
batches to the ranks) and a resumed run that skips the first ``n`` batches sees exactly what an
uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from .pacing import Pacing, PacingFn, competence_at, make_pacing


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


def fresh_first_draws(order: np.ndarray, sizes: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Draws from a growing prefix of ``order``, every example of the prefix once before any repeats, all at once.

    Draw ``k`` sees the prefix ``order[:sizes[k]]`` (``sizes`` non-decreasing, at least 1) and its uniform number
    ``draws[k]`` in [0, 1). The rule it computes is sequential: the examples of the prefix not drawn yet sit in a
    list (newly opened ones appended at its end); a draw takes the one at ``int(u * len)``, moves the last one into
    its slot and shortens the list; with the list empty it draws ``order[int(u * size)]`` (with replacement).

    Vectorised without a loop over draws: how long the list is before each draw follows from the sizes alone (a
    queue-length recursion, solved with a running minimum), and so does the slot each draw takes. What a slot holds
    then is the value of the latest write to it: either the example appended there, or the one a draw moved into it
    from the list's last slot, which is again a slot read at a known time. Writes are sorted by (slot, time), so
    each read is answered by its predecessor, and chains of moves are collapsed by pointer jumping (a few rounds).
    """
    m = draws.size
    out = np.empty(m, dtype=np.int64)
    if m == 0:
        return out
    sizes = np.maximum.accumulate(np.asarray(sizes, dtype=np.int64))
    opened = np.diff(sizes, prepend=0)  # examples appended to the list just before draw k
    walk = np.cumsum(opened - 1)
    left = walk - np.minimum(np.minimum.accumulate(walk), 0)  # list length after draw k
    before = np.concatenate(([0], left[:-1]))
    length = before + opened  # list length at draw k
    empty = length == 0
    out[empty] = order[(draws[empty] * sizes[empty]).astype(np.int64)]
    k = np.flatnonzero(~empty)
    if k.size == 0:
        return out
    length = length[k]
    slot = (draws[k] * length).astype(np.int64)

    # Writes, keyed slot * period + time: example a appended at time 2 * (the draw it opened for), draw k's move
    # into its slot at time 2k + 1 (after that draw read the slot).
    grown = int(sizes[-1])
    opened_at = np.repeat(np.arange(m), opened)
    appended_slot = np.repeat(before - (sizes - opened), opened) + np.arange(grown)
    period = 2 * m + 2
    keys = np.concatenate((appended_slot * period + 2 * opened_at, slot * period + 2 * k + 1))
    by_key = np.argsort(keys)
    rank = np.empty_like(by_key)
    rank[by_key] = np.arange(by_key.size)
    move_rank = rank[grown:]
    # A move copies what the list's last slot held at that time: the latest write to it before the move.
    source = np.searchsorted(keys[by_key], (length - 1) * period + 2 * k + 1) - 1
    target = np.arange(by_key.size)
    target[move_rank] = source
    is_move = np.zeros(by_key.size, dtype=bool)
    is_move[move_rank] = True
    pending = move_rank[is_move[source]]
    while pending.size:  # pointer jumping: every move ends at the write that appended its example
        target[pending] = target[target[pending]]
        pending = pending[is_move[target[pending]]]
    value = np.empty(by_key.size, dtype=np.int64)
    value[rank[:grown]] = order[:grown]
    # Draw k reads its slot just before its own move into it: the write ranked right before that move.
    out[k] = value[target[move_rank - 1]]
    return out


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

        source = np.zeros(n, dtype=np.int8)
        if self.uniform_after is not None:
            source[progress >= self.uniform_after] = 2
        source[(source == 0) & (stage > 0) & (replay_draws < self.replay_ratio)] = 1
        paced = np.flatnonzero(source == 0)
        local = (progress[paced] - self._stage_starts[stage[paced]]) / self.stage_shares[stage[paced]]
        c = competence_at(self.pacing, np.minimum(np.maximum(local, 0.0), 1.0))
        bad = np.flatnonzero(~((c >= 0.0) & (c <= 1.0)))
        if bad.size:
            i = bad[0]
            raise ValueError(
                f"The pacing function returned {c[i]} at progress {local[i]:.4f}; it must be in [0, 1]."
            )
        competence = np.ones(n, dtype=np.float64)
        competence[paced] = c

        indices = np.empty(n, dtype=np.int64)
        for s, order in enumerate(self._stage_orders):
            at = np.flatnonzero((source == 0) & (stage == s))
            sizes = np.maximum(1, np.ceil(competence[at] * order.size - 1e-9)).astype(np.int64)
            indices[at] = fresh_first_draws(order, sizes, draws[at])
            if s > 0:
                at = np.flatnonzero((source == 1) & (stage == s))
                earlier = np.concatenate(self._stage_orders[:s])
                indices[at] = fresh_first_draws(earlier, np.full(at.size, earlier.size), draws[at])
        at = np.flatnonzero(source == 2)
        indices[at] = fresh_first_draws(self._all, np.full(at.size, self.num_examples), draws[at])
        result = CurriculumSchedule(indices=indices, competence=competence, stage=stage, source=source)
        self._cache = {**{k: v for k, v in self._cache.items() if k == epoch - 1}, int(epoch): result}
        return result
