"""Trainers and their configs, each an `XConfig` + `XTrainer` pair over a TRL trainer."""

from .curriculum_edge_trainer import CurriculumEdgeTrainer
from .curriculum_sft_config import CurriculumSFTConfig
from .curriculum_sft_trainer import CurriculumSFTTrainer
from .offline_kd_config import OfflineOnPolicyKDConfig
from .offline_kd_trainer import CachedKDCollator, OfflineOnPolicyKDTrainer

__all__ = [
    "CachedKDCollator",
    "CurriculumEdgeTrainer",
    "CurriculumSFTConfig",
    "CurriculumSFTTrainer",
    "OfflineOnPolicyKDConfig",
    "OfflineOnPolicyKDTrainer",
]
