"""What the teacher scores: the exact token sequences of a cache, and what may hand them over itself.

A ``datasets.Dataset`` is tokenized as SFTTrainer would tokenize it; a :class:`ScoringSource` (a
[`~trl_edge.RolloutSet`]) says itself what to score (its exact token ids). The rollout sets build on this module;
the cache never imports them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..data_columns import passthrough_columns, ragged_column
from .format import sample_id

if TYPE_CHECKING:
    from .tokenize import SFTTokenization


@dataclass
class ScoringPlan:
    """The exact token sequences to score, in order, with what describes them (the cache's content)."""

    input_ids: np.ndarray  # int32, all samples concatenated
    labels: np.ndarray  # int32, -100 where there is no loss
    offsets: np.ndarray  # int64 [S + 1]
    sample_ids: np.ndarray  # uint8 [S, 16]
    columns: dict = field(default_factory=dict)  # name -> list, the passed-through columns
    source: dict = field(default_factory=dict)  # provenance of the sequences (a rollout set's)
    tokenization: dict = field(default_factory=dict)
    source_path: str | None = None  # the directory the sequences were read from (a rollout set's)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.input_ids[a:b], self.labels[a:b]

    @classmethod
    def from_prepared(cls, prepared, columns: list[str] | None = None, **info) -> ScoringPlan:
        """From a dataset with ``input_ids`` and ``labels`` columns (and the columns to pass through)."""
        if prepared._indices is not None:
            prepared = prepared.flatten_indices()
        ids, offsets = ragged_column(prepared, "input_ids")
        labels, label_offsets = ragged_column(prepared, "labels")
        if not np.array_equal(offsets, label_offsets):
            raise ValueError("`input_ids` and `labels` differ in length in some rows: they must align token by token.")
        columns = passthrough_columns(prepared) if columns is None else columns
        return cls.from_arrays(ids, labels, offsets, {name: prepared[name] for name in columns}, **info)

    @classmethod
    def from_arrays(cls, input_ids, labels, offsets, columns: dict, **info) -> ScoringPlan:
        """From concatenated ids and labels cut by ``offsets``; each sample's content id computed here."""
        input_ids, labels = np.asarray(input_ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)
        sample_ids = np.zeros((len(offsets) - 1, 16), dtype=np.uint8)
        for i in range(len(offsets) - 1):
            a, b = offsets[i], offsets[i + 1]
            sample_ids[i] = np.frombuffer(sample_id(input_ids[a:b], labels[a:b]), dtype=np.uint8)
        return cls(input_ids, labels, np.asarray(offsets, dtype=np.int64), sample_ids, columns, **info)


class ScoringSource(ABC):
    """Data that says itself what the teacher scores, token for token (a [`~trl_edge.RolloutSet`] is one)."""

    @abstractmethod
    def scoring_plan(self) -> ScoringPlan:
        """The exact sequences to score, with their loss masks, columns, provenance and tokenization."""


def plan_from_dataset(dataset, processing_class, tokenization: SFTTokenization | None = None) -> ScoringPlan:
    """What the teacher scores for ``dataset``: a rollout set token for token, anything else as SFT tokenizes it."""
    if isinstance(dataset, ScoringSource):
        return dataset.scoring_plan()
    from .tokenize import SFTTokenization, prepare_like_sft

    tokenization = tokenization or SFTTokenization()
    prepared = prepare_like_sft(dataset, processing_class, tokenization)
    if len(prepared) == 0:
        raise ValueError(
            "No sample is left after tokenization (all fully masked or truncated away): nothing to score."
        )
    return ScoringPlan.from_prepared(prepared, tokenization=vars(tokenization).copy())
