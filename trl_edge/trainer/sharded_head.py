"""The student's LM head for a loss that reads its weight directly, under DDP, FSDP2 and (gathered) ZeRO-3.

The chunked KD loss projects hidden states with ``lm_head.weight`` itself instead of calling the head. Under FSDP2
the weight is a shard (a ``DTensor`` holding ``V / world`` rows) outside the model's forward, and the gradient is
reduce-scattered only for the unsharded parameter FSDP swaps in while the forward runs. So the loss runs *inside* the
wrapped forward (:func:`run_inside_forward`, the forward redirection TRL's DistillationTrainer uses): the wrapper's
pre-forward hooks gather the parameters (accelerate groups the head with the final norm, ``reshard_after_forward=
False``, so it stays gathered until backward), the closed-form gradient lands on the gathered parameter, and FSDP's
post-backward reduce-scatters it onto the shards like any other gradient. With DDP the same redirection makes
``DDP.forward`` arm its reducer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

ZERO3_UNTESTED = (
    "DeepSpeed ZeRO-3 is refused for the distillation loss. What was tried (CPU, DeepSpeed 0.19.8's CPU accelerator "
    "over gloo, 2 ranks): the loss runs inside the engine's forward with the partitioned LM head gathered by "
    "deepspeed.zero.GatheredParameters, and the forward works; the backward fails, because the closed-form head "
    "gradient computed while the head was gathered reaches a parameter ZeRO-3 has partitioned again (numel 0). "
    "accelerate does not launch DeepSpeed on CPU, and no accelerator was available, so nothing else of that path is "
    "tested. Use FSDP2 (recipes/accelerate/*_fsdp2.yaml) for a sharded student, or ZeRO-1/2 (*_zero2.yaml)."
)


def run_inside_forward(wrapper: torch.nn.Module, module: torch.nn.Module, method: Callable, *args, **kwargs):
    """Calls ``method(*args, **kwargs)`` from inside ``wrapper``'s forward (``wrapper`` wraps ``module``; they are one
    object under FSDP2), so the wrapper's hooks run around it: FSDP2 gathers the sharded parameters, DDP arms its
    reducer, DeepSpeed fetches what it partitioned.

    Nothing passes through the wrapper's own arguments: FSDP2 with ``cast_forward_inputs`` would cast the teacher's
    float32 log-probabilities to the parameter dtype.
    """
    own = vars(module).get("forward")  # accelerate's autocast wrapper, when it set one on the instance

    def restore():
        if own is not None:
            module.forward = own
        else:
            vars(module).pop("forward", None)

    def redirected(*_args, **_kwargs):
        restore()  # the method may call the real forward
        return method(*args, **kwargs)

    module.forward = redirected
    try:
        return wrapper()
    finally:
        restore()


def sharding_of(trainer) -> str:
    """``"none"`` (one device, DDP, ZeRO-1/2), ``"fsdp2"``; raises for FSDP1 and ZeRO-3, which the loss cannot use."""
    if trainer.is_fsdp_enabled:
        version = getattr(trainer.accelerator.state.fsdp_plugin, "fsdp_version", 1)
        if version != 2:
            raise NotImplementedError(
                "The distillation loss reads the LM head's weight inside the model's forward, which FSDP1's flat "
                "parameters do not expose. Use FSDP2: `fsdp_version: 2` in the accelerate config "
                "(recipes/accelerate/*_fsdp2.yaml)."
            )
        return "fsdp2"
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise NotImplementedError(ZERO3_UNTESTED)
    return "none"


def _is_dtensor(tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return False
    return isinstance(tensor, DTensor)


def head_for_loss(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The head's ``(weight, bias)`` as full tensors, from inside the wrapped forward.

    A ``DTensor`` here means the FSDP2 unit holding the head resharded it after its own forward (the head wrapped on
    its own with ``reshard_after_forward=True``): its gradient would then bypass FSDP's reduce-scatter, so this
    refuses rather than train each rank on its own gradient.
    """
    weight, bias = head.weight, head.bias
    if _is_dtensor(weight) or _is_dtensor(bias):
        raise ValueError(
            "The LM head's weight is still sharded inside the model's forward: the FSDP2 config wraps the head in a "
            "unit of its own that reshards after its forward, so the distillation loss cannot gather it and have "
            "its gradient reduce-scattered. Leave the head to the root unit or group it with the final norm with "
            "`reshard_after_forward=False` (what accelerate's FSDP2 wrapping does), or do not wrap `lm_head` alone."
        )
    return weight, bias


def gathered_zero3(*params) -> object:
    """A context that gathers ZeRO-3-partitioned parameters for a direct read (a null context otherwise).

    Parameters already available (a head tied to the input embedding, fetched by its forward) are left alone:
    re-partitioning them on exit would break the embedding's own release.
    """
    try:
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus
    except ImportError:
        return nullcontext()
    unique = {id(p): p for p in params if p is not None and hasattr(p, "ds_status")}
    pending = [p for p in unique.values() if p.ds_status != ZeroParamStatus.AVAILABLE]
    if not pending:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(pending)
