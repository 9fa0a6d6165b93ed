"""RolloutSet: open a rollout set, check every shard against its seal, and read its samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..cache.plan import ScoringPlan, ScoringSource
from ..data_columns import read_table
from .format import METADATA_FILE, RolloutError, RolloutMetadata, shard_file, shard_is_sealed


class RolloutSet(ScoringSource):
    """A rollout set on disk: its provenance (``metadata``) and its samples, as a ``datasets.Dataset`` or a
    scoring plan for the teacher cache."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / METADATA_FILE
        if not meta_path.is_file():
            raise RolloutError(f"{self.path} is not a rollout set: it has no {METADATA_FILE}. Make one with "
                               "`trl-edge rollout` or `trl_edge.generate_rollouts`.")  # fmt: skip
        self.metadata = RolloutMetadata(**json.loads(meta_path.read_text()))
        shards = range(self.metadata.num_shards)
        missing = [shard_file(i) for i in shards if not shard_is_sealed(self.path, i, warn=False)]
        if missing:
            raise RolloutError(
                f"The rollout set at {self.path} is incomplete or corrupted: {', '.join(missing[:5])} "
                f"{'is missing or fails its seal' if len(missing) == 1 else 'are missing or fail their seals'}. "
                "Rerun the same rollout command (same output_dir) to finish it."
            )
        self._dataset = None

    @staticmethod
    def is_rollout_set(path) -> bool:
        return path is not None and (Path(path) / METADATA_FILE).is_file()

    def to_dataset(self):
        """Every sample as a row: prompt/sample index, ``prompt_ids``, ``completion_ids``, ``logprobs``,
        ``finish_reason`` and the prompt dataset's own columns, in prompt order."""
        if self._dataset is None:
            import pyarrow as pa
            from datasets import Dataset

            tables = [read_table((self.path / shard_file(i)).read_bytes()) for i in range(self.metadata.num_shards)]
            self._dataset = Dataset(pa.concat_tables(tables))
        return self._dataset

    def __len__(self) -> int:
        return len(self.to_dataset())

    def __getitem__(self, index: int) -> dict:
        return self.to_dataset()[index]

    def scoring_plan(self):
        """What the teacher scores: each prompt + completion token for token, loss on the completion only."""
        ds = self.to_dataset()
        prompts, completions = ds["prompt_ids"], ds["completion_ids"]
        seqs = [np.asarray(p + c, dtype=np.int32) for p, c in zip(prompts, completions)]
        labs = [np.asarray([-100] * len(p) + c, dtype=np.int32) for p, c in zip(prompts, completions)]
        keep = ["prompt_index", "sample_index", "finish_reason", *self.metadata.columns]
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        return ScoringPlan.from_arrays(
            np.concatenate(seqs), np.concatenate(labs), offsets, {c: ds[c] for c in keep},
            source=self.metadata.provenance(), tokenization={"rollouts": True}, source_path=str(self.path.resolve()),
        )  # fmt: skip

    def __repr__(self) -> str:
        m = self.metadata
        return (f"RolloutSet({str(self.path)!r}, policy={m.policy!r}, prompts={m.num_prompts}, "
                f"samples_per_prompt={m.sampling['num_samples']}, round={m.round})")  # fmt: skip
