"""Every private TRL / transformers name trl-edge relies on, in one place, each with what it is used for.

A private name can change in any release; here is where such a change lands, and ``tests/test_compat.py`` checks
each one (that it exists, with the signature and the attributes used here) against the installed versions, naming
the symbol and the version when one breaks. Hooks meant to be overridden (``Trainer._get_train_sampler``,
``Trainer._set_signature_columns_if_needed``, ``_tag_names``) are listed in :data:`TRAINER_HOOKS` and checked too,
but are overridden where they belong, in the trainers.
"""

from __future__ import annotations

from types import SimpleNamespace

# Hooks and attributes of transformers' Trainer / TRL's SFTTrainer that trl-edge's trainers override or read:
# name -> what for. The trainers use them directly; the test checks that each still exists.
TRAINER_HOOKS = {
    "_get_train_sampler": "Trainer hook: CurriculumMixin returns the CurriculumSampler (the training order).",
    "_set_signature_columns_if_needed": "Trainer hook: the KD trainer keeps its cache_id/cache_index columns.",
    "_tag_names": "TRL class attribute: the tags of the model card the trainer writes.",
}

# What the stand-in for an SFTTrainer carries into ``SFTTrainer._prepare_dataset``: the attributes it reads of
# `self`, and those it reads of `args` (besides the SFTConfig tokenization fields the caller passes).
SFT_PREPARE_SELF_ATTRIBUTES = ("_tokenizer", "chat_template", "completion_only_loss")
SFT_PREPARE_ARGS = {"shuffle_dataset": False, "packing_strategy": "bfd", "seed": 0}


def prepare_dataset_like_sft(dataset, processing_class, tokenization: dict, *, tokenizer, chat_template,
                             completion_only_loss: bool, dataset_name: str = "cache"):  # fmt: skip
    """``SFTTrainer._prepare_dataset`` (private, TRL): SFT's own tokenization of a dataset, without a trainer.

    Used by ``cache.tokenize.prepare_like_sft``, so that a teacher cache holds exactly the sequences and loss masks
    SFTTrainer would train on (chat template, EOS, completion/assistant masks, truncation, dropping fully masked
    rows). It is called unbound on a stand-in carrying the three attributes it reads of the trainer
    (:data:`SFT_PREPARE_SELF_ATTRIBUTES`), with the SFTConfig fields ``tokenization`` holds; never packed or
    shuffled.
    """
    from trl import SFTTrainer

    stand_in = SimpleNamespace(_tokenizer=tokenizer, chat_template=chat_template,
                               completion_only_loss=completion_only_loss)  # fmt: skip
    args = SimpleNamespace(**tokenization, **SFT_PREPARE_ARGS)
    return SFTTrainer._prepare_dataset(
        stand_in, dataset, processing_class, args, packing=False, formatting_func=None, dataset_name=dataset_name
    )


def tokenize_like_sft(processing_class, prompt, **apply_chat_template_kwargs) -> dict:
    """``trl.data_utils._tokenize`` (private, TRL): a prompt (messages or text) tokenized as SFTTrainer tokenizes
    one, through the chat template (with ``apply_chat_template_kwargs``, e.g. ``add_generation_prompt``) or the
    tokenizer itself.

    Used by ``rollout.writer.tokenize_prompts``: the rollouts' prompt ids are the ones SFT would see.
    """
    from trl.data_utils import _tokenize

    return _tokenize(processing_class, prompt, **apply_chat_template_kwargs)


def config_name_or_path(config) -> str | None:
    """``PretrainedConfig._name_or_path`` (private, transformers): the name or path a model was loaded from.

    Used to name a model (its provenance, the default output directory of a trainer built without a config).
    """
    return getattr(config, "_name_or_path", None)


def log_trainer_metric(trainer, mode: str, name: str, value: float) -> None:
    """``SFTTrainer._metrics`` (private, TRL): the per-mode lists SFTTrainer averages into each log.

    Used by the KD trainer to log ``kd_loss``, ``ce_loss``, ... the way SFTTrainer logs its own metrics.
    """
    trainer._metrics[mode][name].append(value)


def count_train_tokens(trainer, tokens: int) -> None:
    """``SFTTrainer._total_train_tokens`` (private, TRL): the running count SFTTrainer logs as ``num_tokens``.

    Used by the KD trainer, whose ``compute_loss`` replaces the one that counts them.
    """
    trainer._total_train_tokens += tokens
    trainer._metrics["train"]["num_tokens"] = [trainer._total_train_tokens]


def accelerate_simple_launch(launch_argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """What ``accelerate launch LAUNCH_ARGV`` would run in one process: (module, its args, its environment).

    accelerate's private ``_validate_launch_command`` fills the flags from the config file, as ``launch_command``
    does before its simple launcher; the warm pipeline stages (``pipeline/warm.py``) run the module in-process with it.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(launch_argv))
    _, env = prepare_simple_launcher_cmd_env(args)
    return args.training_script, list(args.training_script_args), env
