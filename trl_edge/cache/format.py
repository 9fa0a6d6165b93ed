"""The on-disk layout of a teacher logit cache, and the small pieces every reader and writer agree on.

A cache is a directory::

    metadata.json               what made the cache and the shard plan (written first, atomically)
    shard-00000.safetensors     the samples of shard 0 (written atomically: a reader never sees half a shard)
    shard-00000.json            its seal: sample count, byte size, sha256 (written after the shard, atomically)
    ...

A shard is complete when its seal exists and matches it. Shard ``i`` always holds the prepared rows
``[i * shard_size, (i + 1) * shard_size)``, so a rerun knows what is left to do, and any rank can write any shard.
No pickle anywhere: JSON for metadata, safetensors for arrays.

Shard tensors (``S`` samples, ``T`` tokens in all, ``P`` scored positions in all):

- ``input_ids``, ``labels``: int32 ``[T]``, the exact sequences the teacher scored (labels -100 where SFT has no
  loss); ``token_offsets``: int64 ``[S + 1]``.
- ``token_logprobs``: float32 ``[P]``, the teacher's log-prob of the token actually in the sequence;
  ``position_offsets``: int64 ``[S + 1]``. A sample's scored positions are the ``t`` with ``labels[t + 1] != -100``
  (the distribution at ``t`` predicts token ``t + 1``).
- ``blob``: uint8, each sample's top-k ids and log-probs in the cache's encoding; ``blob_offsets``: int64 ``[S + 1]``.
- ``sample_ids``: uint8 ``[S, 16]``, a hash of the sample's tokens and labels (stable across reruns and shardings).
- ``crc32``: uint32 ``[S]``, over each sample's tokens, labels, token log-probs, blob and sample id, checked on every
  read.

The dataset's own columns that travel with the samples (a curriculum stage label, an id: see
``CacheMetadata.columns``) go to ``shard-NNNNN.columns.arrow`` (Arrow IPC, one row per sample), sealed by the same
JSON file.

Two caches are "the same cache" when their :meth:`CacheMetadata.settings` agree: the teacher, the tokenizer, the
settings and the *content* scored (``content_fingerprint``, a hash of every sample's tokens and loss mask), never
the state of a Python object, so the identical call made in a new process resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..model_identity import ModelIdentity
from ..sealed_files import ShardedMetadata, atomic_write, file_sha256  # noqa: F401  (part of the format's vocabulary)
from ..tokens import scored_positions, tokenizer_fingerprint, tokenizer_vocab_size  # noqa: F401  (likewise)

FORMAT_VERSION = 2  # 2: crc32 covers sample_ids; content fingerprint; columns; head size
METADATA_FILE = "metadata.json"
SAMPLE_ID_BYTES = 16


class CacheError(ValueError):
    """A teacher cache that cannot be used as it is: incomplete, corrupted, or made for another tokenizer."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def seal_name(index: int) -> str:
    return f"shard-{index:05d}.json"


def columns_name(index: int) -> str:
    return f"shard-{index:05d}.columns.arrow"


@dataclass
class CacheMetadata(ShardedMetadata):
    """What made the cache (teacher, tokenizer, settings) and how it is cut into shards (of prepared rows)."""

    ROWS_FIELD: ClassVar[str] = "num_samples"

    teacher: str
    tokenizer_fingerprint: str
    vocab_size: int  # the ids the distributions range over: the tokenizer's vocabulary (never a head's padding)
    top_k: int
    encoding: str
    num_samples: int
    shard_size: int
    teacher_revision: str | None = None
    temperature: float = 1.0
    teacher_head_size: int | None = None  # the teacher's LM head rows; > vocab_size when padded past the tokenizer
    content_fingerprint: str | None = None
    columns: list[str] = field(default_factory=list)  # the dataset's columns kept next to each sample
    source: dict = field(default_factory=dict)  # where the sequences came from (a rollout set's provenance)
    tokenization: dict = field(default_factory=dict)
    teacher_identity: dict = field(default_factory=dict)  # ModelIdentity: name, revision, weights hash
    source_path: str | None = None  # the rollout set's directory when it was scored (not part of the identity)
    trl_edge_version: str = ""
    format_version: int = FORMAT_VERSION

    def settings(self) -> dict:
        out = super().settings()
        out.pop("source_path")  # where the rollouts lay is not what was scored
        return out

    def teacher_record(self) -> ModelIdentity:
        """The teacher that scored the cache (name and revision only, for caches written before identities)."""
        return ModelIdentity.from_dict(self.teacher_identity) or ModelIdentity(self.teacher, self.teacher_revision)

    def written_by(self) -> str:
        """Who wrote the cached tokens: ``teacher`` (its own samples), ``student`` (anyone else's rollouts) or
        ``dataset`` (a dataset's text, e.g. reference answers). Decides whether CE belongs on them."""
        if self.source.get("kind") != "rollouts":
            return "dataset"
        policy = ModelIdentity.from_dict(self.source.get("policy_identity")) or ModelIdentity(
            self.source.get("policy", ""), None, f"weights:{self.source.get('policy_hash')}"
        )
        teacher = self.teacher_record()
        # the same weights, or the same checkpoint loaded in another dtype (answers sampled in fp32, scored in bf16)
        return "teacher" if teacher.same_as(policy) or teacher.same_name(policy) else "student"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> CacheMetadata:
        path = Path(directory) / METADATA_FILE
        if not path.is_file():
            raise CacheError(
                f"{directory} is not a teacher cache: it has no {METADATA_FILE}. Make one with `trl-edge cache` "
                "or `trl_edge.cache_teacher_logits`."
            )
        try:
            raw = json.loads(path.read_text())
            meta = cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise CacheError(
                f"{path} is not valid cache metadata ({err}). The cache is corrupted: rebuild it."
            ) from err
        if meta.format_version != FORMAT_VERSION:
            advice = "Upgrade trl-edge." if meta.format_version > FORMAT_VERSION else "Rebuild the cache."
            raise CacheError(
                f"{directory} uses cache format {meta.format_version}; this trl-edge reads format {FORMAT_VERSION}. "
                f"{advice}"
            )
        return meta


def sample_id(input_ids: np.ndarray, labels: np.ndarray) -> bytes:
    """A content id: the same tokens and loss mask give the same id, whatever the row's position."""
    h = hashlib.blake2b(digest_size=SAMPLE_ID_BYTES)
    h.update(np.ascontiguousarray(input_ids, dtype="<i4").tobytes())
    h.update(np.ascontiguousarray(labels != -100, dtype=np.uint8).tobytes())
    return h.digest()


def content_fingerprint(sample_ids: np.ndarray) -> str:
    """A hash of the samples a cache holds, in order (``sample_ids`` ``[S, 16]``): the identity of what was scored."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(sample_ids, dtype=np.uint8).tobytes())
    h.update(str(len(sample_ids)).encode())
    return h.hexdigest()


def sample_crc(*parts: np.ndarray) -> int:
    crc = 0
    for part in parts:
        crc = zlib.crc32(np.ascontiguousarray(part).view(np.uint8).reshape(-1), crc)
    return crc
