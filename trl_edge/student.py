"""A student made from its teacher by depth pruning: fewer decoder layers, the same width, tokenizer and vocabulary.

Minitron-style (Muralidharan et al. 2024; Sreenivas et al. 2024): keeping evenly spaced layers of the teacher, the
first and last included, gives a student that starts close to the teacher and shares its tokenizer exactly, which
offline distillation from a cached teacher needs (the cache's vocabulary fingerprint must match the student's).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .model_loading import load_causal_lm, load_tokenizer, model_name

# where decoder layers live, relative to the *ForCausalLM model (llama, qwen2/3, mistral, gemma, phi3: model.layers)
LAYER_PATHS = ("model.layers", "model.decoder.layers", "transformer.h", "transformer.layers", "gpt_neox.layers")
# attributes of a layer's modules that hold its index (attention's layer_idx addresses the KV cache)
LAYER_INDEX_ATTRIBUTES = ("layer_idx", "layer_id", "layer_index")
# config fields that hold a layer index as a threshold (layers below it differ from those above) or a list of indices
THRESHOLD_FIELDS = ("max_window_layers", "first_k_dense_replace")
INDEX_LIST_FIELDS = ("mlp_only_layers",)
# config fields that make a layer's kind depend on its index modulo something: pruning would change the pattern
PERIODIC_FIELDS = ("decoder_sparse_step", "moe_layer_freq")
PROVENANCE_FILE = "student_provenance.json"


def evenly_spaced_layers(num_teacher_layers: int, num_layers: int) -> list[int]:
    """``num_layers`` evenly spaced indices out of ``num_teacher_layers``, first and last included (one: the first)."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 1 <= num_layers <= num_teacher_layers:
        raise ValueError(
            f"num_layers must be an integer from 1 to the teacher's {num_teacher_layers} decoder layers, "
            f"got {num_layers!r}."
        )
    if num_layers == 1:
        return [0]
    return [round(i * (num_teacher_layers - 1) / (num_layers - 1)) for i in range(num_layers)]


def decoder_layers(model) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """The module that holds the decoder layers, the attribute name and the ``ModuleList`` itself."""
    for path in LAYER_PATHS:
        *parents, name = path.split(".")
        parent = model
        for attr in parents:
            parent = getattr(parent, attr, None)
        layers = getattr(parent, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return parent, path, layers
    raise ValueError(
        f"Cannot find the decoder layers of {type(model).__name__}: looked for a torch.nn.ModuleList at "
        f"{', '.join(f'model.{path}' for path in LAYER_PATHS)}. Depth pruning supports the llama and qwen2/qwen3 "
        "families and models laid out like them."
    )


def prune_layers(model, keep: Sequence[int]):
    """Keep the decoder layers ``keep`` (sorted teacher indices) of ``model``, in place, and return it.

    The config follows (``num_hidden_layers``, per-layer lists such as ``layer_types``, layer thresholds such as
    ``max_window_layers``) and every module attribute that holds a layer index is renumbered, so the KV cache, which
    is addressed by ``layer_idx``, stays consistent.
    """
    config = model.config
    parent, path, layers = decoder_layers(model)
    num_teacher_layers = len(layers)
    if getattr(config, "num_hidden_layers", None) != num_teacher_layers:
        raise ValueError(
            f"model.{path} holds {num_teacher_layers} layers but the config says num_hidden_layers="
            f"{getattr(config, 'num_hidden_layers', None)}: cannot tell which layers the config describes."
        )
    keep = list(keep)
    if not keep or sorted(set(keep)) != keep or keep[0] < 0 or keep[-1] >= num_teacher_layers:
        raise ValueError(f"keep must be increasing layer indices in [0, {num_teacher_layers}), got {keep}.")
    _prune_config(config, keep, num_teacher_layers)
    for new, old in enumerate(keep):
        for module in layers[old].modules():
            for attr in LAYER_INDEX_ATTRIBUTES:
                value = getattr(module, attr, None)
                if isinstance(value, int) and not isinstance(value, bool) and value == old:
                    setattr(module, attr, new)
    setattr(parent, path.rsplit(".", 1)[-1], torch.nn.ModuleList([layers[i] for i in keep]))
    return model


def make_student(
    teacher,
    num_layers: int,
    output_dir: str | os.PathLike,
    *,
    tokenizer=None,
    revision: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> str:
    """Save a depth-pruned copy of ``teacher`` with ``num_layers`` evenly spaced layers to ``output_dir``.

    ``teacher`` is a name or path (``embedded:NAME`` too), loaded with :func:`trl_edge.model_loading.load_causal_lm`,
    or a model (copied, never modified; then pass its ``tokenizer``). Embeddings, final norm and LM head are the
    teacher's (tied embeddings stay tied). ``output_dir`` gets the model, the teacher's tokenizer and
    ``student_provenance.json`` (teacher, kept layers, parameter counts). Returns ``output_dir``.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an integer of at least 1, got {num_layers!r}.")  # before loading
    is_path = isinstance(teacher, str | os.PathLike)
    if not is_path and tokenizer is None:
        raise ValueError("make_student got a model as teacher: pass its tokenizer too (tokenizer=...).")
    model = load_causal_lm(
        teacher,
        revision=revision,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    teacher_path = model_name(model)
    if teacher_path and Path(teacher_path).is_dir() and Path(output_dir).resolve() == Path(teacher_path).resolve():
        raise ValueError(f"output_dir is the teacher's own directory ({teacher_path}): choose another one.")
    num_teacher_layers = len(decoder_layers(model)[2])
    keep = evenly_spaced_layers(num_teacher_layers, num_layers)
    if tokenizer is None:
        tokenizer = load_tokenizer(teacher, revision=revision, trust_remote_code=trust_remote_code)
    teacher_parameters = _num_parameters(model)
    student = prune_layers(model if is_path else copy.deepcopy(model), keep)  # a model the caller passed stays whole

    os.makedirs(output_dir, exist_ok=True)
    student.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    provenance = {
        "method": "depth pruning: evenly spaced decoder layers, first and last included (Minitron)",
        "teacher": str(teacher) if is_path else teacher_path,
        "teacher_path": teacher_path,
        "teacher_revision": revision,
        "teacher_num_layers": num_teacher_layers,
        "num_layers": len(keep),
        "kept_layers": keep,
        "teacher_parameters": teacher_parameters,
        "student_parameters": _num_parameters(student),
    }
    Path(output_dir, PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return str(output_dir)


def _prune_config(config, keep: list[int], num_teacher_layers: int) -> None:
    """Make ``config`` describe the kept layers only."""
    if getattr(config, "is_heterogeneous", False):
        raise ValueError(
            f"{type(config).__name__} has per-layer config overrides (per_layer_config): depth pruning does not "
            "remap them yet."
        )
    for field in PERIODIC_FIELDS:
        if getattr(config, field, None) not in (None, 0, 1):
            raise ValueError(
                f"{type(config).__name__}.{field}={getattr(config, field)} sets each layer's kind from its index, so "
                "keeping a subset of layers would change it: depth pruning does not support this architecture."
            )
    for field, value in config.to_dict().items():
        if field in INDEX_LIST_FIELDS and isinstance(value, list | tuple):
            setattr(config, field, [keep.index(i) for i in value if i in keep])
        elif field in THRESHOLD_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            setattr(config, field, sum(i < value for i in keep))  # kept layers below it stay below it
        elif "layer" in field and isinstance(value, list | tuple) and len(value) == num_teacher_layers:
            setattr(config, field, [value[i] for i in keep])  # per-layer values: layer_types, mlp_layer_types, ...
    config.num_hidden_layers = len(keep)


def _num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
