"""The final model of a sharded run as a plain transformers checkpoint, whatever the FSDP state-dict type.

With ``fsdp_state_dict_type: SHARDED_STATE_DICT`` (what a 7B student wants: no rank gathers the optimizer state at
each checkpoint) ``Trainer.save_model`` writes no weights at all, only the ``pytorch_model_fsdp_0/`` shards inside
``checkpoint-N``. The next stage and ``trl-edge export`` load ``from_pretrained``, so the end of a run gathers the
weights once (to the CPU of rank 0) and saves them as ``model.safetensors`` + config + tokenizer.
"""

from __future__ import annotations


def gathered_state_dict(model) -> dict:
    """Every parameter and buffer of an FSDP2 model, gathered in full on the CPU (a collective: call on all ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def saves_sharded(trainer) -> bool:
    """Whether ``trainer.save_model`` leaves no loadable weights (FSDP with a sharded state dict)."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return False
    return "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type)


def save_plain_model(trainer, output_dir: str) -> bool:
    """After ``trainer.save_model``: write the gathered weights where a sharded state dict left none (all ranks
    call it; rank 0 writes). Returns whether it wrote."""
    if not saves_sharded(trainer):
        return False
    state_dict = gathered_state_dict(trainer.model)
    trainer._save(output_dir, state_dict=state_dict)  # model.safetensors, config, tokenizer; on the saving rank only
    trainer.accelerator.wait_for_everyone()
    return True
