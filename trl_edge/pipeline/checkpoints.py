"""Which ``checkpoint-N`` an interrupted training stage can resume from: the newest one that was completely written.

transformers' ``Trainer._save_checkpoint`` writes, in this order: the model (``model.safetensors``, or its shards and
``model.safetensors.index.json``, or a PEFT ``adapter_model.safetensors``; config, tokenizer), unless
``save_only_model``: ``optimizer.pt``, ``scheduler.pt`` (``scaler.pt`` with a scaler) and ``rng_state.pth`` (one
``rng_state_R.pth`` per rank); then ``trainer_state.json``; and only after that deletes the checkpoints past
``save_total_limit``. So a kill during a write leaves a newest checkpoint without a readable ``trainer_state.json``
and the previous one intact. Complete here means: ``trainer_state.json`` parses and names step ``N``, the model's
weights are there and every safetensors file is as long as its header says, and the optimizer, scheduler and RNG
files are all there (or none of them, for ``save_only_model``) and are whole torch zip archives. Checking reads
headers and zip directories only, never the tensors.

Under FSDP the Trainer saves the model and optimizer with accelerate's ``save_fsdp_model`` /
``save_fsdp_optimizer``: ``pytorch_model_fsdp_0/`` and ``optimizer_0/`` (torch.distributed.checkpoint directories,
whose ``.metadata`` is written after every rank's data) with a sharded state dict, ``pytorch_model_fsdp.bin`` and
``optimizer.bin`` with a full one; those count as the model and the optimizer.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
           "pytorch_model_fsdp.bin", "pytorch_model_fsdp_0/.metadata")  # fmt: skip
OPTIMIZERS = ("optimizer.pt", "optimizer.bin", "optimizer_0/.metadata")  # plain, FSDP full, FSDP sharded


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{path.name} is truncated ({size} bytes)"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return f"{path.name} is truncated (header past the end of the file)"
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} has an unreadable header"
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end != size:
        return f"{path.name} is truncated ({size} bytes, its header says {8 + header_len + end})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):  # torch.save's format is a zip archive: its directory is written last
        return f"{path.name} is truncated or not a torch file"
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError) as err:
        return f"{path.name} is unreadable ({err})"
    return None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` (a ``checkpoint-N`` directory) cannot be resumed from, or None when it is complete."""
    checkpoint = Path(checkpoint)
    state_path = checkpoint / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (the Trainer writes it last: the save was interrupted)"
    try:
        state = json.loads(state_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "trainer_state.json is truncated"
    step = checkpoint.name.rsplit("-", 1)[-1]
    if str(state.get("global_step")) != step:
        return f"trainer_state.json says step {state.get('global_step')}, the directory step {step}"
    if not any((checkpoint / name).is_file() for name in WEIGHTS):
        if (checkpoint / "pytorch_model_fsdp_0").is_dir():
            return "pytorch_model_fsdp_0/ has no .metadata (torch.distributed.checkpoint writes it last)"
        return f"no model weights ({', '.join(WEIGHTS)})"
    index = checkpoint / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            return "model.safetensors.index.json is unreadable"
        missing = sorted(s for s in shards if not (checkpoint / s).is_file())
        if missing:
            return f"weight shard {missing[0]} is missing"
    for path in sorted(checkpoint.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            return problem
    rng = sorted(checkpoint.glob("rng_state*.pth"))
    optimizer = next((checkpoint / n for n in OPTIMIZERS if (checkpoint / n).is_file()), None)
    scheduler = checkpoint / "scheduler.pt"
    if optimizer is None and (checkpoint / "optimizer_0").is_dir():
        return "optimizer_0/ has no .metadata (torch.distributed.checkpoint writes it last: the save was interrupted)"
    if rng or scheduler.exists() or optimizer is not None:  # not save_only_model: the whole training state
        missing = ([] if optimizer else ["optimizer.pt"]) + ([] if scheduler.is_file() else ["scheduler.pt"])
        missing += [] if rng else ["rng_state.pth"]
        if missing:
            return f"{missing[0]} is missing"
    torch_files = [scheduler, checkpoint / "scaler.pt", *rng, checkpoint / "pytorch_model_fsdp.bin"]
    if optimizer is not None and optimizer.name != ".metadata":  # a DCP directory has no zip to check
        torch_files.append(optimizer)
    for path in torch_files:
        if path.is_file():
            problem = _torch_file_problem(path)
            if problem:
                return problem
    return None


def resumable_checkpoint(output_dir: Path) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete ``checkpoint-N`` under ``output_dir`` (None if there is none), and the newer incomplete
    ones skipped on the way, each with the reason."""
    checkpoints = [p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and p.is_dir()]
    skipped = []
    for checkpoint in sorted(checkpoints, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint), skipped
        skipped.append((str(checkpoint), problem))
    return None, skipped
