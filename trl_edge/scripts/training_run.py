"""What every training script does around its trainer: model loading options in, training, saving, reporting out."""

from __future__ import annotations

import os


def set_model_init_kwargs(training_args, model_args) -> None:
    """Pass ModelConfig's loading options (revision, dtype, attention) to the trainer, as TRL's scripts do."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if training_args.model_init_kwargs is not None:
        kwargs.update(training_args.model_init_kwargs)
    training_args.model_init_kwargs = kwargs


def train_and_save(trainer, training_args, **push_kwargs):
    """Train (resuming if asked), save, say where, push if asked, and close the trackers."""
    import transformers
    from packaging.version import Version

    from ..trainer.sharded_save import save_plain_model

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    save_plain_model(trainer, training_args.output_dir)  # FSDP's sharded state dict left no loadable weights
    trainer.save_state()  # trainer_state.json: the loss curves a pipeline report plots
    trainer.accelerator.print(f"Model saved to {os.path.abspath(training_args.output_dir)}")
    if training_args.push_to_hub:
        trainer.push_to_hub(**push_kwargs)
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()
    return trainer
