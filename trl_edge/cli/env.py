"""``trl-edge env``: what to paste into a bug report (versions, devices, launcher config, relevant variables).

torch_npu is looked up, never imported: imported on a host without CANN it breaks ``import torch`` itself.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "evaluate", "safetensors", "torch_npu")
VARIABLES = ("ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES", "PYTORCH_NPU_ALLOC_CONF", "HF_HUB_OFFLINE")


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
    if importlib.util.find_spec("torch") is not None:
        os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # do not import torch_npu behind our back
        import torch

        if torch.cuda.is_available():
            info["CUDA devices"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        else:
            info["CUDA devices"] = "none"
    info["torch_npu"] = (
        "installed (not imported by `trl-edge env`)" if importlib.util.find_spec("torch_npu") else "not installed"
    )
    info["CANN environment"] = "sourced" if os.environ.get("ASCEND_TOOLKIT_HOME") else "not sourced"
    for name in VARIABLES + tuple(sorted(k for k in os.environ if k.startswith("HCCL_"))):
        info[name] = os.environ.get(name, "unset")
    return info


def print_env() -> None:
    lines = "\n".join(f"- {key}: {value}" for key, value in collect_env().items())
    print(f"\nCopy-paste the following information when reporting an issue:\n\n{lines}\n")
