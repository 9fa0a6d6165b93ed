"""Difficulty scorers: one number per example, higher is harder.

A scorer is any callable ``scorer(dataset) -> np.ndarray`` of one finite score per row. The
built-in ones cover the usual signals: sequence length, a column the data already has, the loss
of a reference model (Hacohen & Weinshall 2019) and an arbitrary per-example function. Scores are
turned into CDF ranks in (0, 1] by :func:`difficulty_ranks`, the form competence-based sampling
uses; :func:`add_difficulty_column` stores them so that an expensive scorer runs once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from ..data_columns import scalar_column


def _require_columns(dataset: Dataset, columns: list[str], scorer: str, hint: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{scorer} needs the column(s) {missing}, but the dataset has {dataset.column_names}. {hint}")


def _check_finite(scores: np.ndarray, scorer: str) -> np.ndarray:
    if scores.size == 0:
        raise ValueError(f"{scorer} got an empty dataset: a curriculum needs at least one example.")
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(
            f"{scorer} produced a non-finite score ({scores[bad[0]]}) for example {int(bad[0])} "
            f"({bad.size} in all). Fix or drop those examples."
        )
    return scores


def difficulty_ranks(scores) -> np.ndarray:
    """CDF ranks in (0, 1]: the fraction of examples at most as hard as each one (ties share a rank)."""
    scores = _check_finite(np.asarray(scores, dtype=np.float64), "difficulty_ranks")
    return np.searchsorted(np.sort(scores), scores, side="right") / scores.size


class LengthScorer:
    """Difficulty = number of tokens (``input_ids``); or characters of ``text_column`` for raw text."""

    def __init__(self, column: str = "input_ids"):
        self.column = column

    def __call__(self, dataset: Dataset) -> np.ndarray:
        _require_columns(
            dataset, [self.column], "LengthScorer", "Tokenize the dataset first or pass the text column to score."
        )
        return _check_finite(np.array([len(x) for x in dataset[self.column]], dtype=np.float64), "LengthScorer")


class ColumnScorer:
    """Difficulty read from a numeric column of the dataset (e.g. a grade, a pass rate, a human label)."""

    def __init__(self, column: str = "difficulty"):
        self.column = column

    def __call__(self, dataset: Dataset) -> np.ndarray:
        _require_columns(
            dataset,
            [self.column],
            "ColumnScorer",
            "Add a numeric difficulty column, or score by length (`curriculum_difficulty='length'`).",
        )
        try:
            scores = np.asarray(scalar_column(dataset, self.column), dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"Column {self.column!r} must hold one number per example: {err}") from err
        return _check_finite(scores, f"ColumnScorer({self.column!r})")


class CallableScorer:
    """Difficulty from a user function of one example: ``fn(example: dict) -> float``."""

    def __init__(self, fn: Callable[[dict[str, Any]], float]):
        self.fn = fn

    def __call__(self, dataset: Dataset) -> np.ndarray:
        return _check_finite(np.array([float(self.fn(row)) for row in dataset], dtype=np.float64), "CallableScorer")


class UniformScorer:
    """Every example equally hard: order within a stage is then random (``curriculum_difficulty='none'``)."""

    def __call__(self, dataset: Dataset) -> np.ndarray:
        return np.zeros(len(dataset))


@torch.no_grad()
def sequence_nll(model, input_ids, labels=None, batch_size: int = 8, pad_token_id: int = 0, desc: str | None = None):
    """Per sequence, the summed teacher-forced NLL (nats) of its loss tokens and their count.

    Loss tokens are those with ``labels != -100`` (all tokens without labels). Sequences run in length-sorted,
    right-padded batches without gradients, and only the loss positions go through the LM head, chunk by chunk in
    float32 (no ``[batch, seq, vocab]`` logits); results come back in input order. ``desc`` shows a progress bar.
    """
    from ..backends.transformers_backend import PositionScorer

    labels = input_ids if labels is None else labels
    was_training = model.training
    model.eval()
    scorer = PositionScorer(model, top_k=0)
    order = np.argsort([len(x) for x in input_ids], kind="stable")
    nll_sum, n_tokens = np.zeros(len(input_ids)), np.zeros(len(input_ids))
    batches = range(0, len(input_ids), batch_size)
    try:
        for start in tqdm(batches, desc=desc, unit="batch", disable=desc is None):
            batch = order[start : start + batch_size]
            seqs = [np.asarray(input_ids[i]) for i in batch]
            labs = [np.asarray(labels[i]) for i in batch]
            for i, (_, _, token_lp) in zip(batch, scorer(seqs, labs, pad_token_id)):
                nll_sum[i], n_tokens[i] = -float(token_lp.astype(np.float64).sum()), len(token_lp)
    finally:
        model.train(was_training)
    return nll_sum, n_tokens


class ReferenceModelScorer:
    """Difficulty = a reference model's mean token loss (or perplexity) on each example.

    Works on tokenized data (``input_ids``, and ``labels`` with -100 on positions that carry no loss,
    as SFTTrainer prepares them). Runs in length-sorted batches without gradients, with a progress
    bar; results come back in dataset order. Under several processes (``state``, accelerate's), each rank scores
    its own slice and the scores are gathered, so the whole dataset is scored once, not once per rank.

    Args:
        model: a causal LM (already loaded; a name or path is loaded with ``trl_edge.model_loading.load_causal_lm``
            on ``state``'s device).
        batch_size: examples per forward pass.
        metric: ``"loss"`` (mean negative log-likelihood, nats) or ``"perplexity"`` (its exponential).
        pad_token_id: id used to pad batches (only attention-masked positions are padded).
        state: accelerate's ``PartialState`` (or an ``AcceleratorState``) of the job; default: one process.
    """

    def __init__(self, model, batch_size: int = 8, metric: str = "loss", pad_token_id: int = 0, state=None):
        if metric not in ("loss", "perplexity"):
            raise ValueError(f"`metric` must be 'loss' or 'perplexity', got {metric!r}.")
        if isinstance(model, str):
            from ..model_loading import load_causal_lm

            model = load_causal_lm(model, device=getattr(state, "device", None))
        self.model = model
        self.batch_size = int(batch_size)
        self.metric = metric
        self.pad_token_id = pad_token_id
        self.state = state

    def __call__(self, dataset: Dataset) -> np.ndarray:
        _require_columns(dataset, ["input_ids"], "ReferenceModelScorer", "Tokenize the dataset first.")
        rank, world = (self.state.process_index, self.state.num_processes) if self.state is not None else (0, 1)
        mine = np.arange(rank, len(dataset), world)
        part = dataset.select(mine) if world > 1 else dataset
        labels = part["labels"] if "labels" in part.column_names else None
        nll_sum, n_tokens = sequence_nll(
            self.model, part["input_ids"], labels, self.batch_size, self.pad_token_id, desc="Scoring difficulty"
        )
        mean_nll = nll_sum / np.maximum(n_tokens, 1)
        if world > 1:
            from accelerate.utils import gather_object

            mean_nll, pieces = np.zeros(len(dataset)), gather_object([(mine, nll_sum / np.maximum(n_tokens, 1))])
            for indices, values in pieces:
                mean_nll[indices] = values
        scores = np.exp(mean_nll) if self.metric == "perplexity" else mean_nll
        return _check_finite(scores, "ReferenceModelScorer")


def add_difficulty_column(
    dataset: Dataset, scorer: Callable[[Dataset], np.ndarray], column: str = "difficulty"
) -> Dataset:
    """Return ``dataset`` with the scores of ``scorer`` in ``column``; reuse the column if it is already there.

    Save the result (``save_to_disk`` / ``push_to_hub``) and train with ``curriculum_difficulty='column'`` to
    pay for an expensive scorer (a reference model) once.
    """
    if column in dataset.column_names:
        return dataset
    scores = np.asarray(scorer(dataset), dtype=np.float64)
    if scores.shape != (len(dataset),):
        raise ValueError(
            f"The scorer returned {scores.shape[0] if scores.ndim else 0} scores for {len(dataset)} examples."
        )
    return dataset.add_column(column, scores.tolist())
