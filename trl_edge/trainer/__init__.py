"""Trainers and their configs, each an `XConfig` + `XTrainer` pair over a TRL trainer."""

from .curriculum_sft_config import CurriculumSFTConfig
from .curriculum_sft_trainer import CurriculumSFTTrainer

__all__ = ["CurriculumSFTConfig", "CurriculumSFTTrainer"]
