"""Configuration for curriculum SFT: TRL's SFTConfig plus the ``curriculum_*`` fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from ..curriculum.pacing import PACING_NAMES, Pacing
from ..devices import EDGE_TARGETS, apply_precision_policy

DIFFICULTY_SOURCES = ("length", "column", "reference", "none")


@dataclass
class CurriculumSFTConfig(SFTConfig):
    r"""
    Configuration class for [`CurriculumSFTTrainer`]: every [`~trl.SFTConfig`] parameter, plus the curriculum.

    The curriculum decides the order in which training examples are drawn: easy to hard within a stage (paced by
    competence, Platanios et al. 2019), stage after stage (e.g. reasoning chains first, then direct answers, as in
    openPangu-Embedded's curriculum SFT). See [`~trl_edge.CurriculumSampler`] for the sampling itself.
    """

    curriculum_pacing: str = field(
        default="linear",
        metadata={
            "help": "Pacing function from training progress to competence (the share of easiest examples open to "
            "sampling).",
            "choices": list(PACING_NAMES),
        },
    )
    curriculum_c0: float = field(
        default=0.01,
        metadata={"help": "Competence at the start of each stage: the share of its easiest examples open at once."},
    )
    curriculum_duration: float = field(
        default=1.0,
        metadata={"help": "Fraction of each stage after which competence reaches 1 (all its examples open)."},
    )
    curriculum_root_degree: float = field(
        default=2.0, metadata={"help": "Degree p of root pacing: c = (c0^p + (1 - c0^p) t / duration)^(1/p)."}
    )
    curriculum_step_boundaries: list[float] | None = field(
        default=None,
        metadata={"help": "Step pacing: progress points in (0, 1) where competence jumps, e.g. `[0.3, 0.6]`."},
    )
    curriculum_step_levels: list[float] | None = field(
        default=None,
        metadata={
            "help": "Step pacing: competence before, between and after the boundaries (one more value than "
            "boundaries, last one 1.0). Defaults to evenly spaced levels."
        },
    )
    curriculum_uniform_after: float | None = field(
        default=None,
        metadata={"help": "Fraction of training after which sampling is uniform random over the whole dataset."},
    )
    curriculum_difficulty: str = field(
        default="length",
        metadata={
            "help": "Where difficulty comes from: `length` (tokens), `column` (`curriculum_difficulty_column`), "
            "`reference` (loss of `curriculum_reference_model`), `none` (no ordering inside a stage).",
            "choices": list(DIFFICULTY_SOURCES),
        },
    )
    curriculum_difficulty_column: str = field(
        default="difficulty",
        metadata={"help": "Numeric column holding difficulty when `curriculum_difficulty=column`."},
    )
    curriculum_reference_model: str | None = field(
        default=None,
        metadata={
            "help": "Model name or path whose per-example loss scores difficulty when `curriculum_difficulty="
            "reference`. Defaults to the model being trained, before training."
        },
    )
    curriculum_reference_batch_size: int = field(
        default=8, metadata={"help": "Batch size for scoring difficulty with the reference model."}
    )
    curriculum_stage_column: str | None = field(
        default=None,
        metadata={"help": "Column holding each example's stage label (e.g. `reasoning` / `direct`). None: one stage."},
    )
    curriculum_stages: list[str] | None = field(
        default=None,
        metadata={"help": "Order in which stages are visited. Defaults to the order of first appearance in the data."},
    )
    curriculum_stage_shares: list[float] | None = field(
        default=None,
        metadata={"help": "Share of training given to each stage, in stage order. Defaults to the stage sizes."},
    )
    curriculum_replay_ratio: float = field(
        default=0.0,
        metadata={"help": "In every stage after the first, the fraction of samples replayed from earlier stages."},
    )
    curriculum_seed: int | None = field(
        default=None, metadata={"help": "Seed of the curriculum order. Defaults to `data_seed`, then `seed`."}
    )
    edge_target: str | None = field(
        default=None,
        metadata={
            "help": "The fp16-only edge part the student is for (e.g. `atlas-200i-a2`): no bf16, fp16 mixed "
            "precision where the training device has it, and activations logged against the fp16 range.",
            "choices": [None, *EDGE_TARGETS],
        },
    )

    def __post_init__(self):
        apply_precision_policy(self)  # before TRL makes bf16 the default on every device
        super().__post_init__()
        if self.curriculum_difficulty not in DIFFICULTY_SOURCES:
            raise ValueError(
                f"Unknown `curriculum_difficulty` {self.curriculum_difficulty!r}; choose one of "
                f"{', '.join(DIFFICULTY_SOURCES)}."
            )
        self.curriculum_pacing_fn()  # validates the pacing fields now, not at the first training step
        if self.curriculum_stages is not None and self.curriculum_stage_column is None:
            raise ValueError("`curriculum_stages` is set but `curriculum_stage_column` is not: name the stage column.")
        if self.curriculum_stage_shares is not None:
            if self.curriculum_stages is None:
                raise ValueError("`curriculum_stage_shares` needs `curriculum_stages`, so that shares map to stages.")
            if len(self.curriculum_stage_shares) != len(self.curriculum_stages):
                raise ValueError(
                    f"Got {len(self.curriculum_stage_shares)} stage shares for {len(self.curriculum_stages)} stages "
                    f"{self.curriculum_stages}."
                )
        if not 0.0 <= self.curriculum_replay_ratio < 1.0:
            raise ValueError(f"`curriculum_replay_ratio` must be in [0, 1), got {self.curriculum_replay_ratio}.")
        if self.curriculum_uniform_after is not None and not 0.0 <= self.curriculum_uniform_after <= 1.0:
            raise ValueError(f"`curriculum_uniform_after` must be in [0, 1], got {self.curriculum_uniform_after}.")
        if self.packing:
            raise ValueError(
                "Packing merges examples and reorders rows, which would silently shuffle the curriculum. Set "
                "`packing=False`; to avoid padding waste keep the order with `padding_free=True` instead."
            )

    def curriculum_pacing_fn(self) -> Pacing:
        """The pacing function these fields describe."""
        step = self.curriculum_pacing == "step"
        return Pacing(
            self.curriculum_pacing,
            c0=self.curriculum_c0,
            duration=self.curriculum_duration,
            degree=self.curriculum_root_degree,
            boundaries=tuple(self.curriculum_step_boundaries or ()) if step else (),
            levels=self.curriculum_step_levels if step else None,
        )
