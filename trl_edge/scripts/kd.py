"""Offline distillation script: ``trl-edge kd --config recipe.yaml`` or ``accelerate launch recipes/offline_kd.py``.

The data is a teacher cache (``teacher_cache``, made by ``trl-edge cache``); ModelConfig flags give LoRA and dtype.
"""

from __future__ import annotations

from trl_edge.scripts import script_parser
from trl_edge.scripts.training_run import set_model_init_kwargs, train_and_save


def main(training_args, model_args):
    from trl import get_peft_config, get_quantization_config

    from trl_edge.trainer.offline_kd_trainer import OfflineOnPolicyKDTrainer

    if not training_args.teacher_cache:
        raise ValueError("Set `teacher_cache`: the directory `trl-edge cache` wrote.")
    set_model_init_kwargs(training_args, model_args)
    trainer = OfflineOnPolicyKDTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    return train_and_save(trainer, training_args)


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    from trl import ModelConfig

    from trl_edge.trainer.offline_kd_config import OfflineOnPolicyKDConfig

    return (OfflineOnPolicyKDConfig, ModelConfig)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None):
    training_args, model_args = make_parser().parse_args_and_config(argv, fail_with_unknown_args=True)
    return main(training_args, model_args)


if __name__ == "__main__":
    run()
