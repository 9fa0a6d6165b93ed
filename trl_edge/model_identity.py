"""Which model, exactly: a name, a revision and a hash of the weights, recorded by every rollout set and cache.

Offline on-policy distillation converges to a biased point unless the teacher that wrote the SFT data is the one
that scores the rollouts (Lightning OPD), and CE belongs only on tokens the teacher wrote: both questions are
answered by comparing identities, never by trusting a name alone.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .sealed_files import file_sha256

WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


def weights_hash(model) -> str:
    """A hash of a loaded model's weights (names, dtypes, shapes, bytes)."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        data = tensor.detach().cpu().contiguous()
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()


def files_hash(path: str | os.PathLike) -> str | None:
    """A hash of a checkpoint directory's weight files (a model that is loaded by path, e.g. by vLLM), or None
    when ``path`` is not a local directory holding weight files."""
    directory = Path(path)
    if not directory.is_dir():
        return None
    files = sorted({f for pattern in WEIGHT_FILE_PATTERNS for f in directory.glob(pattern)})
    if not files:
        return None
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.name.encode() + file_sha256(f).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """A model's name (or path), revision and weights hash (``weights:`` of the loaded tensors, ``files:`` of its
    weight files; None when neither could be computed)."""

    name: str
    revision: str | None = None
    weights: str | None = None

    @classmethod
    def of(cls, source, model=None, revision: str | None = None) -> ModelIdentity:
        from .model_loading import model_name

        name = model_name(source if isinstance(source, str | os.PathLike) else model if model is not None else source)
        if model is not None:
            return cls(name, revision, f"weights:{weights_hash(model)}")
        files = files_hash(source) if isinstance(source, str | os.PathLike) else None
        return cls(name, revision, f"files:{files}" if files else None)

    @classmethod
    def from_dict(cls, data: dict | None) -> ModelIdentity | None:
        return cls(**data) if data else None

    def to_dict(self) -> dict:
        return asdict(self)

    def same_as(self, other: ModelIdentity | None) -> bool:
        """The same model: equal hashes where both are of one kind, else the same name and revision."""
        if other is None:
            return False
        if self.weights and other.weights and self.weights.split(":")[0] == other.weights.split(":")[0]:
            return self.weights == other.weights
        return self.same_name(other)

    def same_name(self, other: ModelIdentity | None) -> bool:
        """The same name (or path) and revision, whatever the weights' dtype when each was loaded (models built in
        memory have no name: never the same by name)."""
        if other is None or not self.name or not other.name:
            return False
        return os.path.normpath(self.name) == os.path.normpath(other.name) and self.revision == other.revision

    def __str__(self) -> str:
        revision = f"@{self.revision}" if self.revision else ""
        weights = f" ({self.weights[:24]})" if self.weights else ""
        return f"{self.name}{revision}{weights}"
