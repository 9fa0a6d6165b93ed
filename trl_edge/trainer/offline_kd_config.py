"""Configuration for offline on-policy distillation: SFTConfig plus the curriculum, edge policy and KD fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import ClassVar

from trl import SFTConfig

from ..losses import KDLossOptions
from .cache_sources import TRUNCATED_MODES
from .curriculum import CurriculumArguments
from .edge_precision import EdgePrecisionArguments
from .teacher_difficulty import TEACHER_DIFFICULTY_SOURCES

_BOUNDS, _CHOICES = KDLossOptions.BOUNDS, KDLossOptions.CHOICES  # the loss's own statement of what it accepts


@dataclass
class OfflineOnPolicyKDConfig(CurriculumArguments, EdgePrecisionArguments, SFTConfig):
    r"""
    Configuration class for [`OfflineOnPolicyKDTrainer`]: every [`~trl.SFTConfig`] parameter, the curriculum fields
    of [`CurriculumSFTConfig`] (off by default: `curriculum_pacing="none"` is plain random order), the edge policy,
    and the distillation.

    The loss at every completion token is `kd_weight * divergence(teacher || student) + ce_weight * CE`, against
    the teacher's cached top-k distribution; the teacher itself is never loaded. `ce_weight` is a property of each
    cache's source: `1 - kd_weight` on tokens the teacher or a dataset wrote, 0 on the student's own rollouts
    (`teacher_cache_ce_weights` overrides it).
    """

    difficulty_sources: ClassVar[dict[str, Callable]] = TEACHER_DIFFICULTY_SOURCES  # the trainer's

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
    teacher_cache_ce_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "CE weight of each cache of `teacher_cache`, e.g. `[0.0, 0.1]`. Default: `1 - kd_weight` on "
            "tokens the teacher or a dataset wrote, 0 on the student's own rollouts (CE there is self-imitation)."
        },
    )
    truncated_samples: str = field(
        default="keep",
        metadata={
            "help": "Rollouts cut at max_new_tokens (finish_reason 'length'): `keep` them, `drop` them, or `mask` "
            "their last `truncated_mask_positions` scored positions.",
            "choices": list(TRUNCATED_MODES),
        },
    )
    truncated_mask_positions: int = field(
        default=8, metadata={"help": "How many last scored positions of a cut sample `truncated_samples=mask` masks."}
    )
    allow_mixed_teachers: bool = field(
        default=False,
        metadata={"help": "Train on caches scored by different teachers (refused by default: it biases the target)."},
    )
    onpolicy_drift_samples: int = field(
        default=64,
        metadata={
            "help": "How many rollouts of each student-rollout cache are re-scored at the start and end of training "
            "to measure how far the student moved from the policy that sampled them (0: off)."
        },
    )
    eval_teacher_cache: str | None = field(
        default=None, metadata={"help": "A held-out teacher cache to evaluate on (the eval dataset)."}
    )
    kd_weight: float = field(
        default=0.9,
        metadata={"help": f"Weight of the distillation term, in {_BOUNDS['kd_weight']}; CE gets the rest."},
    )
    divergence: str = field(
        default="forward_kl",
        metadata={
            "help": "Divergence between the cached teacher and the student.",
            "choices": list(_CHOICES["divergence"]),
        },
    )
    beta: float = field(
        default=0.5,
        metadata={
            "help": f"Generalized JSD interpolation, in {_BOUNDS['beta']} (TRL's convention: 0 = forward KL, 1 = "
            "reverse KL)."
        },
    )
    skew_alpha: float = field(
        default=0.1, metadata={"help": f"Skew of the skew KL divergences (DistiLLM), in {_BOUNDS['skew_alpha']}."}
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "help": f"Softmax temperature for both distributions, in {_BOUNDS['temperature']}; the loss is "
            "scaled by T^2."
        },
    )
    tail: str = field(
        default="bucket",
        metadata={
            "help": "The teacher's probability outside its cached top-k: kept as one 'everything else' outcome "
            "(bucket) or dropped by renormalising both distributions over the top-k (renormalize).",
            "choices": list(_CHOICES["tail"]),
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
            "choices": list(TEACHER_DIFFICULTY_SOURCES),
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
        if self.teacher_cache_ce_weights is not None:
            if self.teacher_cache and len(self.teacher_cache_ce_weights) != len(self.teacher_cache):
                raise ValueError(
                    f"`teacher_cache_ce_weights` has {len(self.teacher_cache_ce_weights)} weights for "
                    f"{len(self.teacher_cache)} caches in `teacher_cache`: give one weight per cache."
                )
            if any(not 0 <= w <= 1 for w in self.teacher_cache_ce_weights):
                raise ValueError(f"`teacher_cache_ce_weights` must be in [0, 1], got {self.teacher_cache_ce_weights}.")
        if self.truncated_samples not in TRUNCATED_MODES:
            raise ValueError(f"`truncated_samples` must be one of {TRUNCATED_MODES}, got {self.truncated_samples!r}.")
        if self.truncated_mask_positions < 1:
            raise ValueError(f"`truncated_mask_positions` must be >= 1, got {self.truncated_mask_positions}.")
        self.kd_loss_options()  # the loss's options, checked against its bounds now, not at the first step
        if self.kd_chunk_size is not None and self.kd_chunk_size < 1:
            raise ValueError(f"`kd_chunk_size` must be >= 1, got {self.kd_chunk_size}.")

    def kd_loss_options(self) -> KDLossOptions:
        """What the loss is, as :func:`~trl_edge.losses.chunked_kd_loss` takes it (checked against its bounds)."""
        return KDLossOptions(**{f.name: getattr(self, f.name) for f in fields(KDLossOptions)})
