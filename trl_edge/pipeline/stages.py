"""What each kind of stage runs: the config it writes for its script, the command that runs it in its own process,
where its main artifact lands, and how it resumes from the inside.

Training, sampling and caching stages run under ``accelerate launch`` (through the ``trl-edge`` console script, with
the stage's ``accelerate_config``); evaluation, export and student making run as plain processes. Either way the
stage's memory is released before the next stage starts.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path


class PipelineError(ValueError):
    """A pipeline file that cannot run as written: say what, where, and how to fix it."""


# Files a trainer leaves next to its weights that differ between two runs of the same stage (transformers' names)
_TRAINER_FILES = ("training_args.bin", "trainer_state.json", "README.md")


@dataclass(frozen=True)
class StageKind:
    """One kind of stage, everything the pipeline file, the runner and the ``trl-edge`` console script know of it.

    Its ``name`` is how a pipeline file spells it (``kind: teacher_answers``) and its script module's name
    (``trl_edge.scripts.teacher_answers``); its ``command`` is the ``trl-edge`` subcommand (``teacher-answers``).
    """

    name: str
    help: str  # the `trl-edge` subcommand's help
    artifact: str  # the stage's main artifact, inside its directory
    model_key: str | None  # the config key naming the model the stage loads (None: the stage takes no model)
    dataset_key: str | None  # the config key naming its data
    launched: bool  # run under accelerate launch (accepts --accelerate_config)
    script: bool = True  # a TrlParser script in trl_edge.scripts (config as --config FILE); else an argparse command
    trains: bool = False  # a trainer: resumes from its latest checkpoint
    makes_model: bool = False  # its output is the current student (`@model`) for the stages after it
    # Files of its artifact that differ between two runs of the same work (timings, the paths it was given,
    # provenance naming them): left out of the artifact's hash. The owners' constants (test_pipeline pins them).
    volatile_files: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def script_module(self) -> str | None:
        return f"trl_edge.scripts.{self.name}" if self.script else None

    def dataclass_types(self) -> tuple | None:
        """Its script's config dataclasses (None for an argparse command)."""
        if not self.script:
            return None
        return importlib.import_module(self.script_module).dataclass_types()

    def script_config(self, settings: dict, stage_dir: Path, round_: int | None) -> dict:
        """The stage script's configuration: the stage's settings, with the names the script uses."""
        config = dict(settings)
        out = stage_dir / self.artifact
        if self.model_key and "model" in config:  # every stage names its model `model`; its script, as it likes
            if self.model_key != "model" and self.model_key in config:
                raise PipelineError(f"A {self.name} stage takes its model once: as `model` or as `{self.model_key}`, "
                                    "not both.")  # fmt: skip
            config[self.model_key] = config.pop("model")
        if self.dataset_key and "dataset" in config and self.dataset_key != "dataset":
            config[self.dataset_key] = config.pop("dataset")
        config["output_dir"] = str(out)
        if self.name == "rollout" and round_ is not None:
            config.setdefault("round", round_)
            config["seed"] = int(config.get("seed", 0)) + round_  # each round draws afresh
        if self.name == "teacher_answers":
            config.setdefault("rollouts_dir", str(stage_dir / "rollouts"))
        return config

    def argv(self, config_path: Path, config: dict, accelerate_config: str | None) -> list[str]:
        """The command line that runs the stage in its own process.

        A launched stage goes straight to ``accelerate launch -m trl_edge.scripts.NAME`` (the pipeline has already
        checked its config), so the stage pays for one Python start, not two.
        """
        if self.launched:
            from ..launch_flags import launch_flags

            return [sys.executable, "-m", "accelerate.commands.launch", *launch_flags(accelerate_config),
                    "-m", self.script_module, "--config", str(config_path)]  # fmt: skip
        base = [sys.executable, "-m", "trl_edge.cli.main", self.command]
        if not self.script:  # plain argparse commands: the config as flags
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


KINDS = {kind.name: kind for kind in (
    StageKind("make_student", "Depth-prune a teacher into a student: N evenly spaced layers", "model", "teacher",
              None, launched=False, script=False, makes_model=True, volatile_files=("student_provenance.json",)),
    StageKind("teacher_answers", "The teacher writes the SFT answers of a prompt set", "answers",
              "model_name_or_path", "dataset", launched=True),
    StageKind("sft", "Curriculum SFT (CurriculumSFTTrainer), launched with accelerate", "model", "model_name_or_path",
              "dataset_name", launched=True, trains=True, makes_model=True, volatile_files=_TRAINER_FILES),
    StageKind("rollout", "On-policy data: the student samples completions of a prompt set (token-exact)", "rollouts",
              "model_name_or_path", "dataset", launched=True, volatile_files=("rollouts.json",)),
    StageKind("cache", "Cache teacher logits once for offline distillation; `cache verify DIR` checks a cache",
              "cache", "teacher", "dataset", launched=True, volatile_files=("metadata.json",)),
    StageKind("kd", "Offline on-policy distillation from a teacher cache (OfflineOnPolicyKDTrainer)", "model",
              "model_name_or_path", None, launched=True, trains=True, makes_model=True,
              volatile_files=(*_TRAINER_FILES, "distillation_sources.json")),
    StageKind("eval", "Evaluate a checkpoint: teacher fidelity, generation quality, lm-eval benchmarks", "eval",
              "model", None, launched=False),
    StageKind("export", "fp16-safety report, fp16 safetensors and static-shape ONNX for ATC", "export", "model_path",
              None, launched=False, script=False, volatile_files=("export_report.json",)),
)}  # fmt: skip
STAGE_KINDS = tuple(KINDS)
MODEL_KINDS = tuple(name for name, kind in KINDS.items() if kind.makes_model)  # the stages whose output is `@model`


def validate_script_config(kind: str, config: dict, where: str) -> None:
    """Check the stage's config keys against its script's own dataclasses, so that a typo fails at plan time.

    Only the names are checked here, not the values: building a training config would also check the hardware
    (bf16 on a GPU, say), which the host that plans a pipeline need not have. ``parse_script_config`` builds them.
    """
    import difflib
    from dataclasses import fields

    dataclass_types = KINDS[kind].dataclass_types()
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

    return HfArgumentParser(KINDS[kind].dataclass_types()).parse_dict(config, allow_extra_keys=False)
