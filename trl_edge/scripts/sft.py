"""Curriculum SFT script: ``trl-edge sft --config recipe.yaml`` or ``accelerate launch recipes/sft.py --config ...``.

Same arguments as TRL's ``trl sft`` (ScriptArguments, ModelConfig for LoRA/dtype, DatasetMixtureConfig), with
[`~trl_edge.CurriculumSFTConfig`] in place of ``SFTConfig``. ``dataset_name`` may also be a local directory of
data files or a dataset saved with ``save_to_disk``, so recipes run offline.
"""

from __future__ import annotations

from trl_edge.scripts import script_parser
from trl_edge.scripts.loading import load_dataset_dict
from trl_edge.scripts.training_run import set_model_init_kwargs, train_and_save


def load_training_datasets(script_args, dataset_args):
    """The DatasetDict named by the script arguments: a dataset mixture, or one dataset by name or path."""
    from trl import get_dataset

    if dataset_args.datasets:
        return get_dataset(dataset_args)
    return load_dataset_dict(
        script_args.dataset_name,
        script_args.dataset_config,
        script_args.dataset_streaming,
        script_args.dataset_train_split,
    )


def main(script_args, training_args, model_args, dataset_args):
    from trl import get_peft_config, get_quantization_config

    from trl_edge import CurriculumSFTTrainer

    set_model_init_kwargs(training_args, model_args)
    dataset = load_training_datasets(script_args, dataset_args)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(
            f"The dataset has no split {script_args.dataset_train_split!r} (it has {list(dataset)}): "
            "set `dataset_train_split`."
        )
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = dataset[script_args.dataset_test_split]

    trainer = CurriculumSFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    return train_and_save(trainer, training_args, dataset_name=script_args.dataset_name)


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from trl_edge import CurriculumSFTConfig

    return (ScriptArguments, CurriculumSFTConfig, ModelConfig, DatasetMixtureConfig)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None):
    parser = make_parser()
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        argv, fail_with_unknown_args=True
    )
    return main(script_args, training_args, model_args, dataset_args)


if __name__ == "__main__":
    run()
