"""CurriculumSFTTrainer: TRL's SFTTrainer with the training order decided by a CurriculumSampler.

Only the sampler hook is overridden. The difficulty and stage columns are read from the prepared
train dataset right after SFTTrainer builds it, so they survive ``remove_unused_columns`` (which
drops every column but ``input_ids``/``labels`` before the dataloader is built).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from trl import SFTTrainer

from ..curriculum.sampler import CurriculumSampler
from ..curriculum.scorers import ColumnScorer, LengthScorer, ReferenceModelScorer, difficulty_ranks
from ..devices import check_process_group
from .curriculum_sft_config import CurriculumSFTConfig
from .fp16_range_callback import Fp16RangeCallback


class CurriculumSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that feeds examples in curriculum order (stages, then easy to hard inside each).

    Takes every SFTTrainer argument, plus:

    Args:
        difficulty_scorer: overrides ``args.curriculum_difficulty``: a callable ``scorer(dataset) -> scores``
            (see ``trl_edge.curriculum.scorers``) applied to the prepared (tokenized) train dataset.

    Logs ``curriculum/competence``, ``curriculum/stage`` and the mean difficulty (raw score and CDF rank) of the
    samples trained on since the last log.
    """

    _tag_names = ["trl", "sft", "trl-edge", "curriculum"]

    def __init__(self, model, args: CurriculumSFTConfig | None = None, *pargs, difficulty_scorer=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = CurriculumSFTConfig(f"{str(name).split('/')[-1]}-CurriculumSFT")
        if not isinstance(args, CurriculumSFTConfig):
            raise TypeError(f"CurriculumSFTTrainer needs a CurriculumSFTConfig, got {type(args).__name__}.")
        train_dataset = kwargs.get("train_dataset", pargs[1] if len(pargs) > 1 else None)
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
        super().__init__(model, args, *pargs, **kwargs)
        check_process_group(self.accelerator.num_processes)
        self.fp16_range = None
        if args.edge_target is not None:
            self.fp16_range = Fp16RangeCallback()
            self.add_callback(self.fp16_range)
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
            difficulty_scorer = {
                "length": LengthScorer,
                "column": lambda: ColumnScorer(args.curriculum_difficulty_column),
                "reference": self._reference_scorer,
                "none": lambda: lambda ds: np.zeros(len(ds)),
            }[args.curriculum_difficulty]()
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
                    f"(columns after SFT preparation: {dataset.column_names}). Add a stage label to every example."
                )
            stages = dataset[column]
        return difficulty, stages

    def _reference_scorer(self):
        args = self.args
        reference = args.curriculum_reference_model
        if reference is None:
            reference = self.model
        pad = getattr(self.processing_class, "pad_token_id", None)
        pad = 0 if pad is None else pad
        return ReferenceModelScorer(reference, batch_size=args.curriculum_reference_batch_size, pad_token_id=pad)

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
        if self.model.training and "loss" in logs and step > 0:
            first = self._curriculum_logged_upto
            if first is None or first >= step:  # first log of this run (or of a resumed one)
                first = max(0, step - self.args.logging_steps)
            indices, competence, stage = self._curriculum_trained_on(first, step)
            if len(indices):
                logs["curriculum/competence"] = float(competence[-1])
                logs["curriculum/stage"] = int(stage[-1])
                logs["curriculum/difficulty"] = float(self.curriculum_difficulty[indices].mean())
                logs["curriculum/difficulty_rank"] = float(self.curriculum_ranks[indices].mean())
            self._curriculum_logged_upto = step
            if self.fp16_range is not None:
                self.fp16_range.add_to_logs(logs, self.args.edge_target)
        super().log(logs, start_time)
