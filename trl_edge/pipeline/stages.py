"""What each kind of stage runs: the config it writes for its script, the command that runs it in its own process,
where its main artifact lands, and how it resumes from the inside.

Training, sampling and caching stages run under ``accelerate launch`` (through the ``trl-edge`` console script, with
the stage's ``accelerate_config``); evaluation, export and student making run as plain processes. Either way the
stage's memory is released before the next stage starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from .config import PipelineError


@dataclass(frozen=True)
class StageKind:
    command: str  # the `trl-edge` subcommand (its script module, for the stages run under accelerate launch)
    artifact: str  # the stage's main artifact, inside its directory
    model_key: str | None  # the config key naming the model the stage loads (None: the stage takes no model)
    dataset_key: str | None  # the config key naming its data
    launched: bool  # run under accelerate launch (accepts --accelerate_config)
    trains: bool = False  # a trainer: resumes from its latest checkpoint

    def script_config(self, settings: dict, stage_dir: Path, round_: int | None) -> dict:
        """The stage script's configuration: the stage's settings, with the names the script uses."""
        config = dict(settings)
        out = stage_dir / self.artifact
        if self.model_key and "model" in config:
            config[self.model_key] = config.pop("model")
        if self.dataset_key and "dataset" in config and self.dataset_key != "dataset":
            config[self.dataset_key] = config.pop("dataset")
        config["output_dir"] = str(out)
        if self.command == "rollout" and round_ is not None:
            config.setdefault("round", round_)
            config["seed"] = int(config.get("seed", 0)) + round_  # each round draws afresh
        return config

    def argv(self, config_path: Path, config: dict, accelerate_config: str | None) -> list[str]:
        """The command line that runs the stage in its own process.

        A launched stage goes straight to ``accelerate launch -m trl_edge.scripts.NAME`` (the pipeline has already
        checked its config), so the stage pays for one Python start, not two.
        """
        if self.launched:
            from ..cli.launch import launch_flags

            module = f"trl_edge.scripts.{SCRIPT_MODULES[self.command]}"
            return [sys.executable, "-m", "accelerate.commands.launch", *launch_flags(accelerate_config),
                    "-m", module, "--config", str(config_path)]  # fmt: skip
        base = [sys.executable, "-m", "trl_edge.cli.main", self.command]
        if self.command in ("make-student", "export"):  # plain argparse commands: the config as flags
            return base + _flags(config)
        return base + ["--config", str(config_path)]


def _flags(config: dict) -> list[str]:
    args = []
    model = config.pop("model_path", None)
    if model is not None:
        args.append(str(model))
    for key, value in config.items():
        if value is None or value is False:
            continue
        args.append(f"--{key}")
        if value is not True:
            args.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return args


SCRIPT_MODULES = {"sft": "sft", "rollout": "rollout", "teacher-answers": "teacher_answers", "cache": "cache_teacher",
                  "kd": "kd"}  # fmt: skip

KINDS = {
    "make_student": StageKind("make-student", "model", "teacher", None, launched=False),
    "teacher_answers": StageKind("teacher-answers", "answers", "model_name_or_path", "dataset", launched=True),
    "sft": StageKind("sft", "model", "model_name_or_path", "dataset_name", launched=True, trains=True),
    "rollout": StageKind("rollout", "rollouts", "model_name_or_path", "dataset", launched=True),
    "cache": StageKind("cache", "cache", None, "dataset", launched=True),
    "kd": StageKind("kd", "model", "model_name_or_path", None, launched=True, trains=True),
    "eval": StageKind("eval", "eval", "model", None, launched=False),
    "export": StageKind("export", "export", "model_path", None, launched=False),
}


def validate_script_config(kind: str, config: dict, where: str) -> None:
    """Check the stage's config keys against its script's own dataclasses, so that a typo fails at plan time.

    Only the names are checked here, not the values: building a training config would also check the hardware
    (bf16 on a GPU, say), which the host that plans a pipeline need not have. ``parse_script_config`` builds them.
    """
    import difflib
    from dataclasses import fields

    dataclass_types = _dataclass_types(kind)
    if dataclass_types is None:
        return
    known = {f.name for cls in dataclass_types for f in fields(cls)}
    for key in config:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PipelineError(f"{where}: {key!r} is not a setting of a {kind} stage{hint}.")


def parse_script_config(kind: str, config: dict):
    """The stage script's dataclasses built from ``config``, as the stage's process will build them."""
    from transformers import HfArgumentParser

    return HfArgumentParser(_dataclass_types(kind)).parse_dict(config, allow_extra_keys=False)


def _dataclass_types(kind: str):
    if kind == "sft":
        from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

        from ..trainer.curriculum_sft_config import CurriculumSFTConfig

        return (ScriptArguments, CurriculumSFTConfig, ModelConfig, DatasetMixtureConfig)
    if kind == "kd":
        from trl import ModelConfig

        from ..trainer.offline_kd_config import OfflineOnPolicyKDConfig

        return (OfflineOnPolicyKDConfig, ModelConfig)
    if kind == "rollout":
        from ..scripts.rollout import RolloutArguments

        return (RolloutArguments,)
    if kind == "teacher_answers":
        from ..scripts.teacher_answers import TeacherAnswersArguments

        return (TeacherAnswersArguments,)
    if kind == "cache":
        from ..scripts.cache_teacher import CacheTeacherArguments

        return (CacheTeacherArguments,)
    if kind == "eval":
        from ..model_loading import ModelLoading
        from ..scripts.evaluate import EvalArguments

        return (EvalArguments, ModelLoading)
    return None


def check_kind(kind: str) -> StageKind:
    if kind not in KINDS:
        raise PipelineError(f"Unknown stage kind {kind!r}; choose one of {', '.join(KINDS)}.")
    return KINDS[kind]
