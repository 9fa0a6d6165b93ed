"""The teacher's view of each sample as a curriculum difficulty, read from its cache: the KD trainer's difficulty
sources (those of every curriculum, plus ``teacher_nll`` and ``teacher_entropy``), the one registry its config takes
its choices from."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from datasets import Dataset

from ..curriculum.scorers import ColumnScorer
from ..data_columns import scalar_column
from .curriculum import DIFFICULTY_SOURCES

if TYPE_CHECKING:
    from ..cache.reader import TeacherLogitCache


class TeacherDifficultyScorer:
    """The teacher's view of each row's sample, read from its cache (``teacher_nll`` or ``teacher_entropy``)."""

    def __init__(self, caches: list[TeacherLogitCache], kind: str):
        self.caches, self.kind = caches, kind

    def __call__(self, dataset: Dataset) -> np.ndarray:
        cache_ids, indices = scalar_column(dataset, "cache_id"), scalar_column(dataset, "cache_index")
        scores = np.zeros(len(dataset))
        for cache_id in np.unique(cache_ids):
            rows = np.flatnonzero(cache_ids == cache_id)
            cache = self.caches[int(cache_id)]
            scores[rows] = cache.teacher_difficulty(self.kind, indices[rows], show_progress=True)
        return scores


TEACHER_DIFFICULTY_SOURCES: dict[str, Callable] = {
    **DIFFICULTY_SOURCES,
    "length": lambda trainer: ColumnScorer("num_tokens"),  # the cache's own token count: no re-tokenization
    "teacher_nll": lambda trainer: TeacherDifficultyScorer(trainer.teacher_caches, "teacher_nll"),
    "teacher_entropy": lambda trainer: TeacherDifficultyScorer(trainer.teacher_caches, "teacher_entropy"),
}
