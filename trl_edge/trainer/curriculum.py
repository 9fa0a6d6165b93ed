"""The curriculum as a piece any trainer composes: its config fields, and the sampler, scoring and logging it adds.

``CurriculumArguments`` is a dataclass mixin for a TRL config; ``CurriculumMixin`` a mixin for a TRL trainer that
overrides only the sampler hook (``_get_train_sampler``) and ``log``. Difficulty comes from a registry of sources
(``difficulty_sources``: name -> a factory taking the trainer and returning a scorer of the train dataset), which a
trainer extends with its own (the KD trainer adds the teacher's view of each sample, read from its cache).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from accelerate.utils import broadcast_object_list
from datasets import Dataset

from ..curriculum.pacing import PACING_NAMES, Pacing
from ..curriculum.sampler import CurriculumSampler
from ..curriculum.scorers import ColumnScorer, LengthScorer, ReferenceModelScorer, UniformScorer, difficulty_ranks


def _reference_scorer(trainer):
    """A reference model's loss per example, on the accelerator, each rank scoring its own slice."""
    from ..batch import pad_token_id
    from ..model_loading import load_causal_lm

    args = trainer.args
    reference = args.curriculum_reference_model
    if reference is None:
        reference = trainer.accelerator.unwrap_model(trainer.model)
    else:
        init = args.model_init_kwargs or {}
        reference = load_causal_lm(
            reference,
            revision=init.get("revision"),
            dtype=init.get("dtype", "auto"),
            trust_remote_code=init.get("trust_remote_code", False),
            device=trainer.accelerator.device,
        )
    return ReferenceModelScorer(
        reference,
        batch_size=args.curriculum_reference_batch_size,
        pad_token_id=pad_token_id(trainer.processing_class),
        state=trainer.accelerator.state,
    )


# name -> factory(trainer) -> scorer(dataset) -> one score per row: the difficulty sources of a curriculum, the one
# registry the configs take their choices from and the trainers their scorers (a trainer extends it with its own)
DIFFICULTY_SOURCES: dict[str, Callable] = {
    "length": lambda trainer: LengthScorer(),
    "column": lambda trainer: ColumnScorer(trainer.args.curriculum_difficulty_column),
    "reference": _reference_scorer,
    "none": lambda trainer: UniformScorer(),
}


@dataclass
class CurriculumArguments:
    """The ``curriculum_*`` fields of a trl-edge training config (see [`~trl_edge.CurriculumSampler`])."""

    difficulty_sources: ClassVar[dict[str, Callable]] = DIFFICULTY_SOURCES  # the trainer's: see CurriculumMixin

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
            "`reference` (loss of `curriculum_reference_model`), `none` (no ordering inside a stage); when "
            "distilling from a cache also `teacher_nll` / `teacher_entropy` (the teacher's view of each sample).",
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

    def _validate_curriculum(self) -> None:
        if self.curriculum_difficulty not in self.difficulty_sources:
            raise ValueError(
                f"Unknown `curriculum_difficulty` {self.curriculum_difficulty!r}; choose one of "
                f"{', '.join(self.difficulty_sources)}."
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

    @property
    def curriculum_active(self) -> bool:
        """Whether the order depends on difficulty or stages at all (``none`` pacing, one stage: random order)."""
        return self.curriculum_pacing != "none" or self.curriculum_stage_column is not None

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


class CurriculumMixin:
    """Feeds a TRL trainer's examples in curriculum order (stages, then easy to hard inside each).

    ``CurriculumEdgeTrainer`` composes it with its TRL base: ``_check_curriculum_inputs`` before the base ``__init__``,
    ``_init_curriculum`` after it. Logs ``curriculum/competence``, ``curriculum/stage`` and the mean difficulty (raw
    score and CDF rank) of the samples trained on since the last log.
    """

    # name -> factory(trainer) -> scorer(dataset): the same registry as the config's ``difficulty_sources``
    difficulty_sources: ClassVar[dict[str, Callable]] = DIFFICULTY_SOURCES

    @staticmethod
    def _check_curriculum_inputs(args, train_dataset) -> None:
        if train_dataset is not None and not isinstance(train_dataset, Dataset):
            raise TypeError(
                "A curriculum needs random access to the training examples: pass a `datasets.Dataset`, not "
                f"{type(train_dataset).__name__} (an IterableDataset streams in its own order)."
            )
        if train_dataset is not None and len(train_dataset) == 0:
            raise ValueError("The train dataset is empty: a curriculum needs at least one example.")
        if args.train_sampling_strategy != "random":
            raise ValueError(
                f"`train_sampling_strategy={args.train_sampling_strategy!r}` would replace the curriculum order. "
                "Leave it at its default: the curriculum decides the order."
            )

    def _init_curriculum(self, difficulty_scorer: Callable | None = None) -> None:
        self.curriculum_difficulty, self.curriculum_stages = self._read_curriculum_columns(difficulty_scorer)
        self.curriculum_ranks = difficulty_ranks(self.curriculum_difficulty)
        self._curriculum_logged_upto: int | None = None
        # Build the sampler now so that a bad stage setup fails here, not at the first training step.
        self.curriculum_sampler: CurriculumSampler = self._get_train_sampler()

    # ------------------------------------------------------------------ columns
    def _read_curriculum_columns(self, difficulty_scorer: Callable | None):
        dataset, args = self.train_dataset, self.args
        if len(dataset) == 0:
            raise ValueError(
                "No training example is left after SFT preparation (truncation drops examples with no completion "
                "token left): check `max_length` and the completion columns."
            )
        if difficulty_scorer is None:
            # Random order needs no difficulty: skip a scorer that may cost a pass over the data (a model, a cache)
            source = args.curriculum_difficulty if args.curriculum_active else "none"
            difficulty_scorer = self.difficulty_sources[source](self)
        difficulty = np.asarray(difficulty_scorer(dataset), dtype=np.float64)
        if difficulty.shape != (len(dataset),):
            raise ValueError(f"The difficulty scorer returned {difficulty.shape} scores for {len(dataset)} examples.")
        if self.accelerator.num_processes > 1:
            # Every rank must build the same order: take the main process's scores, so that a scorer that is
            # not bit-reproducible across devices (a reference model's loss, a user callable) cannot split it.
            difficulty = broadcast_object_list([difficulty], from_process=0)[0]

        stages = None
        if args.curriculum_stage_column is not None:
            column = args.curriculum_stage_column
            if column not in dataset.column_names:
                raise ValueError(
                    f"`curriculum_stage_column={column!r}` is not a column of the train dataset "
                    f"(its columns: {dataset.column_names}). Add a stage label to every example."
                )
            stages = dataset[column]
        return difficulty, stages

    # ------------------------------------------------------------------ sampler
    def _curriculum_total_samples(self, num_examples: int) -> int:
        args = self.args
        if args.max_steps > 0:
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
            return args.max_steps * per_step
        return max(1, math.ceil(args.num_train_epochs * num_examples))

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if len(train_dataset) != len(self.curriculum_difficulty):
            raise ValueError(
                f"The train dataset has {len(train_dataset)} rows but {len(self.curriculum_difficulty)} difficulty "
                "scores: it changed after the trainer was built. Build a new trainer for a new dataset."
            )
        args = self.args
        seed = args.curriculum_seed
        if seed is None:
            seed = args.data_seed if args.data_seed is not None else args.seed
        self.curriculum_sampler = CurriculumSampler(
            self.curriculum_difficulty,
            args.curriculum_pacing_fn(),
            stages=self.curriculum_stages,
            stage_order=args.curriculum_stages,
            stage_shares=args.curriculum_stage_shares,
            replay_ratio=args.curriculum_replay_ratio,
            uniform_after=args.curriculum_uniform_after,
            total_samples=self._curriculum_total_samples(len(train_dataset)),
            seed=seed,
        )
        return self.curriculum_sampler

    # ------------------------------------------------------------------ logging
    def _curriculum_position(self, step: int) -> tuple[int, int]:
        """(epoch, sampler position) reached after ``step`` optimizer steps, counted the way the Trainer and
        accelerate's batch sharding consume the sampler (a short last batch ends the epoch)."""
        args = self.args
        per_micro = args.per_device_train_batch_size * max(1, args.world_size)
        n, accumulation = self.curriculum_sampler.num_samples, args.gradient_accumulation_steps
        micro = n // per_micro if args.dataloader_drop_last else -(-n // per_micro)
        updates = max(micro // accumulation + int(micro % accumulation > 0), 1)
        epoch, done = divmod(step, updates)
        return epoch, min(done * accumulation * per_micro, n)

    def _curriculum_trained_on(self, first_step: int, last_step: int):
        """(indices, competence, stage) of the samples trained on between two optimizer steps."""
        sampler = self.curriculum_sampler
        (e0, p0), (e1, p1) = self._curriculum_position(first_step), self._curriculum_position(last_step)
        parts = []
        for epoch in range(e0, e1 + 1):
            lo, hi = (p0 if epoch == e0 else 0), (p1 if epoch == e1 else sampler.num_samples)
            schedule = sampler.schedule(epoch)
            parts.append((schedule.indices[lo:hi], schedule.competence[lo:hi], schedule.stage[lo:hi]))
        return tuple(np.concatenate(p) for p in zip(*parts))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        if self.model.training and "loss" in logs and step > 0 and self.args.curriculum_active:
            first = self._curriculum_logged_upto
            if first is None or first >= step:  # first log of this run (or of a resumed one)
                # the Trainer's own count: `logging_steps` may be a fraction of the run, resolved into the state
                first = max(0, step - int(self.state.logging_steps or 1))
            indices, competence, stage = self._curriculum_trained_on(first, step)
            if len(indices):
                logs["curriculum/competence"] = float(competence[-1])
                logs["curriculum/stage"] = int(stage[-1])
                logs["curriculum/difficulty"] = float(self.curriculum_difficulty[indices].mean())
                logs["curriculum/difficulty_rank"] = float(self.curriculum_ranks[indices].mean())
            self._curriculum_logged_upto = step
        super().log(logs, start_time)
