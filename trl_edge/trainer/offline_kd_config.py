"""Configuration for offline on-policy distillation: SFTConfig (through CurriculumSFTConfig) plus the KD fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..losses import DIVERGENCES, TAIL_MODES
from .curriculum_sft_config import DIFFICULTY_SOURCES, CurriculumSFTConfig

KD_DIFFICULTY_SOURCES = (*DIFFICULTY_SOURCES, "teacher_entropy", "teacher_nll")


@dataclass
class OfflineOnPolicyKDConfig(CurriculumSFTConfig):
    r"""
    Configuration class for [`OfflineOnPolicyKDTrainer`]: every [`~trl.SFTConfig`] parameter, the curriculum fields
    of [`CurriculumSFTConfig`] (off by default: `curriculum_pacing="none"` is plain random order), and the
    distillation.

    The loss at every completion token is `kd_weight * divergence(teacher || student) + (1 - kd_weight) * CE`,
    against the teacher's cached top-k distribution; the teacher itself is never loaded.
    """

    teacher_cache: str | None = field(
        default=None,
        metadata={"help": "Teacher logit cache directory (made by `trl-edge cache`); the training data."},
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
    kd_chunk_size: int = field(
        default=1024, metadata={"help": "Positions per chunk of the LM head + divergence (bounds peak memory)."}
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
            "choices": list(KD_DIFFICULTY_SOURCES),
        },
    )

    def __post_init__(self):
        difficulty = self.curriculum_difficulty
        if difficulty in ("teacher_entropy", "teacher_nll"):  # checked here; the parent knows only its own sources
            self.curriculum_difficulty = "none"
        super().__post_init__()
        self.curriculum_difficulty = difficulty
        if difficulty not in KD_DIFFICULTY_SOURCES:
            raise ValueError(f"Unknown `curriculum_difficulty` {difficulty!r}; choose one of {KD_DIFFICULTY_SOURCES}.")
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
        if self.kd_chunk_size < 1:
            raise ValueError(f"`kd_chunk_size` must be >= 1, got {self.kd_chunk_size}.")
