"""TeacherLogitCache: open a cache directory, check it, and read any sample in O(1), memory-mapped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from ..batch import right_pad
from ..data_columns import read_table
from ..tokens import scored_positions, tokenizer_fingerprint
from .encoding import CacheCorruptionError, get_encoding
from .format import (
    CacheError,
    CacheMetadata,
    columns_name,
    file_sha256,
    sample_crc,
    seal_name,
    shard_name,
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


def _hex_rows(ids: np.ndarray) -> list[str]:
    """Each row of a ``[S, n]`` uint8 array as a hex string, in one pass over the bytes."""
    width = 2 * ids.shape[1]
    text = np.ascontiguousarray(ids).tobytes().hex()
    return [text[i : i + width] for i in range(0, len(text), width)]


def collate_samples(samples: list[dict], top_k: int, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch of cache samples (``cache[i]``) with the teacher data laid out per position.

    ``teacher_topk_ids`` / ``teacher_topk_logprobs`` are ``[B, L, k]`` and ``teacher_token_logprobs`` ``[B, L]``,
    filled at the scored positions (``teacher_mask``) and 0 / -inf / 0 elsewhere.
    """
    input_ids, attention_mask = right_pad([s["input_ids"] for s in samples], pad_token_id)
    labels, _ = right_pad([s["labels"] for s in samples], -100)
    b, width = input_ids.shape
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "teacher_mask": torch.zeros((b, width), dtype=torch.bool),
        "teacher_topk_ids": torch.zeros((b, width, top_k), dtype=torch.long),
        "teacher_topk_logprobs": torch.full((b, width, top_k), float("-inf")),
        "teacher_token_logprobs": torch.zeros((b, width)),
    }
    for row, s in enumerate(samples):
        pos = s["positions"]
        batch["teacher_mask"][row, pos] = True
        batch["teacher_topk_ids"][row, pos] = s["topk_ids"]
        batch["teacher_topk_logprobs"][row, pos] = s["topk_logprobs"]
        batch["teacher_token_logprobs"][row, pos] = s["token_logprobs"]
    return batch


class TeacherLogitCache(torch.utils.data.Dataset):
    """A teacher logit cache on disk, as a map-style dataset of samples ready for a distillation loss.

    ``cache[i]`` returns a dict of tensors: ``input_ids`` and ``labels`` (the exact scored sequence), ``positions``
    (the ``P`` positions whose next token carries loss), ``topk_ids`` ``[P, k]`` and ``topk_logprobs`` ``[P, k]``
    (the teacher's top-k at those positions, descending), ``token_logprobs`` ``[P]`` (the teacher's log-prob of the
    token in the sequence) and ``sample_id`` (a hex content hash, stable across reruns).

    Args:
        path: the cache directory.
        tokenizer: if given, the cache must have been made with the same vocabulary (checked by fingerprint).
        vocab_size: if given, the student's LM head size: it must cover every id the cache's distributions range
            over (the tokenizer's vocabulary; a head padded past it is fine).
    """

    def __init__(self, path: str | os.PathLike, tokenizer=None, vocab_size: int | None = None):
        self.path = Path(path)
        self.metadata = meta = CacheMetadata.load(self.path)
        self.encoding = get_encoding(meta.encoding)
        if tokenizer is not None:
            self.check_tokenizer(tokenizer)
        if vocab_size is not None:
            self.check_head_size(vocab_size)
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

    def check_head_size(self, head_size: int) -> None:
        """Fail unless a student head of ``head_size`` outputs covers every id of the cache's vocabulary."""
        meta = self.metadata
        if head_size < meta.vocab_size:
            raise CacheError(
                f"The cache at {self.path} holds distributions over {meta.vocab_size} tokens (teacher "
                f"{meta.teacher}), but the student's LM head has only {head_size} outputs. Teacher and student must "
                "share the tokenizer: cache with a teacher of the student's family, or resize the student's "
                "embeddings to the tokenizer (`model.resize_token_embeddings(len(tokenizer))`)."
            )

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
        sid = idx["sample_ids"][local]
        if sample_crc(input_ids, labels, token_lp, blob, sid) != int(idx["crc32"][local]):
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
            "sample_id": sid.tobytes().hex(),
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

    def to_dataset(self, show_progress: bool = False):
        """A ``datasets.Dataset`` with one row per sample: ``cache_index``, ``num_tokens``, ``num_positions``,
        ``sample_id`` and the dataset columns the cache carries (``metadata.columns``, e.g. a stage label).

        Built from the shards' offset arrays and column files, never from the token data, so it costs a fraction of a
        second per million samples on every rank. The tokens and teacher data stay in the cache (look them up with
        ``cache[cache_index]``): a trainer takes this as its ``train_dataset`` without copying anything into Arrow.
        """
        import pyarrow as pa
        from datasets import Dataset

        tables, num_tokens, num_positions, sample_ids = [], [], [], []
        shards = tqdm(self._shards, desc="Indexing teacher cache", unit="shard", disable=not show_progress)
        for shard_index, shard in enumerate(shards):
            num_tokens.append(np.diff(shard.index["token_offsets"]))
            num_positions.append(np.diff(shard.index["position_offsets"]))
            sample_ids.append(shard.index["sample_ids"])
            if self.metadata.columns:
                tables.append(self._read_columns(shard_index))
        ids = np.concatenate(sample_ids) if sample_ids else np.zeros((0, 16), np.uint8)
        columns = {
            "cache_index": np.arange(len(self), dtype=np.int64),
            "num_tokens": np.concatenate(num_tokens).astype(np.int64),
            "num_positions": np.concatenate(num_positions).astype(np.int64),
            "sample_id": pa.array(_hex_rows(ids), pa.string()),
        }
        table = pa.table(columns)
        if tables:
            extra = pa.concat_tables(tables)
            for name in extra.column_names:
                table = table.append_column(name, extra.column(name))
        dataset = Dataset(table)
        return dataset

    def _read_columns(self, shard_index: int):
        """The passed-through columns of one shard (checked against the seal's sha256)."""
        path = self.path / columns_name(shard_index)
        seal = json.loads((self.path / seal_name(shard_index)).read_text())
        if not path.is_file():
            raise CacheError(f"{path} is missing: the cache is incomplete. Rerun the caching command to finish it.")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != seal.get("columns_sha256"):
            raise CacheError(
                f"{path} does not match its seal (altered or truncated). Delete it and {seal_name(shard_index)}, "
                "and rerun the caching command to rewrite the shard."
            )
        return read_table(data)

    def _mean_token_nll(self, shard_index: int) -> np.ndarray:
        """The teacher's mean NLL of each sample's scored tokens in one shard, vectorised over its token log-probs."""
        shard = self._shards[shard_index]
        offsets = shard.index["position_offsets"]
        values = -shard.read("token_logprobs", 0, offsets[-1]).astype(np.float64)
        sums = np.diff(np.concatenate([[0.0], np.cumsum(values)])[offsets])
        counts = np.diff(offsets)
        return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)

    def teacher_difficulty(self, kind: str, indices=None, show_progress: bool = False) -> np.ndarray:
        """Per-sample difficulty as the teacher sees it: ``teacher_nll`` (its mean NLL of the sample's tokens, from
        the token log-probs alone) or ``teacher_entropy`` (its mean entropy, estimated from the cached top-k plus
        the tail as one outcome: a lower bound of the full entropy; this one decodes every sample)."""
        if kind == "teacher_nll":
            wanted = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
            shard_of, out = wanted // self.metadata.shard_size, np.zeros(len(wanted))
            for shard_index in tqdm(np.unique(shard_of), desc="Teacher NLL", unit="shard", disable=not show_progress):
                rows = np.flatnonzero(shard_of == shard_index)
                means = self._mean_token_nll(int(shard_index))
                out[rows] = means[wanted[rows] - shard_index * self.metadata.shard_size]
            return out
        if kind != "teacher_entropy":
            raise ValueError(f"Unknown teacher difficulty {kind!r}: use 'teacher_nll' or 'teacher_entropy'.")
        wanted = range(len(self)) if indices is None else indices
        scores = []
        for i in tqdm(wanted, desc="Teacher entropy", unit="sample", disable=not show_progress):
            lp = self[int(i)]["topk_logprobs"].double()
            tail = (1 - lp.exp().sum(-1)).clamp(min=1e-12)
            entropy = -(lp.exp() * lp).sum(-1) - tail * tail.log()
            scores.append(float(entropy.mean()) if len(entropy) else 0.0)
        return np.asarray(scores)

    def collate(self, indices, pad_token_id: int = 0) -> dict[str, torch.Tensor]:
        """A right-padded batch of samples ``indices`` with the teacher data laid out per position (see
        :func:`collate_samples`)."""
        return collate_samples([self[int(i)] for i in indices], self.metadata.top_k, pad_token_id)

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
            if self.metadata.columns:
                try:
                    self._read_columns(shard_index)
                except CacheError as err:
                    problems.append(str(err))
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
