"""CurriculumSFTTrainer: TRL's SFTTrainer with the training order decided by a CurriculumSampler.

Only the sampler hook is overridden (through ``CurriculumMixin``). The difficulty and stage columns are read from
the prepared train dataset right after SFTTrainer builds it, so they survive ``remove_unused_columns`` (which
drops every column but ``input_ids``/``labels`` before the dataloader is built).
"""

from __future__ import annotations

from .curriculum_edge_trainer import CurriculumEdgeTrainer
from .curriculum_sft_config import CurriculumSFTConfig


class CurriculumSFTTrainer(CurriculumEdgeTrainer):
    """[`~trl.SFTTrainer`] that feeds examples in curriculum order (stages, then easy to hard inside each).

    Takes every SFTTrainer argument (positional or by name, as SFTTrainer does), plus:

    Args:
        difficulty_scorer: overrides ``args.curriculum_difficulty``: a callable ``scorer(dataset) -> scores``
            (see ``trl_edge.curriculum.scorers``) applied to the prepared (tokenized) train dataset.

    Logs ``curriculum/competence``, ``curriculum/stage`` and the mean difficulty (raw score and CDF rank) of the
    samples trained on since the last log; with ``edge_target``, ``edge/max_activation``.
    """

    _tag_names = ["trl", "sft", "trl-edge", "curriculum"]
    config_class = CurriculumSFTConfig
    default_run_name = "CurriculumSFT"
