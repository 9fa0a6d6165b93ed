"""Which device a job runs on, what precision it can train in, and whether its processes form a group.

Nothing here imports torch_npu at module import: installed on a host without CANN it breaks ``import torch``
itself. It is imported only when a function is called and CANN's environment is sourced.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

logger = logging.getLogger(__name__)

# Edge parts that run inference only, without bf16: a student meant for them must be fp16-safe.
EDGE_TARGETS = {
    "atlas-200i-a2": "Atlas 200I A2 (Ascend 310B class): fp16/int8 inference, no bf16",
    "atlas-310b": "Ascend 310B: fp16/int8 inference, no bf16",
    "atlas-300i": "Atlas 300I (Ascend 310P class): fp16/int8 inference, no bf16",
    "fp16": "any fp16-only device",
}
FP16_MAX = 65504.0
CANN_VARIABLES = ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH", "ASCEND_OPP_PATH")


def cann_sourced() -> bool:
    """Whether CANN's set_env.sh has been sourced in this environment."""
    return any(os.environ.get(name) for name in CANN_VARIABLES)


def shield_torch_npu() -> None:
    """On a host without CANN, keep torch_npu from being imported by anyone in this process and its children.

    torch-npu installed without CANN breaks ``import torch`` (torch's backend autoload imports it) and
    transformers imports it as soon as it is installed. Without CANN it cannot work anyway, so hide it: torch
    skips the autoload and ``importlib.util.find_spec("torch_npu")`` answers None.
    """
    if cann_sourced():
        return
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    if "torch_npu" not in sys.modules:
        sys.modules["torch_npu"] = None  # the import system's own "not available" marker


def npu_available() -> bool:
    """Whether an Ascend NPU is usable. Imports torch_npu only if it is installed and CANN is sourced."""
    import torch

    if sys.modules.get("torch_npu", False) is None:
        return False
    if "torch_npu" not in sys.modules:
        if importlib.util.find_spec("torch_npu") is None or not cann_sourced():
            return False
        try:
            import torch_npu  # noqa: F401
        except Exception as err:  # a broken CANN install: report, do not crash the caller
            logger.warning("torch_npu is installed but cannot be imported (%s); not using NPUs.", err)
            return False
    npu = getattr(torch, "npu", None)
    return bool(npu is not None and npu.is_available())


def detect_device() -> str:
    """``npu``, ``cuda``, ``xpu``, ``mps`` or ``cpu``: NPUs first, as accelerate does."""
    import torch

    if npu_available():
        return "npu"
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def has_accelerator() -> bool:
    return detect_device() != "cpu"


def bf16_supported(device) -> bool:
    """Whether ``device`` (a type name such as ``"cuda"``, or a ``torch.device``) can compute in bf16."""
    import torch

    device = getattr(device, "type", device)
    if device == "npu":
        return bool(torch.npu.is_bf16_supported())
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    if device == "xpu":
        return True
    return device == "cpu"  # CPU autocast supports bf16; MPS training in bf16 is not reliable


def fp16_supported(device: str) -> bool:
    return device in ("npu", "cuda", "xpu")


def apply_precision_policy(config, device: str | None = None) -> None:
    """Choose bf16/fp16 before TRL's default (bf16 whenever fp16 is unset, on every device) applies.

    - ``edge_target`` set: no bf16 (the target has none); fp16 mixed precision where the training device has it,
      fp32 otherwise. An explicit ``bf16=True`` is refused.
    - bf16 left unset on an NPU/GPU without bf16: fp16 instead of a crash.
    Explicit settings are otherwise left alone.
    """
    if config.use_cpu:
        device = "cpu"
    target = getattr(config, "edge_target", None)
    if target is not None:
        if target not in EDGE_TARGETS:
            raise ValueError(f"Unknown `edge_target` {target!r}; choose one of {', '.join(EDGE_TARGETS)}.")
        if config.bf16:
            raise ValueError(
                f"`edge_target={target!r}` ({EDGE_TARGETS[target]}) has no bf16, but `bf16=True` was set. Train in "
                "fp16 (`fp16: true`) or fp32 so that the student stays within the fp16 range."
            )
        device = device or detect_device()
        config.bf16 = False
        if config.fp16 is None or config.fp16 is False:
            config.fp16 = fp16_supported(device)
        return
    if config.bf16 is None and not config.fp16:
        device = device or detect_device()
        if device != "cpu" and not bf16_supported(device):
            logger.warning("This %s has no bf16: training in fp16 mixed precision instead.", device)
            config.bf16, config.fp16 = False, fp16_supported(device)


def check_process_group(num_processes: int) -> None:
    """Stop a multi-process launch whose processes did not join a process group.

    accelerate starts one process per device of a MULTI_NPU/MULTI_GPU config; on a host where none of those devices
    is usable (CANN not sourced, torch_npu missing, no GPU) each process then trains alone, on the whole dataset.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        raise RuntimeError(
            f"{launched} processes were launched, but they are not in a process group: each would train alone on "
            f"the whole dataset. The launch config expects accelerators that this host cannot use (detected: "
            f"{detect_device()}; CANN sourced: {cann_sourced()}). On NPUs, source CANN's set_env.sh and check "
            "ASCEND_RT_VISIBLE_DEVICES; on GPUs, check CUDA_VISIBLE_DEVICES; to test on CPUs, launch with "
            "recipes/accelerate/cpu_2proc.yaml and `use_cpu: true`."
        )


def partial_state(use_cpu: bool | None = None):
    """accelerate's process state; on a host without accelerators, processes join a gloo group on the CPU.

    Without ``cpu=True`` accelerate gives several processes launched on a CPU-only host no process group at all:
    each would believe it is alone and redo the whole job.
    """
    from accelerate import PartialState

    if use_cpu is None:
        use_cpu = not has_accelerator()
    state = PartialState(cpu=use_cpu)
    check_process_group(state.num_processes)
    return state
