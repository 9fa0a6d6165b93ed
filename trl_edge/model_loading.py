"""Loading models and tokenizers: the one place that knows revision, dtype, custom code, device map and attention.

Teachers, reference models, rollout policies, evaluation and export all load through :func:`load_causal_lm`, so a
model with custom modelling code (openPangu: ``trust_remote_code``) or one too large for a device
(``device_map="auto"``) works everywhere the same way.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from .embedded import resolve_model_path

DTYPE_NAMES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelLoading:
    """How to load a model: the ``from_pretrained`` options trl-edge exposes on every command that loads one."""

    revision: str | None = field(default=None, metadata={"help": "Model revision (branch, tag or commit)."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Weights dtype: `auto` (bf16 where the device supports it, else fp32), bfloat16, float16, "
            "float32.",
            "choices": list(DTYPE_NAMES),
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own modelling code (e.g. openPangu); read it first."}
    )
    device_map: str | None = field(
        default=None,
        metadata={"help": "`auto` spreads a model too large for one device over all visible ones (accelerate)."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel: eager, sdpa, flash_attention_2 (NPU: fused attention)."}
    )

    def kwargs(self) -> dict:
        return asdict(self)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device | str | None = None) -> torch.dtype:
    """A torch dtype for ``dtype``; ``auto`` is bf16 on an accelerator that has it, fp32 otherwise (CPU included)."""
    from .devices import bf16_supported

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        kind = torch.device(device).type if device is not None else "cpu"
        return torch.bfloat16 if kind != "cpu" and bf16_supported(kind) else torch.float32
    name = str(dtype).replace("torch.", "")
    if name not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_NAMES)}.")
    return getattr(torch, name)


def load_causal_lm(
    model,
    *,
    revision: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    device: torch.device | str | None = None,
):
    """A causal LM from a name or path (``from_pretrained``; ``embedded:NAME`` too), or ``model`` when it is one.

    Without ``device_map`` the model is moved to ``device`` (when given); with it, accelerate places the layers and
    ``device`` is ignored.
    """
    if not isinstance(model, str | os.PathLike):
        return model if device is None or device_map is not None else model.to(device)
    from transformers import AutoModelForCausalLM

    kwargs = dict(revision=revision, dtype=resolve_dtype(dtype, device), trust_remote_code=trust_remote_code)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if device_map is not None:
        kwargs["device_map"] = device_map
    loaded = AutoModelForCausalLM.from_pretrained(str(resolve_model_path(model)), **kwargs)
    if device_map is None and device is not None:
        loaded = loaded.to(device)
    return loaded


def load_tokenizer(name_or_path, *, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer (``AutoTokenizer``) of a model name or path."""
    from transformers import AutoTokenizer

    path = str(resolve_model_path(name_or_path))  # embedded:NAME -> its converted local copy
    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)


def model_name(model) -> str:
    """The name or path a model was loaded from (what metadata records)."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    from .compat import config_name_or_path

    name = config_name_or_path(getattr(model, "config", None))
    return str(type(model).__name__ if name is None else name)


def input_device(model) -> torch.device:
    """Where a model's inputs go: its embeddings' device (the first device of a ``device_map`` model)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device
