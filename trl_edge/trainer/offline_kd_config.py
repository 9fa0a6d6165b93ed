"""Configuration for offline on-policy distillation: SFTConfig plus the curriculum, edge policy and KD fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from trl import SFTConfig

from ..losses import DIVERGENCES, TAIL_MODES
from .curriculum import CurriculumArguments
from .edge_precision import EdgePrecisionArguments


@dataclass
class OfflineOnPolicyKDConfig(CurriculumArguments, EdgePrecisionArguments, SFTConfig):
    r"""
    Configuration class for [`OfflineOnPolicyKDTrainer`]: every [`~trl.SFTConfig`] parameter, the curriculum fields
    of [`CurriculumSFTConfig`] (off by default: `curriculum_pacing="none"` is plain random order), the edge policy,
    and the distillation.

    The loss at every completion token is `kd_weight * divergence(teacher || student) + (1 - kd_weight) * CE`,
    against the teacher's cached top-k distribution; the teacher itself is never loaded.
    """

    difficulty_sources: ClassVar[tuple[str, ...]] = (
        *CurriculumArguments.difficulty_sources,
        "teacher_nll",
        "teacher_entropy",
    )

    teacher_cache: list[str] | None = field(
        default=None,
        metadata={
            "help": "Teacher logit cache directories (made by `trl-edge cache`): the training data. Several caches "
            "(this round's rollouts, an earlier round's, teacher-written answers) are mixed by "
            "`teacher_cache_weights`."
        },
    )
    teacher_cache_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Share of the training samples drawn from each cache of `teacher_cache`, e.g. `[0.7, 0.3]`. "
            "Default: each cache in proportion to its size (plain concatenation)."
        },
    )
    eval_teacher_cache: str | None = field(
        default=None, metadata={"help": "A held-out teacher cache to evaluate on (the eval dataset)."}
    )
    kd_weight: float = field(default=0.9, metadata={"help": "Weight of the distillation term; CE gets the rest."})
    divergence: str = field(
        default="forward_kl",
        metadata={"help": "Divergence between the cached teacher and the student.", "choices": list(DIVERGENCES)},
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "Generalized JSD interpolation (TRL's convention: 0 = forward KL, 1 = reverse KL)."},
    )
    skew_alpha: float = field(default=0.1, metadata={"help": "Skew of the skew KL divergences (DistiLLM)."})
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature for both distributions; the loss is scaled by T^2."}
    )
    tail: str = field(
        default="bucket",
        metadata={
            "help": "The teacher's probability outside its cached top-k: kept as one 'everything else' outcome "
            "(bucket) or dropped by renormalising both distributions over the top-k (renormalize).",
            "choices": list(TAIL_MODES),
        },
    )
    kd_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Positions per chunk of the LM head + divergence (bounds peak memory). Default: picked from the "
            "vocabulary and hidden sizes so the chunk's buffers take no more than the LM head itself."
        },
    )
    curriculum_pacing: str = field(
        default="none",
        metadata={"help": "Curriculum pacing (see CurriculumSFTConfig); `none` trains in random order."},
    )
    curriculum_difficulty: str = field(
        default="teacher_nll",
        metadata={
            "help": "Difficulty for a curriculum: `teacher_nll` (the teacher's mean NLL of the sample's tokens), "
            "`teacher_entropy` (estimated from its cached top-k), or any CurriculumSFTConfig source.",
            "choices": ["length", "column", "reference", "none", "teacher_nll", "teacher_entropy"],
        },
    )

    def __post_init__(self):
        self._apply_edge_defaults()
        super().__post_init__()
        self._validate_curriculum()
        if isinstance(self.teacher_cache, str):
            self.teacher_cache = [self.teacher_cache]
        if self.teacher_cache_weights is not None:
            if self.teacher_cache and len(self.teacher_cache_weights) != len(self.teacher_cache):
                raise ValueError(
                    f"`teacher_cache_weights` has {len(self.teacher_cache_weights)} weights for "
                    f"{len(self.teacher_cache)} caches in `teacher_cache`: give one weight per cache."
                )
            if any(w < 0 for w in self.teacher_cache_weights) or sum(self.teacher_cache_weights) <= 0:
                raise ValueError(f"`teacher_cache_weights` must be >= 0 with a positive sum, got "
                                 f"{self.teacher_cache_weights}.")  # fmt: skip
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"Unknown `divergence` {self.divergence!r}; choose one of {', '.join(DIVERGENCES)}.")
        if self.tail not in TAIL_MODES:
            raise ValueError(f"Unknown `tail` {self.tail!r}; choose one of {', '.join(TAIL_MODES)}.")
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"`kd_weight` must be in [0, 1], got {self.kd_weight}.")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1], got {self.beta}.")
        if not 0.0 < self.skew_alpha < 1.0:
            raise ValueError(f"`skew_alpha` must be in (0, 1), got {self.skew_alpha}.")
        if not self.temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {self.temperature}.")
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"`kd_chunk_size` must be >= 1, got {self.kd_chunk_size}.")
