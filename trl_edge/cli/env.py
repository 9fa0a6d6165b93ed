"""``trl-edge env``: what to paste into a bug report (versions, devices, launcher config, relevant variables).

torch_npu is looked up, never imported: imported on a host without CANN it breaks ``import torch`` itself.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "evaluate", "safetensors", "torch_npu")
VARIABLES = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_TOOLKIT_HOME",
    "CUDA_VISIBLE_DEVICES",
    "PYTORCH_NPU_ALLOC_CONF",
    "TORCH_DEVICE_BACKEND_AUTOLOAD",
    "HF_HUB_OFFLINE",
)


def _version(package: str) -> str:
    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "not installed"


def collect_env() -> dict[str, str]:
    import trl_edge

    info = {
        "trl-edge version": trl_edge.__version__,
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
    }
    info.update({f"{p} version": _version(p) for p in PACKAGES})
    from ..devices import bf16_supported, cann_sourced, detect_device, fp16_supported

    npu_installed = _version("torch_npu") != "not installed"
    info["CANN environment"] = "sourced" if cann_sourced() else "not sourced"
    if npu_installed and not cann_sourced():
        info["torch_npu"] = "installed but CANN is not sourced: not imported (source set_env.sh to use NPUs)"
    if importlib.util.find_spec("torch") is not None:
        import torch

        device = detect_device()
        info["device"] = device
        info["precision"] = f"bf16: {bf16_supported(device)}, fp16: {fp16_supported(device)}"
        if device == "cuda":
            info["CUDA devices"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        elif device == "npu":
            info["NPU devices"] = ", ".join(torch.npu.get_device_name(i) for i in range(torch.npu.device_count()))
    for name in VARIABLES + tuple(sorted(k for k in os.environ if k.startswith("HCCL_"))):
        info[name] = os.environ.get(name, "unset")
    return info


def print_env() -> None:
    lines = "\n".join(f"- {key}: {value}" for key, value in collect_env().items())
    print(f"\nCopy-paste the following information when reporting an issue:\n\n{lines}\n")
