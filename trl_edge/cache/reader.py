"""TeacherLogitCache: open a cache directory, check it, and read any sample in O(1), memory-mapped."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .encoding import CacheCorruptionError, get_encoding
from .format import (
    CacheError,
    CacheMetadata,
    file_sha256,
    sample_crc,
    scored_positions,
    seal_name,
    shard_name,
    tokenizer_fingerprint,
)

_INDEX_TENSORS = ("token_offsets", "position_offsets", "blob_offsets", "sample_ids", "crc32")


class _Shard:
    """One shard file: its small index arrays in memory, its token data read through a memory map."""

    def __init__(self, path: Path, expected_samples: int):
        self.path = path
        self._handle = None
        self._pid = None
        try:
            f = self.handle
            self.index = {name: f.get_tensor(name) for name in _INDEX_TENSORS}
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise CacheError(
                f"Shard {path} is corrupted ({err}). Run `trl-edge cache verify {path.parent}`, delete the bad shard "
                "and its .json seal, and rerun the caching command to rewrite it."
            ) from err
        n = len(self.index["crc32"])
        if n != expected_samples or any(len(self.index[k]) != n + 1 for k in _INDEX_TENSORS[:3]):
            raise CacheError(
                f"Shard {path} holds {n} samples with inconsistent offsets; the plan says {expected_samples}. "
                "Delete it and its .json seal and rerun the caching command."
            )

    @property
    def handle(self):
        if self._handle is None or self._pid != os.getpid():  # reopen after a fork (dataloader workers)
            self._handle = safe_open(str(self.path), framework="np")
            self._pid = os.getpid()
        return self._handle

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.handle.get_slice(name)[int(start) : int(stop)]


class TeacherLogitCache(torch.utils.data.Dataset):
    """A teacher logit cache on disk, as a map-style dataset of samples ready for a distillation loss.

    ``cache[i]`` returns a dict of tensors: ``input_ids`` and ``labels`` (the exact scored sequence), ``positions``
    (the ``P`` positions whose next token carries loss), ``topk_ids`` ``[P, k]`` and ``topk_logprobs`` ``[P, k]``
    (the teacher's top-k at those positions, descending), ``token_logprobs`` ``[P]`` (the teacher's log-prob of the
    token in the sequence) and ``sample_id`` (a hex content hash, stable across reruns).

    Args:
        path: the cache directory.
        tokenizer: if given, the cache must have been made with the same vocabulary (checked by fingerprint).
        vocab_size: if given, the teacher's output size recorded in the cache must equal it (the student's).
    """

    def __init__(self, path: str | os.PathLike, tokenizer=None, vocab_size: int | None = None):
        self.path = Path(path)
        self.metadata = meta = CacheMetadata.load(self.path)
        self.encoding = get_encoding(meta.encoding)
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        if vocab_size is not None and vocab_size != meta.vocab_size:
            raise CacheError(
                f"The cache at {self.path} holds distributions over {meta.vocab_size} tokens (teacher "
                f"{meta.teacher}), but the student's vocabulary has {vocab_size}. Teacher and student must share "
                "the vocabulary: cache with a teacher of the student's family, or resize the student's embeddings."
            )
        self._shards = [self._open_shard(i) for i in range(meta.num_shards)]

    # ------------------------------------------------------------------ opening
    def _open_shard(self, index: int) -> _Shard:
        meta = self.metadata
        start, stop = meta.shard_range(index)
        shard, seal = self.path / shard_name(index), self.path / seal_name(index)
        rerun = "Rerun the same caching command (`trl-edge cache ...` with the same output_dir) to finish it."
        if not seal.is_file() or not shard.is_file():
            missing = shard.name if not shard.is_file() else seal.name
            raise CacheError(
                f"The cache at {self.path} is incomplete: {missing} (samples {start}-{stop - 1}) is missing. {rerun}"
            )
        try:
            info = json.loads(seal.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"The seal {seal} is corrupted ({err}). Delete it and {shard.name}; {rerun}") from err
        size = shard.stat().st_size
        if size != info.get("size"):
            raise CacheError(
                f"Shard {shard} is truncated or altered: {size} bytes on disk, {info.get('size')} when written. "
                f"Delete it and {seal.name}; {rerun}"
            )
        return _Shard(shard, stop - start)

    def check_tokenizer(self, tokenizer) -> None:
        """Fail unless ``tokenizer`` has the vocabulary the cache was made with."""
        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint != self.metadata.tokenizer_fingerprint:
            size = len(getattr(tokenizer, "tokenizer", tokenizer))
            raise CacheError(
                f"The cache at {self.path} was made with another tokenizer (teacher {self.metadata.teacher}; "
                f"fingerprint {self.metadata.tokenizer_fingerprint}) than the student's (fingerprint {fingerprint}, "
                f"{size} tokens). Token ids would not mean the same thing: cache again with the student's "
                "tokenizer, or use a student of the teacher's family."
            )

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.metadata.num_samples

    def _locate(self, index: int) -> tuple[int, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"Sample {index} is out of range for a cache of {len(self)} samples.")
        index %= len(self)
        return divmod(index, self.metadata.shard_size)

    def sample_id(self, index: int) -> str:
        shard, local = self._locate(index)
        return self._shards[shard].index["sample_ids"][local].tobytes().hex()

    def __getitem__(self, index: int) -> dict:
        shard_index, local = self._locate(int(index))
        shard = self._shards[shard_index]
        idx = shard.index
        t0, t1 = idx["token_offsets"][local : local + 2]
        p0, p1 = idx["position_offsets"][local : local + 2]
        b0, b1 = idx["blob_offsets"][local : local + 2]
        input_ids = shard.read("input_ids", t0, t1)
        labels = shard.read("labels", t0, t1)
        token_lp = shard.read("token_logprobs", p0, p1)
        blob = shard.read("blob", b0, b1)
        where = f"sample {shard_index * self.metadata.shard_size + local} in {shard.path.name}"
        if sample_crc(input_ids, labels, token_lp, blob) != int(idx["crc32"][local]):
            raise CacheError(
                f"Checksum mismatch for {where} of {self.path}: the shard is corrupted. Run `trl-edge cache verify "
                f"{self.path}`, delete the shard and its .json seal, and rerun the caching command."
            )
        positions = scored_positions(labels)
        if len(positions) != p1 - p0:
            raise CacheError(f"{where} has {p1 - p0} scored positions but its labels give {len(positions)}.")
        try:
            ids, logprobs = self.encoding.decode(blob, int(p1 - p0), self.metadata.top_k, self.metadata.vocab_size)
        except CacheCorruptionError as err:
            raise CacheError(f"Cannot decode {where} of {self.path}: {err}") from err
        return {
            "sample_id": idx["sample_ids"][local].tobytes().hex(),
            "input_ids": torch.from_numpy(input_ids.astype(np.int64)),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "positions": torch.from_numpy(positions.astype(np.int64)),
            "topk_ids": torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
            "topk_logprobs": torch.from_numpy(np.ascontiguousarray(logprobs, dtype=np.float32)),
            "token_logprobs": torch.from_numpy(token_lp.astype(np.float32)),
        }

    def index_of(self, sample_id: str) -> int:
        """The index of the sample with this content id (KeyError if the cache does not hold it)."""
        if not hasattr(self, "_by_id"):
            self._by_id = {
                s.index["sample_ids"][j].tobytes().hex(): i * self.metadata.shard_size + j
                for i, s in enumerate(self._shards)
                for j in range(len(s.index["crc32"]))
            }
        return self._by_id[sample_id]

    def to_dataset(self):
        """A ``datasets.Dataset`` with ``input_ids``, ``labels``, ``sample_id`` and ``cache_index`` per sample.

        The token-level teacher data stays in the cache (look it up with ``cache[cache_index]``), so a trainer can
        take this as its ``train_dataset`` without copying the distributions into Arrow.
        """
        from datasets import Dataset

        def rows():
            for shard_index, shard in enumerate(self._shards):
                offsets = shard.index["token_offsets"]
                ids = shard.read("input_ids", 0, offsets[-1])
                labels = shard.read("labels", 0, offsets[-1])
                for j in range(len(offsets) - 1):
                    yield {
                        "input_ids": ids[offsets[j] : offsets[j + 1]].tolist(),
                        "labels": labels[offsets[j] : offsets[j + 1]].tolist(),
                        "sample_id": shard.index["sample_ids"][j].tobytes().hex(),
                        "cache_index": shard_index * self.metadata.shard_size + j,
                    }

        return Dataset.from_list(list(rows()))

    def collate(self, indices, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
        """A right-padded batch with the teacher data laid out per position.

        ``teacher_topk_ids`` / ``teacher_topk_logprobs`` are ``[B, L, k]`` and ``teacher_token_logprobs`` ``[B, L]``,
        filled at the scored positions (``teacher_mask``) and 0 / -inf / 0 elsewhere.
        """
        samples = [self[int(i)] for i in indices]
        width, k = max(len(s["input_ids"]) for s in samples), self.metadata.top_k
        b = len(samples)
        batch = {
            "input_ids": torch.full((b, width), pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((b, width), dtype=torch.long),
            "labels": torch.full((b, width), -100, dtype=torch.long),
            "teacher_mask": torch.zeros((b, width), dtype=torch.bool),
            "teacher_topk_ids": torch.zeros((b, width, k), dtype=torch.long),
            "teacher_topk_logprobs": torch.full((b, width, k), float("-inf")),
            "teacher_token_logprobs": torch.zeros((b, width)),
        }
        for row, s in enumerate(samples):
            n, pos = len(s["input_ids"]), s["positions"]
            batch["input_ids"][row, :n] = s["input_ids"]
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = s["labels"]
            batch["teacher_mask"][row, pos] = True
            batch["teacher_topk_ids"][row, pos] = s["topk_ids"]
            batch["teacher_topk_logprobs"][row, pos] = s["topk_logprobs"]
            batch["teacher_token_logprobs"][row, pos] = s["token_logprobs"]
        return batch

    # ------------------------------------------------------------------ checking
    def verify(self) -> list[str]:
        """Check every shard (sha256 against its seal) and every sample (checksum, decoding, finite values).

        Returns the problems found, one line each; an empty list means the cache is sound.
        """
        problems = []
        for shard_index, shard in enumerate(self._shards):
            seal = json.loads((self.path / seal_name(shard_index)).read_text())
            if file_sha256(shard.path) != seal.get("sha256"):
                problems.append(f"{shard.path.name}: sha256 differs from its seal (the file was altered)")
            for local in range(len(shard.index["crc32"])):
                index = shard_index * self.metadata.shard_size + local
                try:
                    sample = self[index]
                except CacheError as err:
                    problems.append(str(err))
                    continue
                if (
                    not torch.isfinite(sample["topk_logprobs"]).all()
                    or not torch.isfinite(sample["token_logprobs"]).all()
                ):
                    problems.append(f"sample {index} in {shard.path.name}: non-finite teacher log-probs")
        return problems

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"TeacherLogitCache({str(self.path)!r}, teacher={m.teacher!r}, samples={m.num_samples}, top_k={m.top_k}, "
            f"encoding={m.encoding!r}, shards={m.num_shards})"
        )
