"""Curriculum learning: difficulty scorers, pacing functions and the sampler that follows them."""

from .pacing import PACING_NAMES, Pacing, competence_at, make_pacing
from .sampler import CurriculumSampler, CurriculumSchedule, fresh_first_draws
from .scorers import (
    CallableScorer,
    ColumnScorer,
    LengthScorer,
    ReferenceModelScorer,
    UniformScorer,
    add_difficulty_column,
    difficulty_ranks,
    sequence_nll,
)

__all__ = [
    "PACING_NAMES",
    "CallableScorer",
    "ColumnScorer",
    "CurriculumSampler",
    "CurriculumSchedule",
    "LengthScorer",
    "Pacing",
    "ReferenceModelScorer",
    "UniformScorer",
    "add_difficulty_column",
    "competence_at",
    "difficulty_ranks",
    "fresh_first_draws",
    "make_pacing",
    "sequence_nll",
]
