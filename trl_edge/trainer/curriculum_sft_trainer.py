"""CurriculumSFTTrainer: TRL's SFTTrainer with the training order decided by a CurriculumSampler.

Only the sampler hook is overridden (through ``CurriculumMixin``). The difficulty and stage columns are read from
the prepared train dataset right after SFTTrainer builds it, so they survive ``remove_unused_columns`` (which
drops every column but ``input_ids``/``labels`` before the dataloader is built).
"""

from __future__ import annotations

from trl import SFTTrainer

from ..compat import config_name_or_path
from ..devices import check_process_group
from .curriculum import CurriculumMixin
from .curriculum_sft_config import CurriculumSFTConfig
from .edge_precision import EdgePrecisionMixin


class CurriculumSFTTrainer(CurriculumMixin, EdgePrecisionMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] that feeds examples in curriculum order (stages, then easy to hard inside each).

    Takes every SFTTrainer argument, plus:

    Args:
        difficulty_scorer: overrides ``args.curriculum_difficulty``: a callable ``scorer(dataset) -> scores``
            (see ``trl_edge.curriculum.scorers``) applied to the prepared (tokenized) train dataset.

    Logs ``curriculum/competence``, ``curriculum/stage`` and the mean difficulty (raw score and CDF rank) of the
    samples trained on since the last log; with ``edge_target``, ``edge/max_activation``.
    """

    _tag_names = ["trl", "sft", "trl-edge", "curriculum"]

    def __init__(self, model, args: CurriculumSFTConfig | None = None, *pargs, difficulty_scorer=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else config_name_or_path(model.config)
            args = CurriculumSFTConfig(f"{str(name).split('/')[-1]}-CurriculumSFT")
        if not isinstance(args, CurriculumSFTConfig):
            raise TypeError(f"CurriculumSFTTrainer needs a CurriculumSFTConfig, got {type(args).__name__}.")
        self._check_curriculum_inputs(args, kwargs.get("train_dataset", pargs[1] if len(pargs) > 1 else None))
        super().__init__(model, args, *pargs, **kwargs)
        check_process_group(self.accelerator.num_processes)
        self._init_edge_precision()
        self._init_curriculum(difficulty_scorer)
