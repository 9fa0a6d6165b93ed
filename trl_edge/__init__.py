"""trl-edge: post-train small language models for edge devices with TRL (curriculum SFT, offline distillation).

Public names are imported lazily, so ``import trl_edge`` (and the CLI's ``--help``) stays fast and never pulls
in a device backend such as torch_npu.
"""

from importlib import import_module

from .devices import shield_torch_npu

__version__ = "0.1.0.dev0"

shield_torch_npu()  # without CANN, torch_npu cannot work and importing it breaks torch: keep it out

_EXPORTS = {
    "Pacing": "trl_edge.curriculum.pacing",
    "make_pacing": "trl_edge.curriculum.pacing",
    "competence_at": "trl_edge.curriculum.pacing",
    "CurriculumSampler": "trl_edge.curriculum.sampler",
    "CurriculumSchedule": "trl_edge.curriculum.sampler",
    "LengthScorer": "trl_edge.curriculum.scorers",
    "ColumnScorer": "trl_edge.curriculum.scorers",
    "CallableScorer": "trl_edge.curriculum.scorers",
    "ReferenceModelScorer": "trl_edge.curriculum.scorers",
    "add_difficulty_column": "trl_edge.curriculum.scorers",
    "difficulty_ranks": "trl_edge.curriculum.scorers",
    "CurriculumSFTConfig": "trl_edge.trainer.curriculum_sft_config",
    "CurriculumSFTTrainer": "trl_edge.trainer.curriculum_sft_trainer",
    "cache_teacher_logits": "trl_edge.cache.writer",
    "TeacherLogitCache": "trl_edge.cache.reader",
    "CacheError": "trl_edge.cache.format",
    "CacheMetadata": "trl_edge.cache.format",
    "SFTTokenization": "trl_edge.cache.tokenize",
    "get_encoding": "trl_edge.cache.encoding",
    "OfflineOnPolicyKDConfig": "trl_edge.trainer.offline_kd_config",
    "OfflineOnPolicyKDTrainer": "trl_edge.trainer.offline_kd_trainer",
    "CachedKDCollator": "trl_edge.trainer.offline_kd_trainer",
    "chunked_kd_loss": "trl_edge.losses",
    "sparse_divergence": "trl_edge.losses",
    "KDLossOutput": "trl_edge.losses",
    "KDLossOptions": "trl_edge.losses",
    "DIVERGENCES": "trl_edge.losses",
    "export_for_edge": "trl_edge.export",
    "ExportReport": "trl_edge.export",
    "FP16OverflowWarning": "trl_edge.export",
    "EDGE_TARGETS": "trl_edge.devices",
    "detect_device": "trl_edge.devices",
    "apply_precision_policy": "trl_edge.devices",
    "Fp16RangeCallback": "trl_edge.trainer.fp16_range_callback",
    "evaluate_fidelity": "trl_edge.evaluation.fidelity",
    "evaluate_generation": "trl_edge.evaluation.generation",
    "run_lm_eval": "trl_edge.evaluation.benchmarks",
    "extract_answer": "trl_edge.evaluation.answers",
    "UniformScorer": "trl_edge.curriculum.scorers",
    "CurriculumArguments": "trl_edge.trainer.curriculum",
    "CurriculumMixin": "trl_edge.trainer.curriculum",
    "CurriculumEdgeTrainer": "trl_edge.trainer.curriculum_edge_trainer",
    "EdgePrecisionArguments": "trl_edge.trainer.edge_precision",
    "EdgePrecisionMixin": "trl_edge.trainer.edge_precision",
    "generate_rollouts": "trl_edge.rollout",
    "RolloutSet": "trl_edge.rollout",
    "RolloutError": "trl_edge.rollout",
    "SamplingSettings": "trl_edge.rollout",
    "ModelLoading": "trl_edge.model_loading",
    "load_causal_lm": "trl_edge.model_loading",
    "load_tokenizer": "trl_edge.model_loading",
    "auto_kd_chunk_size": "trl_edge.losses",
    "make_student": "trl_edge.student",
    "prune_layers": "trl_edge.student",
    "resolve_model_path": "trl_edge.embedded",
    "ensure_embedded_model": "trl_edge.embedded",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'trl_edge' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
