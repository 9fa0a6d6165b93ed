"""Which device a job runs on, decided without importing a device backend (torch_npu) ourselves."""

from __future__ import annotations

import torch


def has_accelerator() -> bool:
    """Whether torch sees a GPU/NPU/XPU/MPS. torch_npu registers itself through torch's backend autoload."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def partial_state(use_cpu: bool | None = None):
    """accelerate's process state; on a host without accelerators, processes join a gloo group on the CPU.

    Without ``cpu=True`` accelerate gives several processes launched on a CPU-only host no process group at all:
    each would believe it is alone and redo the whole job.
    """
    from accelerate import PartialState

    if use_cpu is None:
        use_cpu = not has_accelerator()
    return PartialState(cpu=use_cpu)
