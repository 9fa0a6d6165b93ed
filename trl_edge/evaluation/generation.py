"""Generation quality on held-out prompt/answer data: greedy answers scored by ROUGE-L and final-answer exact match.

Prompts come in TRL's formats (conversational messages go through the chat template with the generation prompt,
plain strings are tokenised as they are) and are decoded greedily in left-padded batches. Both metrics go through
``evaluate`` with the modules shipped in ``trl_edge/evaluation/metrics`` (loaded by path, so it works offline).
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict

import torch

from ..batch import left_pad, pad_token_id
from ..model_loading import input_device
from .answers import extract_answer
from .metrics import load_metric

__all__ = ["evaluate_generation", "greedy_generate", "prompt_ids", "message_text"]

REFERENCE_COLUMNS = ("completion", "answer")
TARGET_COLUMNS = ("target",)


def message_text(value) -> str:
    """The text of a reference: a string, one message, or a list of messages (their assistant turns, joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("content") or "")
    if isinstance(value, list | tuple):
        messages = [m for m in value if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"] or messages
        return "".join(str(m.get("content") or "") for m in assistant)
    return str(value)


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a TRL prompt: messages through the chat template (with the generation prompt), or a string."""
    if isinstance(prompt, list | tuple):
        if tokenizer.chat_template is None:
            raise ValueError(
                "The dataset's prompts are conversational (lists of messages) but the tokenizer has no chat template; "
                "give a tokenizer that has one, or plain-string prompts."
            )
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already holds the specials
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    raise TypeError(f"A prompt must be a string or a list of messages, got {type(prompt).__name__}.")


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)  # a chat model's end-of-turn token, if its config names another
    return ids


@torch.no_grad()
def greedy_generate(
    model, tokenizer, prompts, max_new_tokens: int = 256, batch_size: int = 8, return_hit_limit: bool = False
):
    """Greedy completions (new text only) of TRL-format ``prompts``, in left-padded batches of similar lengths.

    With ``return_hit_limit`` also returns, per prompt, whether decoding stopped at ``max_new_tokens`` rather than at
    an end-of-sequence token (a sign that ``max_new_tokens`` cuts answers short).
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}.")
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding per batch
    pad, eos = pad_token_id(tokenizer), _eos_ids(model, tokenizer)
    device = input_device(model)
    texts, hit = [""] * len(encoded), [False] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            ids, mask = left_pad([encoded[i] for i in rows], pad)
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos or None,
            )
            new = out[:, ids.shape[1] :].cpu()
            for row, tokens in zip(rows, new.tolist()):
                stop = next((j for j, t in enumerate(tokens) if t in eos), None)
                hit[row] = stop is None and len(tokens) >= max_new_tokens
                texts[row] = tokenizer.decode(tokens[:stop], skip_special_tokens=True)
    finally:
        model.train(was_training)
    return (texts, hit) if return_hit_limit else texts


def _column(dataset, given: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    if given is not None:
        if given not in dataset.column_names:
            raise ValueError(f"The generation dataset has no {what} column {given!r} (it has {dataset.column_names}).")
        return given
    return next((c for c in candidates if c in dataset.column_names), None)


def _truth_text(value) -> str:
    return str(value) if isinstance(value, int | float) else message_text(value)


def _mean(values) -> float:
    """The mean of the values that apply (``None``: a row with no ground truth, left out of exact match)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def evaluate_generation(
    model,
    tokenizer,
    dataset,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    prompt_column: str = "prompt",
    reference_column: str | None = None,
    target_column: str | None = None,
    kind_column: str | None = "kind",
    max_samples: int | None = None,
    predictions_file: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Greedy generation on held-out data, scored by ROUGE-L (F-measure) and final-answer exact match.

    Args:
        model, tokenizer: the checkpoint to measure, evaluated where it is.
        dataset: a ``datasets.Dataset`` with a ``prompt`` column (TRL formats: messages or strings) and a reference
            (``completion`` or ``answer``: text or assistant message(s)) and/or a ground truth (``target``).
        max_new_tokens, batch_size: greedy decoding budget and prompts per ``generate`` call.
        reference_column: the reference text for ROUGE-L (default: ``completion``, else ``answer``).
        target_column: the ground-truth answer for exact match (default: ``target`` when present); without one,
            exact match compares with the answer extracted from the reference.
        kind_column: when the dataset has it, every metric is also reported per kind
            (``generation/rouge_l/kind=sums``).
        max_samples: evaluate only the first ``max_samples`` examples.
        predictions_file: if given, one JSON line per example (prompt, prediction, reference, extracted answers,
            scores) is written there, to read what the model actually answered.

    Returns:
        ``generation/rouge_l`` (when there is a reference), ``generation/exact_match``, ``generation/num_examples``,
        ``generation/hit_max_new_tokens`` (share of answers cut by the budget) and the per-kind breakdowns.
    """
    if prompt_column not in dataset.column_names:
        raise ValueError(
            f"The generation dataset has no {prompt_column!r} column (it has {dataset.column_names}); it needs "
            "prompts (TRL prompt-completion format) and a reference `completion`/`answer` or a `target`."
        )
    reference_column = _column(dataset, reference_column, REFERENCE_COLUMNS, "reference")
    target_column = _column(dataset, target_column, TARGET_COLUMNS, "target")
    if reference_column is None and target_column is None:
        raise ValueError(
            f"The generation dataset has no reference column ({' or '.join(REFERENCE_COLUMNS)}) and no target column "
            f"({' or '.join(TARGET_COLUMNS)}); it has {dataset.column_names}. Name one with reference_column= or "
            "target_column= (`--reference_column`, `--target_column`)."
        )
    if max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), int(max_samples))))
    if len(dataset) == 0:
        raise ValueError("The generation dataset is empty.")

    predictions, hit = greedy_generate(
        model, tokenizer, dataset[prompt_column], max_new_tokens, batch_size, return_hit_limit=True
    )
    references = [message_text(r) for r in dataset[reference_column]] if reference_column else None
    # exact match: against the ground truth as it is, or against the answer extracted from the reference
    truths = [_truth_text(t) for t in dataset[target_column]] if target_column else references
    exact = load_metric("answer_exact_match").compute(
        predictions=predictions,
        references=truths,
        extract_references=target_column is None,
        use_aggregator=False,
    )["exact_match"]
    # A row with an empty ground truth (an open question) is not wrong: it has nothing to match, so it is left out
    scores = {"exact_match": [None if target_column and not str(t).strip() else v for v, t in zip(exact, truths)]}
    if references is not None:
        scores["rouge_l"] = load_metric("rouge_l").compute(
            predictions=predictions, references=references, use_aggregator=False
        )["rouge_l"]
    scores["hit_max_new_tokens"] = [float(h) for h in hit]

    metrics = {f"generation/{name}": _mean(values) for name, values in scores.items()}
    metrics["generation/num_examples"] = float(len(predictions))
    kinds = None
    if kind_column is not None and kind_column in dataset.column_names:
        kinds = [str(k) for k in dataset[kind_column]]
        groups = defaultdict(list)
        for i, kind in enumerate(kinds):
            groups[kind].append(i)
        for kind, rows in sorted(groups.items()):
            for name, values in scores.items():
                metrics[f"generation/{name}/{kind_column}={kind}"] = _mean([values[i] for i in rows])
            metrics[f"generation/num_examples/{kind_column}={kind}"] = float(len(rows))
    if predictions_file is not None:
        _write_predictions(predictions_file, dataset[prompt_column], predictions, references, truths, kinds, scores)
    return metrics


def _write_predictions(path, prompts, predictions, references, truths, kinds, scores) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, prediction in enumerate(predictions):
            row = {
                "prompt": prompts[i],
                "prediction": prediction,
                "predicted_answer": extract_answer(prediction),
                "reference": references[i] if references is not None else None,
                "truth": truths[i],
                "kind": kinds[i] if kinds is not None else None,
            }
            row.update({name: values[i] for name, values in scores.items()})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
