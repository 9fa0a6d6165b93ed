"""The base of trl-edge's trainers: TRL's SFTTrainer with the curriculum and the edge-precision watch composed once.

``CurriculumMixin`` and ``EdgePrecisionMixin`` need their steps in one order around SFTTrainer's ``__init__``: the
curriculum's inputs checked before it (a streamed dataset must fail before any preparation), the process group
checked after it, then the fp16-range watch, then the curriculum (which reads the prepared train dataset and builds
the sampler). :class:`CurriculumEdgeTrainer` does them in that order; a trainer subclasses it, names its config
class, and adds its own checks in :meth:`CurriculumEdgeTrainer._finish_trainer_setup`.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

from trl import SFTTrainer

from ..compat import config_name_or_path
from ..devices import check_process_group
from .curriculum import CurriculumMixin
from .edge_precision import EdgePrecisionMixin

_SFT_SIGNATURE = inspect.signature(SFTTrainer.__init__)


class CurriculumEdgeTrainer(CurriculumMixin, EdgePrecisionMixin, SFTTrainer):
    """[`~trl.SFTTrainer`] with the curriculum order and the edge-precision policy; takes SFTTrainer's arguments,
    positional or by name, plus ``difficulty_scorer`` (overrides ``args.curriculum_difficulty``: a callable
    ``scorer(dataset) -> scores`` applied to the prepared train dataset)."""

    config_class: ClassVar[type]  # the config the trainer needs (a subclass of SFTConfig with the trl-edge fields)
    default_run_name: ClassVar[str]  # the suffix of the default output_dir when no config is given

    def __init__(self, model, args=None, *pargs, difficulty_scorer=None, **kwargs):
        args = self._resolve_args(model, args)
        train_dataset = _SFT_SIGNATURE.bind(self, model, args, *pargs, **kwargs).arguments.get("train_dataset")
        self._check_curriculum_inputs(args, train_dataset)
        super().__init__(model, args, *pargs, **kwargs)
        check_process_group(self.accelerator.num_processes)
        self._finish_trainer_setup()
        self._init_edge_precision()
        self._init_curriculum(difficulty_scorer)

    @classmethod
    def _resolve_args(cls, model, args):
        """``args``, or the default config named after the model; checked to be the trainer's config class."""
        if args is None:
            name = model if isinstance(model, str) else config_name_or_path(model.config)
            args = cls.config_class(f"{str(name).split('/')[-1]}-{cls.default_run_name}")
        if not isinstance(args, cls.config_class):
            needed = cls.config_class.__name__
            article = "an" if needed[0] in "AEIOU" else "a"
            raise TypeError(f"{cls.__name__} needs {article} {needed}, got {type(args).__name__}.")
        return args

    def _finish_trainer_setup(self) -> None:
        """A subclass's own set-up and checks of the built trainer, before the edge watch and the curriculum."""
