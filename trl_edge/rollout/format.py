"""The on-disk layout of a rollout set, and the small pieces its writer and reader agree on.

A rollout set is a directory::

    rollouts.json               the provenance and the shard plan (written first, atomically)
    rollouts-00000.arrow        the samples of shard 0's prompts (Arrow IPC, written atomically)
    rollouts-00000.json         its seal: row count, byte size, sha256 (written after the shard, atomically)
    ...

Shard ``i`` holds the samples of prompts ``[i * shard_size, (i + 1) * shard_size)``; a shard is complete when its
seal exists and matches it. Per sample: ``prompt_index``, ``sample_index``, ``prompt_ids``, ``completion_ids``,
``logprobs``, ``finish_reason`` and the prompt dataset's own columns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from ..sealed_files import ShardedMetadata, is_sealed

METADATA_FILE = "rollouts.json"
ROLLOUT_FORMAT_VERSION = 1


class RolloutError(ValueError):
    """A rollout set that cannot be used as it is: incomplete, corrupted, or made with other settings."""


@dataclass
class SamplingSettings:
    """How the policy samples: the knobs of the sampling distribution and how many samples per prompt."""

    num_samples: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    max_new_tokens: int = 256
    seed: int = 0
    stop_token_ids: list[int] = field(default_factory=list)

    def check(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {self.num_samples}.")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0 (0: greedy), got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p}.")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"`top_k` must be >= 0 (0 or None: off), got {self.top_k}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}.")


@dataclass
class RolloutMetadata(ShardedMetadata):
    """Where a rollout set came from, and how it is cut into shards (of prompts)."""

    ROWS_FIELD: ClassVar[str] = "num_prompts"

    policy: str
    policy_hash: str
    tokenizer_fingerprint: str
    prompts_fingerprint: str
    num_prompts: int
    shard_size: int
    sampling: dict
    round: int | None = None
    backend: str = "transformers"
    columns: list[str] = field(default_factory=list)
    policy_identity: dict = field(default_factory=dict)  # ModelIdentity: name, revision, weights hash
    trl_edge_version: str = ""
    format_version: int = ROLLOUT_FORMAT_VERSION

    def provenance(self) -> dict:
        """What a teacher cache made from this set records about it."""
        keep = ("policy", "policy_hash", "policy_identity", "round", "sampling", "backend", "prompts_fingerprint",
                "trl_edge_version")
        return {"kind": "rollouts", **{k: v for k, v in asdict(self).items() if k in keep}}


def shard_file(index: int) -> str:
    return f"rollouts-{index:05d}.arrow"


def seal_file(index: int) -> str:
    return f"rollouts-{index:05d}.json"


def shard_is_sealed(directory: Path, index: int, warn: bool = True) -> bool:
    """Whether shard ``index`` is complete and sound: its file has the sha256 its seal recorded."""
    return is_sealed(directory / seal_file(index), {"sha256": directory / shard_file(index)}, warn=warn)


def settings_in(directory: Path) -> dict:
    """The settings of the rollout set already in ``directory``."""
    return RolloutMetadata(**json.loads((directory / METADATA_FILE).read_text())).settings()
