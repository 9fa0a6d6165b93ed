"""Fidelity to the teacher: how close a student's next-token distributions are to a held-out teacher cache.

The numbers are the distillation objective itself, measured where it was not trained: the per-token forward
KL(teacher || student) against the cached top-k (with the tail bucket), computed by the training loss
(:func:`trl_edge.losses.chunked_kd_loss`) on the same positions the KD trainer scores, plus how often the student's
argmax is the teacher's top-1 and the student's CE on the cached tokens.
"""

from __future__ import annotations

import os

import torch

from ..backends.transformers_backend import check_plain_lm_head
from ..batch import pad_token_id
from ..cache.reader import TeacherLogitCache
from ..losses import chunked_kd_loss
from ..model_loading import input_device

__all__ = ["evaluate_fidelity"]


def _open(cache, tokenizer) -> TeacherLogitCache:
    if isinstance(cache, str | os.PathLike):
        cache = TeacherLogitCache(cache)
    if not isinstance(cache, TeacherLogitCache):
        raise TypeError(
            f"Expected a held-out teacher cache (a `TeacherLogitCache` or its path), got {type(cache).__name__}. "
            "Make one with `trl-edge cache` on data the student did not train on."
        )
    if tokenizer is not None:
        cache.check_tokenizer(tokenizer)
    return cache


@torch.no_grad()
def _append(each: dict, kl: float, top1: float, positions: int) -> None:
    each["kl"].append(kl)
    each["top1_agreement"].append(top1)
    each["num_positions"].append(positions)


def evaluate_fidelity(
    model,
    cache,
    batch_size: int = 8,
    *,
    tokenizer=None,
    chunk_size: int = 1024,
    max_samples: int | None = None,
    samples: list[int] | None = None,
    per_sample: bool = False,
) -> dict[str, float]:
    """Per-token KL(teacher || student), top-1 agreement and CE of ``model`` on a held-out teacher cache.

    Args:
        model: the student (a causal LM), evaluated where it is (its input embeddings' device).
        cache: a :class:`TeacherLogitCache` or the path of one, made on data the student did not train on.
        batch_size: cached sequences per forward pass.
        tokenizer: when given, the cache must have been made with this vocabulary (checked by fingerprint).
        chunk_size: scored positions projected through the LM head at a time (bounds the ``[chunk, V]`` logits).
        max_samples: evaluate only the first ``max_samples`` sequences.
        samples: evaluate only these sequences.
        per_sample: also return ``"fidelity/per_sample"``: each sequence's KL, top-1 agreement and scored positions
            (paired comparisons of two models on the same prompts need them).

    Returns:
        ``{"fidelity/kl": ..., "fidelity/top1_agreement": ..., "fidelity/ce": ..., "fidelity/num_positions": ...,
        "fidelity/num_samples": ...}``: means over every scored position of every sequence (a long sequence weighs
        more than a short one, as in training).
    """
    cache = _open(cache, tokenizer)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    head = model.get_output_embeddings()
    cache.check_head_size(head.weight.shape[0])  # a head padded past the cache's vocabulary is fine
    check_plain_lm_head(model, "Fidelity (it projects the hidden states through the LM head itself)")
    n = len(cache) if max_samples is None else min(len(cache), int(max_samples))
    rows = list(range(n)) if samples is None else [int(i) for i in samples]
    n = len(rows)
    if n == 0:
        raise ValueError(f"The teacher cache at {cache.path} holds no samples to evaluate on.")
    device = input_device(model)
    pad = pad_token_id(tokenizer, default=0)
    was_training = model.training
    model.eval()
    kd = ce = top1 = 0.0
    positions = 0
    each = {"kl": [], "top1_agreement": [], "num_positions": []}
    try:
        for start in range(0, n, batch_size):
            batch = cache.collate(rows[start : start + batch_size], pad_token_id=pad)
            outputs = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                output_hidden_states=True,
                logits_to_keep=1,  # the loss projects the hidden states itself, chunk by chunk
                use_cache=False,
            )
            last = outputs.hidden_states[-1]
            # with a device_map the last layer (and the head) may sit on another device than the inputs
            at_head = {key: value.to(last.device) for key, value in batch.items()}
            # Position t predicts token t + 1: the cache marks t, so hidden states and targets are shifted by one
            mask = at_head["teacher_mask"][:, :-1]
            flat = (
                last[:, :-1][mask],
                at_head["teacher_topk_ids"][:, :-1][mask],
                at_head["teacher_topk_logprobs"][:, :-1][mask],
                at_head["teacher_token_logprobs"][:, :-1][mask],
                at_head["input_ids"][:, 1:][mask],
            )
            counts = mask.sum(-1).tolist() if per_sample else [int(mask.sum())]
            start_row = 0
            for n in counts:  # one loss call per sequence when its own figures are wanted, else one per batch
                part = [x[start_row : start_row + n] for x in flat]
                start_row += n
                if n == 0:
                    if per_sample:
                        _append(each, float("nan"), float("nan"), 0)
                    continue
                result = chunked_kd_loss(
                    part[0], head.weight, head.bias, *part[1:], kd_weight=1.0, divergence="forward_kl",
                    tail="bucket", chunk_size=chunk_size,
                )  # fmt: skip
                kd += float(result.kd_sum)
                ce += float(result.ce_sum)
                top1 += float(result.top1_agreement_sum)
                positions += result.num_positions
                if per_sample:
                    _append(each, float(result.kd_sum) / n, float(result.top1_agreement_sum) / n, n)
    finally:
        model.train(was_training)
    count = max(positions, 1)
    extra = {"fidelity/per_sample": each} if per_sample else {}
    return {**extra,
        "fidelity/kl": kd / count,
        "fidelity/top1_agreement": top1 / count,
        "fidelity/ce": ce / count,
        "fidelity/num_positions": float(positions),
        "fidelity/num_samples": float(n),
    }
