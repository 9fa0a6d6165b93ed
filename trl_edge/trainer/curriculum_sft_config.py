"""Configuration for curriculum SFT: TRL's SFTConfig plus the ``curriculum_*`` fields and the edge policy."""

from __future__ import annotations

from dataclasses import dataclass

from trl import SFTConfig

from .curriculum import CurriculumArguments
from .edge_precision import EdgePrecisionArguments


@dataclass
class CurriculumSFTConfig(CurriculumArguments, EdgePrecisionArguments, SFTConfig):
    r"""
    Configuration class for [`CurriculumSFTTrainer`]: every [`~trl.SFTConfig`] parameter, plus the curriculum.

    The curriculum decides the order in which training examples are drawn: easy to hard within a stage (paced by
    competence, Platanios et al. 2019), stage after stage (e.g. reasoning chains first, then direct answers, as in
    openPangu-Embedded's curriculum SFT). See [`~trl_edge.CurriculumSampler`] for the sampling itself, and
    `edge_target` for students meant for fp16-only edge parts.
    """

    def __post_init__(self):
        self._apply_edge_defaults()
        super().__post_init__()
        self._validate_curriculum()
