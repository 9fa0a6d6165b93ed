"""What each teacher cache of a KD run is, and so what the loss may do with it.

A cache holds the teacher's scores of tokens that someone wrote: the teacher itself (its answers), a dataset, or the
student (its rollouts). Cross-entropy on the student's own samples is self-imitation: it reinforces the student's
mistakes, including not stopping, so by default CE goes only on tokens the teacher or a dataset wrote (GKD and TRL's
DistillationTrainer likewise put only the divergence on student samples). Rollouts cut at ``max_new_tokens`` can
be kept, dropped, or kept with their last positions masked. And the caches must come from one teacher: offline
on-policy distillation converges to a biased point when two teachers' targets are mixed (Lightning OPD).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..cache.format import CacheError
from ..cache.reader import TeacherLogitCache

TRUNCATED_MODES = ("keep", "drop", "mask")


@dataclass
class CacheSource:
    """One cache of the run: who wrote its tokens, its loss weights, its share of the data, its cut samples."""

    path: str
    written_by: str  # teacher / student / dataset
    teacher: str
    kd_weight: float
    ce_weight: float
    share: float | None
    samples: int
    truncated: int

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        share = f"{self.share:.0%} of the data, " if self.share is not None else ""
        cut = f", {self.truncated} cut at max_new_tokens" if self.truncated else ""
        return (f"{self.path}: tokens written by the {self.written_by}, {share}{self.samples} samples{cut}; "
                f"loss {self.kd_weight:g} x divergence + {self.ce_weight:g} x CE")  # fmt: skip


def default_ce_weight(written_by: str, kd_weight: float) -> float:
    """CE on what the teacher or a dataset wrote (``1 - kd_weight``), none on the student's own samples."""
    return 0.0 if written_by == "student" else 1.0 - kd_weight


def truncated_rows(cache: TeacherLogitCache) -> np.ndarray:
    """Which samples of ``cache`` were cut at ``max_new_tokens`` (rollouts record ``finish_reason``; others: none)."""
    if "finish_reason" not in cache.metadata.columns:
        return np.zeros(len(cache), dtype=bool)
    reasons = cache.to_dataset()["finish_reason"]
    return np.asarray([r == "length" for r in reasons], dtype=bool)


def resolve_sources(caches: list[TeacherLogitCache], kd_weight: float, ce_weights: list[float] | None,
                    shares: list[float] | None, truncated: list[np.ndarray]) -> list[CacheSource]:  # fmt: skip
    """Each cache's weights: ``ce_weights`` where given, else :func:`default_ce_weight`. Refuses a run whose loss
    would be zero everywhere (``kd_weight=0`` and no CE on any cache), which would leave the student unchanged."""
    if ce_weights is not None and len(ce_weights) != len(caches):
        raise ValueError(f"`teacher_cache_ce_weights` has {len(ce_weights)} weights for {len(caches)} caches.")
    total = sum(shares) if shares is not None else None
    sources = []
    for i, cache in enumerate(caches):
        meta = cache.metadata
        written_by = meta.written_by()
        ce = float(ce_weights[i]) if ce_weights is not None else default_ce_weight(written_by, kd_weight)
        sources.append(CacheSource(
            path=str(cache.path), written_by=written_by, teacher=str(meta.teacher_record()), kd_weight=kd_weight,
            ce_weight=ce, share=shares[i] / total if shares is not None else None, samples=len(cache),
            truncated=int(truncated[i].sum()),
        ))  # fmt: skip
    if kd_weight == 0 and all(s.ce_weight == 0 for s in sources):
        raise ValueError(
            "kd_weight=0 leaves only the CE term, and no cache has any CE weight (by default a cache of the "
            "student's own rollouts gets none: CE on its own samples would imitate its own mistakes). The student "
            "would not change. Raise `kd_weight`, add a cache of teacher-written answers, or set "
            "`teacher_cache_ce_weights` explicitly."
        )
    return sources


def check_one_teacher(caches: list[TeacherLogitCache], allow_mixed: bool) -> None:
    """Refuse caches scored by different teachers, unless ``allow_mixed``."""
    teachers = [c.metadata.teacher_record() for c in caches]
    first = teachers[0]
    odd = [(c, t) for c, t in zip(caches, teachers) if not first.same_as(t)]
    if odd and not allow_mixed:
        listing = "; ".join(f"{c.path}: {t}" for c, t in zip(caches, teachers))
        raise CacheError(
            f"The teacher caches were scored by different teachers ({listing}). Mixing teachers' targets biases "
            "offline on-policy distillation: score every cache with the same teacher, or pass "
            "`allow_mixed_teachers=True` if this is what you want."
        )


def eligible_rows(truncated: np.ndarray, mode: str) -> np.ndarray:
    """The samples a cache contributes: all of them, or (``drop``) those that were not cut."""
    return np.flatnonzero(~truncated) if mode == "drop" else np.arange(len(truncated))
