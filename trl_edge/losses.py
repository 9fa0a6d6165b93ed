"""Distillation losses against a cached sparse teacher distribution.

The teacher cache holds, per scored position, the teacher's top-k next-token ids and log-probs (temperature 1, sorted
by descending log-prob) and its log-prob of the token that actually follows. Two pieces live here:

* :func:`sparse_divergence`: the per-position divergence between the student's full next-token distribution and the
  teacher's sparse one, for the divergences in :data:`DIVERGENCES`.
* :func:`chunked_kd_loss`: ``kd_weight * divergence + (1 - kd_weight) * CE`` straight from the student's final hidden
  states and LM head, chunk by chunk over the positions, with the gradients computed during the forward pass so that
  no ``[N, V]`` logits are ever kept alive for backward (the idea of TRL's chunked divergence and Liger's fused
  linear losses). For ``forward_kl`` and ``sampled_reverse_kl`` the logit gradient is written in closed form, in
  place, so the loss costs about what a plain cross-entropy does; the other divergences go through autograd.

Conventions (they matter when reading logged values):

* **Outcomes.** With ``tail="bucket"`` (default) the teacher distribution has ``k + 1`` outcomes: the ``k`` cached ids,
  ``p_i = exp(t_i)``, and one "everything else" bucket, ``p_tail = max(0, 1 - sum_i p_i)``. The student is folded the
  same way: ``q_i`` its probability of each cached id and ``q_tail`` the sum of its probabilities of every other token
  (an exact log-sum-exp over the tokens outside the support, not ``1 - sum_i q_i``). With ``tail="renormalize"`` both
  distributions are restricted to the ``k`` ids and renormalised. When ``k == V`` there is no token outside the support
  and both modes reduce to the plain full-vocabulary divergence.
* **Tail floor.** After temperature scaling and renormalisation the teacher's tail bucket is floored at
  :data:`TAIL_FLOOR` (``1e-12``), so every divergence stays finite when the cached top-k already holds all the mass
  (rounding can make ``sum_i p_i`` reach 1) while the student still puts some mass outside it.
* **Temperature** ``T``. The caller passes the student's log-probs at ``T`` (``log_softmax(logits / T)``). The
  teacher's stored log-probs are divided by ``T`` and so is the tail bucket's log-mass (``log(p_tail) / T``: the bucket
  is tempered as if it were one token, a lower bound of the tempered mass of the tokens it stands for), then the
  ``k (+ 1)`` outcomes are renormalised. Every divergence is multiplied by ``T ** 2`` (Hinton / DistillKit). At
  ``T = 1`` nothing changes.
* **sampled_reverse_kl** is the on-policy single-sample estimator of ``KL(q || p)`` at the sequence's next token ``y``:
  ``log q_T(y) - log p_T(y)``, with the score-function gradient ``(log q_T(y) - log p_T(y)) * grad log q_T(y)``. At
  ``T = 1``, ``log p(y)`` is the cached ``teacher_token_logprobs`` as is. At ``T != 1`` it is
  ``t_y / T - logsumexp(t_1 / T, ..., t_k / T, log(p_tail) / T)``: the teacher's full-vocabulary normaliser at ``T``
  is unknown, so it is estimated from the cached support plus the tail bucket tempered as one token (the same
  normaliser the ``"bucket"`` distribution uses, whatever ``tail`` is; no floor), and the result is multiplied by
  ``T ** 2`` like the other divergences.
* **jsd** follows TRL's ``GKDTrainer.generalized_jsd_loss`` exactly: ``beta = 0`` is ``KL(p || q)``, ``beta = 1`` is
  ``KL(q || p)``, and in between ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with
  ``m = beta * p + (1 - beta) * q`` (p the teacher, q the student).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd", "sampled_reverse_kl")
TAIL_MODES = ("bucket", "renormalize")
TAIL_FLOOR = 1e-12

__all__ = [
    "DIVERGENCES",
    "TAIL_MODES",
    "TAIL_FLOOR",
    "KDLossOutput",
    "sparse_divergence",
    "auto_kd_chunk_size",
    "chunked_kd_loss",
]


# ---------------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------------


def _check_options(divergence: str, tail: str, beta: float, skew_alpha: float, temperature: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}.")
    if tail not in TAIL_MODES:
        raise ValueError(f"Unknown tail mode {tail!r}; choose one of {', '.join(TAIL_MODES)}.")
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}.")
    if not 0.0 <= float(skew_alpha) <= 1.0:
        raise ValueError(f"skew_alpha must be in [0, 1], got {skew_alpha}.")
    if not (math.isfinite(float(temperature)) and float(temperature) > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}.")


def _check_teacher_shapes(
    n: int, vocab: int, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, divergence: str
) -> None:
    if teacher_ids.dim() != 2 or teacher_ids.shape[0] != n:
        raise ValueError(f"teacher_ids must be [N, k] with N = {n}, got shape {tuple(teacher_ids.shape)}.")
    if teacher_ids.dtype.is_floating_point or teacher_ids.dtype == torch.bool:
        raise ValueError(f"teacher_ids must hold integer token ids, got dtype {teacher_ids.dtype}.")
    k = teacher_ids.shape[1]
    if k < 1:
        raise ValueError("teacher_ids must hold at least one id per position (k >= 1).")
    if k > vocab:
        raise ValueError(f"teacher_ids has k = {k} ids per position, more than the vocabulary size {vocab}.")
    if tuple(teacher_logprobs.shape) != tuple(teacher_ids.shape):
        raise ValueError(
            f"teacher_logprobs must have the shape of teacher_ids {tuple(teacher_ids.shape)}, "
            f"got {tuple(teacher_logprobs.shape)}."
        )
    if not teacher_logprobs.dtype.is_floating_point:
        raise ValueError(f"teacher_logprobs must be floating point, got dtype {teacher_logprobs.dtype}.")
    needs_token = divergence == "sampled_reverse_kl"
    for name, tensor in (("teacher_token_logprobs", teacher_token_logprobs), ("target_ids", target_ids)):
        if tensor is None:
            if needs_token:
                raise ValueError(f"divergence='sampled_reverse_kl' needs {name}, got None.")
            continue
        if tuple(tensor.shape) != (n,):
            raise ValueError(f"{name} must be [N] with N = {n}, got shape {tuple(tensor.shape)}.")


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    # float64 stays float64 (exact tests); everything else (fp32, bf16, fp16) is computed in float32
    return torch.float64 if torch.float64 in dtypes else torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# Sparse divergence
# ---------------------------------------------------------------------------------------------------------------------


def _teacher_log_tail(teacher_logprobs: torch.Tensor) -> torch.Tensor:
    """log(max(0, 1 - sum_i exp(t_i))) per row (``-inf`` when the top-k holds all the mass), computed stably."""
    raw_tail = (-torch.expm1(torch.logsumexp(teacher_logprobs, dim=-1))).clamp_min(0)
    return torch.log(raw_tail)


def _teacher_outcomes(teacher_logprobs: torch.Tensor, temperature: float, bucket: bool) -> torch.Tensor:
    """The teacher's log-probs over the ``k`` cached ids (+ the floored tail bucket) at ``temperature``: [N, k (+1)]"""
    t = teacher_logprobs
    if not bucket:
        return torch.log_softmax(t / temperature, dim=-1)
    z = torch.cat([t, _teacher_log_tail(t).unsqueeze(-1)], dim=-1)
    log_p = torch.log_softmax(z / temperature, dim=-1)
    return torch.cat([log_p[..., :-1], log_p[..., -1:].clamp_min(math.log(TAIL_FLOOR))], dim=-1)


def _sampled_teacher_logprob(
    teacher_logprobs: torch.Tensor, teacher_token_logprobs: torch.Tensor, temperature: float, vocab: int
) -> torch.Tensor:
    """log p_T(y) for ``sampled_reverse_kl``: the cached value at T = 1, else normalised over the support + tail."""
    if temperature == 1.0:
        return teacher_token_logprobs
    z = teacher_logprobs
    if teacher_logprobs.shape[-1] < vocab:
        z = torch.cat([z, _teacher_log_tail(z).unsqueeze(-1)], dim=-1)
    return teacher_token_logprobs / temperature - torch.logsumexp(z / temperature, dim=-1)


def _outcome_logprobs(
    student_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    temperature: float,
    tail: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probs over the ``k`` cached ids (+ the tail bucket): ``(log_q, log_p)``, [N, k (+1)]."""
    bucket = tail == "bucket" and teacher_ids.shape[-1] < student_logprobs.shape[-1]
    lq_ids = student_logprobs.gather(-1, teacher_ids)
    if not bucket:
        log_q = lq_ids - torch.logsumexp(lq_ids, dim=-1, keepdim=True)
    else:
        # The student's tail: an exact log-sum-exp over the tokens outside the support (finite: there is at least one)
        outside = student_logprobs.scatter(-1, teacher_ids, float("-inf"))
        log_q = torch.cat([lq_ids, torch.logsumexp(outside, dim=-1, keepdim=True)], dim=-1)
    return log_q, _teacher_outcomes(teacher_logprobs, temperature, bucket)


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), elementwise, from log a and log b (weight_a in [0, 1])."""
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) summed over the last dim (log_a finite, so 0 * log 0 never occurs)."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def sparse_divergence(
    student_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_token_logprobs: torch.Tensor | None,
    target_ids: torch.Tensor | None,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    temperature: float = 1.0,
    tail: str = "bucket",
) -> torch.Tensor:
    """Per-position divergence ``[N]`` between the student and the cached sparse teacher, times ``temperature ** 2``.

    Args:
        student_logprobs: ``[N, V]``, ``log_softmax(student_logits / temperature)`` (the caller applies ``T``).
        teacher_ids: ``[N, k]`` integer ids of the teacher's top-k (distinct within a row).
        teacher_logprobs: ``[N, k]`` the teacher's log-probs of those ids at temperature 1 (finite).
        teacher_token_logprobs: ``[N]`` the teacher's log-prob of ``target_ids`` at temperature 1. Only
            ``"sampled_reverse_kl"`` reads it (the others accept ``None``).
        target_ids: ``[N]`` the token that follows in the sequence (the student's own sample in on-policy data).
            Only ``"sampled_reverse_kl"`` reads it.
        divergence: one of :data:`DIVERGENCES`: ``forward_kl`` = KL(p || q), ``reverse_kl`` = KL(q || p), ``jsd`` =
            TRL's generalized JSD (``beta``), ``skew_forward_kl`` = KL(p || a p + (1 - a) q), ``skew_reverse_kl`` =
            KL(q || a q + (1 - a) p) with ``a = skew_alpha`` (DistiLLM), ``tvd`` = 0.5 * sum |p - q|,
            ``sampled_reverse_kl`` = log q(y) - log p(y) with the score-function gradient.
        tail: one of :data:`TAIL_MODES` (see the module docstring).

    Returns:
        ``[N]`` in float32 (float64 when the student's log-probs are float64), differentiable w.r.t.
        ``student_logprobs``.
    """
    _check_options(divergence, tail, beta, skew_alpha, temperature)
    if student_logprobs.dim() != 2:
        raise ValueError(f"student_logprobs must be [N, V], got shape {tuple(student_logprobs.shape)}.")
    if not student_logprobs.dtype.is_floating_point:
        raise ValueError(f"student_logprobs must be floating point, got dtype {student_logprobs.dtype}.")
    n, vocab = student_logprobs.shape
    _check_teacher_shapes(n, vocab, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, divergence)

    dtype = _compute_dtype(student_logprobs.dtype)
    temperature, beta, skew_alpha = float(temperature), float(beta), float(skew_alpha)
    student_logprobs = student_logprobs.to(dtype)
    teacher_ids = teacher_ids.long()
    teacher_logprobs = teacher_logprobs.to(dtype)
    scale = temperature**2

    if divergence == "sampled_reverse_kl":
        lq = student_logprobs.gather(-1, target_ids.long().unsqueeze(-1)).squeeze(-1)
        lp = _sampled_teacher_logprob(teacher_logprobs, teacher_token_logprobs.to(dtype), temperature, vocab)
        d = (lq - lp).detach()
        # Surrogate: its value is d, its gradient is d * grad(log q(y)) (REINFORCE for E_q[log q - log p])
        prod = lq * d
        return scale * (prod - prod.detach() + d)

    log_q, log_p = _outcome_logprobs(student_logprobs, teacher_ids, teacher_logprobs, temperature, tail)
    if divergence == "forward_kl":
        value = _kl(log_p, log_q)
    elif divergence == "reverse_kl":
        value = _kl(log_q, log_p)
    elif divergence == "jsd":
        if beta == 0.0:
            value = _kl(log_p, log_q)
        elif beta == 1.0:
            value = _kl(log_q, log_p)
        else:
            log_m = _log_mix(log_p, log_q, beta)  # m = beta * p + (1 - beta) * q, as in TRL
            value = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    elif divergence == "skew_forward_kl":
        value = _kl(log_p, _log_mix(log_p, log_q, skew_alpha))
    elif divergence == "skew_reverse_kl":
        value = _kl(log_q, _log_mix(log_q, log_p, skew_alpha))
    else:  # tvd
        value = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)
    return scale * value


# ---------------------------------------------------------------------------------------------------------------------
# Chunked loss from hidden states
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class KDLossOutput:
    """What :func:`chunked_kd_loss` returns.

    Every ``*_sum`` is a detached scalar summed over positions, in float32 (float64 when ``hidden`` or the head is
    float64); ``loss`` has the same dtype. ``top1_agreement_sum`` and ``student_entropy_sum`` cost two more passes over
    the logits, so they are ``None`` unless ``compute_stats=True`` (e.g. on logging steps only).
    """

    loss: torch.Tensor  # scalar, differentiable: (kd_weight * sum_kd + (1 - kd_weight) * sum_ce) / normalizer
    kd_sum: torch.Tensor  # sum over positions of the divergence (times T**2)
    ce_sum: torch.Tensor  # sum over positions of -log q(target) at temperature 1
    num_positions: int
    top1_agreement_sum: torch.Tensor | None  # positions where the student's argmax == the teacher's top-1 id
    student_entropy_sum: torch.Tensor | None  # the student's entropy at temperature 1, nats
    teacher_tail_mass_sum: torch.Tensor  # 1 - sum(exp(teacher_logprobs)), clamped >= 0


# Divergences whose logit gradient (mixed with CE) is computed in closed form, without autograd (1 or 2 live
# [chunk, V] buffers), and the [chunk, V] buffers the autograd path keeps alive (about 7.5 measured at T = 1, 8.5 at 2)
_CLOSED_FORM = ("forward_kl", "sampled_reverse_kl")
_AUTOGRAD_BUFFERS = 8


def auto_kd_chunk_size(vocab_size: int, hidden_size: int, *, live_buffers: int = 2) -> int:
    """Positions per chunk for :func:`chunked_kd_loss` when ``chunk_size=None``.

    Rule: the chunk's ``live_buffers`` float32 ``[chunk, V]`` working buffers together take at most the LM head's own
    float32 size (``V * H * 4`` bytes), so the loss never needs more scratch memory than one more copy of the head,
    whatever the vocabulary: ``chunk = H // live_buffers`` rounded down to a power of two and clamped to
    ``[64, 4096]``. E.g. 256 for SmolLM2-135M (V = 49152, H = 576), 512 for Qwen2-1.5B (V = 151936, H = 1536) with
    the default 2 (the closed form's most; see :func:`chunked_kd_loss` for what each call keeps alive).
    """
    if vocab_size < 1 or hidden_size < 1 or live_buffers < 1:
        raise ValueError(
            f"vocab_size, hidden_size and live_buffers must be >= 1, got {vocab_size}, {hidden_size}, {live_buffers}."
        )
    head_bytes, row_bytes = vocab_size * hidden_size * 4, live_buffers * vocab_size * 4
    rows = max(head_bytes // row_bytes, 1)
    return min(max(1 << (rows.bit_length() - 1), 64), 4096)


def _no_autocast(device: torch.device):
    # Under mixed precision (e.g. the Trainer's bf16 autocast) the projection would otherwise run in bf16
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _autograd_chunk(logits, spare, ids, t, tok, tgt, cfg, need_grad, stats):
    """Any divergence + CE on one chunk by autograd: ``(kd, ce, top1, entropy, grad_logits)`` (``spare`` unused)."""
    kd_weight, temperature = cfg["kd_weight"], cfg["temperature"]
    div_kwargs = {key: cfg[key] for key in ("divergence", "beta", "skew_alpha", "temperature", "tail")}
    grad_logits = top1 = entropy = None
    with torch.enable_grad():
        logits.requires_grad_(need_grad)
        logprobs_t = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
        logprobs_1 = logprobs_t if temperature == 1.0 else torch.log_softmax(logits, dim=-1)
        kd = sparse_divergence(logprobs_t, ids, t, tok, tgt, **div_kwargs).sum()
        ce = -logprobs_1.gather(-1, tgt.unsqueeze(-1)).sum()
        if need_grad:
            (grad_logits,) = torch.autograd.grad(kd_weight * kd + (1.0 - kd_weight) * ce, logits)
    if stats:
        with torch.no_grad():
            entropy = -(logprobs_1.exp() * logprobs_1).sum()
            top1 = (logits.argmax(-1) == ids[:, 0]).sum()
    return kd.detach(), ce.detach(), top1, entropy, grad_logits


def _two_exp_passes(cfg, k: int, vocab: int) -> bool:
    """Whether the closed form needs the full softmax at T besides CE's at 1 (a second exp pass, a second buffer)."""
    sampled = cfg["divergence"] == "sampled_reverse_kl"
    return cfg["temperature"] != 1.0 and (sampled or (cfg["tail"] == "bucket" and k < vocab))


def _closed_form_chunk(logits, spare, ids, t, tok, tgt, cfg, need_grad, stats):
    """``forward_kl`` or ``sampled_reverse_kl`` + CE on one chunk, gradient in closed form: as ``_autograd_chunk``.

    Overwrites ``logits`` and ``spare`` (a buffer of its shape, needed only with ``stats`` or ``_two_exp_passes``);
    the gradient it returns is one of them. With ``q = softmax(z / T)``, the gradient of ``T**2 * KL(p || q)`` w.r.t.
    ``z`` is ``T * (S q - p)`` on the cached ids and ``T * q * (S - p_tail / q_tail)`` outside them (``S = sum(p)``,
    1 up to the tail floor) with the bucket tail, ``T * (S q~ - p~)`` on the ids and 0 outside when renormalised;
    that of ``T**2 * d * log q(y)`` is ``T * d * (onehot(y) - q)``; CE adds ``softmax(z) - onehot(target)``. Every
    sum over the tokens outside the cached ids is a log-sum-exp over them alone (ids masked to ``-inf``), so
    ``q_tail`` stays exact when the top-k holds almost all the mass.
    """
    kd_weight, temperature = cfg["kd_weight"], cfg["temperature"]
    vocab, k = logits.shape[1], ids.shape[1]
    sampled = cfg["divergence"] == "sampled_reverse_kl"
    bucket = not sampled and cfg["tail"] == "bucket" and k < vocab
    two_pass = _two_exp_passes(cfg, k, vocab)
    l_ids = logits.gather(1, ids)
    l_tgt = logits.gather(1, tgt.unsqueeze(1))
    top1 = (logits.argmax(-1) == ids[:, 0]).sum() if stats else None

    # The tokens outside the cached ids: e1 = exp(z - m), e_t = exp((z - m) / T) there (0 on the ids), and their sums
    m = e1 = e_t = None
    lse_out_1 = lse_out_t = torch.full_like(l_tgt, float("-inf"))
    if k < vocab:
        a = logits.scatter_(1, ids, float("-inf"))
        m = a.amax(-1, keepdim=True)
        a.sub_(m)
        e1 = torch.exp(a, out=spare) if stats or two_pass else a.exp_()
        s1 = e1.sum(-1, keepdim=True)
        lse_out_1 = m + s1.log()
        if stats:
            out_dot = torch.einsum("ij,ij->i", e1, a.scatter_(1, ids, 0.0)).unsqueeze(1)  # sum e1 * (z - m)
            if two_pass:
                a.scatter_(1, ids, float("-inf"))
        if two_pass:
            e_t = a.div_(temperature).exp_()
            s_t = e_t.sum(-1, keepdim=True)
            lse_out_t = m / temperature + s_t.log()
        else:
            e_t, s_t, lse_out_t = e1, s1, lse_out_1

    lse_1 = torch.logaddexp(torch.logsumexp(l_ids, -1, keepdim=True), lse_out_1)
    ce = (lse_1 - l_tgt).sum()
    q1_ids = (l_ids - lse_1).exp()
    entropy = None
    if stats:
        plogp = (q1_ids * (l_ids - lse_1)).sum(-1, keepdim=True)
        if m is not None:
            plogp = plogp + (m - lse_1).exp() * (out_dot + (m - lse_1) * s1)
        entropy = -plogp.sum()

    z_ids = l_ids / temperature if temperature != 1.0 else l_ids
    lse_t = torch.logaddexp(torch.logsumexp(z_ids, -1, keepdim=True), lse_out_t)
    alpha = 0.0  # the divergence's gradient on the outside tokens, per unit of e_t
    tgt_grad = torch.full_like(l_tgt, -(1.0 - kd_weight))
    if sampled:
        lp = _sampled_teacher_logprob(t, tok, temperature, vocab).unsqueeze(1)
        d = l_tgt / temperature - lse_t - lp
        kd = temperature**2 * d.sum()
        coef = kd_weight * temperature * d
        grad_ids = -coef * (z_ids - lse_t).exp()
        if m is not None:
            alpha = -coef * (m / temperature - lse_t).exp()
        tgt_grad = tgt_grad + coef
    else:
        log_p = _teacher_outcomes(t, temperature, bucket)
        p = log_p.exp()
        total = p.sum(-1, keepdim=True)
        if bucket:
            log_q = torch.cat([z_ids - lse_t, lse_out_t - lse_t], dim=-1)
            alpha = kd_weight * temperature * (total * (m / temperature - lse_t).exp() - p[:, -1:] / s_t)
        else:
            log_q = torch.log_softmax(z_ids, dim=-1)
        kd = temperature**2 * _kl(log_p, log_q).sum()
        grad_ids = kd_weight * temperature * (total * log_q[:, :k].exp() - p[:, :k])
    if not need_grad:
        return kd, ce, top1, entropy, None

    if m is None:  # k == V: every token is a cached id
        grad = logits.zero_()
    else:
        beta = (1.0 - kd_weight) * (m - lse_1).exp()  # CE's gradient on the outside tokens, per unit of e1
        grad = e_t.mul_(alpha).addcmul_(e1, beta) if two_pass else e1.mul_(beta + alpha)
    grad.scatter_(1, ids, grad_ids + (1.0 - kd_weight) * q1_ids)  # 0 there before: exp(-inf)
    grad.scatter_add_(1, tgt.unsqueeze(1), tgt_grad)
    return kd, ce, top1, entropy, grad


def _chunk_pass(hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, cfg, grads):
    """Runs every chunk once: the loss sums and stats, and (``grads``) the gradients of the weighted sum.

    Returns ``(objective, kd_sum, ce_sum, top1, entropy, tail, grad_hidden, grad_weight, grad_bias)``; the objective is
    ``kd_weight * kd_sum + (1 - kd_weight) * ce_sum`` and the gradients are those of the objective (None when not
    needed), in the compute dtype (float32, or float64 for float64 inputs). ``top1`` and ``entropy`` are 0 unless
    ``cfg["compute_stats"]``.
    """
    with _no_autocast(hidden.device):
        return _chunk_pass_fp32(
            hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, cfg, grads
        )


def _chunk_pass_fp32(
    hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, cfg, grads
):
    need_h, need_w, need_b = grads
    n, device = hidden.shape[0], hidden.device
    dtype = _compute_dtype(hidden.dtype, weight.dtype)
    kd_weight, stats = cfg["kd_weight"], cfg["compute_stats"]
    closed_form = cfg["divergence"] in _CLOSED_FORM
    chunk_fn = _closed_form_chunk if closed_form else _autograd_chunk
    if closed_form:
        live_buffers = 2 if stats or _two_exp_passes(cfg, teacher_ids.shape[1], weight.shape[0]) else 1
    else:
        live_buffers = _AUTOGRAD_BUFFERS
    chunk_size = cfg["chunk_size"] or auto_kd_chunk_size(weight.shape[0], weight.shape[1], live_buffers=live_buffers)

    w = weight.detach().to(dtype)  # a copy only when the head is not already in the compute dtype
    b = bias.detach().to(dtype) if bias is not None else None
    grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=device) if need_h else None
    grad_w = (torch.empty_like(w) if n else torch.zeros_like(w)) if need_w else None  # the first chunk: beta = 0
    grad_b = torch.zeros_like(b) if need_b else None
    sums = torch.zeros(6, dtype=dtype, device=device)  # objective, kd, ce, top1, entropy, tail
    zero = sums.new_zeros(())
    # The closed form works in one or two [chunk, V] buffers allocated once: a fresh buffer per chunk costs more in
    # page faults (CPU) than the elementwise passes over it
    work = spare = None
    if closed_form and n:
        work = torch.empty(min(chunk_size, n), weight.shape[0], dtype=dtype, device=device)
        if live_buffers == 2:
            spare = torch.empty_like(work)

    teacher_ids = teacher_ids.long()
    target_ids = target_ids.long()
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        h = hidden[start:end].detach().to(dtype)
        with torch.no_grad():
            out = None if work is None else work[: end - start]
            logits = torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)
            ids, t, tgt = teacher_ids[start:end], teacher_logprobs[start:end].to(dtype), target_ids[start:end]
            tok = None if teacher_token_logprobs is None else teacher_token_logprobs[start:end].to(dtype)
            chunk_spare = None if spare is None else spare[: end - start]
            kd, ce, top1, entropy, grad_logits = chunk_fn(
                logits, chunk_spare, ids, t, tok, tgt, cfg, any(grads), stats
            )
            del logits  # the autograd path's logits: only their gradient outlives this step
            tail = (-torch.expm1(torch.logsumexp(t, dim=-1))).clamp_min(0).sum()
            top1 = zero if top1 is None else top1.to(dtype)
            entropy = zero if entropy is None else entropy
            sums += torch.stack([kd_weight * kd + (1.0 - kd_weight) * ce, kd, ce, top1, entropy, tail])
            if need_h:
                torch.mm(grad_logits, w, out=grad_hidden[start:end])
            if need_w:
                grad_w.addmm_(grad_logits.t(), h, beta=1.0 if start else 0.0)
            if need_b:
                grad_b += grad_logits.sum(0)
            del grad_logits

    return (*sums.unbind(), grad_hidden, grad_w, grad_b)


class _ChunkedKDFunction(torch.autograd.Function):
    """Forward computes the loss sums and the gradients chunk by chunk; backward only scales the stored gradients."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, cfg):
        grads = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        objective, kd, ce, top1, entropy, tail, grad_h, grad_w, grad_b = _chunk_pass(
            hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, cfg, grads
        )
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(kd, ce, top1, entropy, tail)
        return objective, kd, ce, top1, entropy, tail

    @staticmethod
    def backward(ctx, grad_objective, *unused):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_objective is None:
            return (None,) * 8
        results = []
        for grad, dtype in zip((grad_h, grad_w, grad_b), ctx.dtypes, strict=True):
            # Scale in the compute dtype, in place (a copy of the head's size costs as much as the scaling), then
            # round once to the parameter's dtype. A second backward through this graph fails the saved tensors'
            # version check instead of scaling twice.
            results.append(None if grad is None else grad.mul_(grad_objective.to(grad.dtype)).to(dtype))
        return (*results, None, None, None, None, None)


def chunked_kd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_token_logprobs: torch.Tensor | None,
    target_ids: torch.Tensor,
    *,
    kd_weight: float = 0.9,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    skew_alpha: float = 0.1,
    temperature: float = 1.0,
    tail: str = "bucket",
    normalizer: float | torch.Tensor = 1.0,
    chunk_size: int | None = None,
    compute_stats: bool = True,
) -> KDLossOutput:
    """``(kd_weight * sum(divergence) + (1 - kd_weight) * sum(CE)) / normalizer`` from the student's hidden states.

    The logits ``hidden @ weight.T + bias`` are computed ``chunk_size`` positions at a time in float32 (float64 when
    ``hidden`` or ``weight`` is float64) and never all at once; the gradients w.r.t. ``hidden``, ``weight`` and
    ``bias`` are computed during the forward pass, chunk by chunk, and only scaled in backward, so no chunk's logits
    outlive its own step. For ``forward_kl`` and ``sampled_reverse_kl`` the logit gradient is computed in closed form
    (no autograd), in place, with at most two ``[chunk_size, V]`` float32 buffers alive; the other divergences go
    through autograd (about eight). Peak extra memory: those buffers, plus a float32 copy of the head when it is not
    float32 and a float32 gradient accumulator of the head's size.

    Args:
        hidden: ``[N, H]`` the student's final hidden states at the scored positions (any float dtype).
        weight: ``[V, H]`` the LM head. bias: ``[V]`` or None.
        teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids: as in :func:`sparse_divergence`.
        kd_weight: the divergence's weight; the CE (``-log q(target)`` at temperature 1) gets ``1 - kd_weight``.
        divergence, beta, skew_alpha, temperature, tail: as in :func:`sparse_divergence` (the student's logits are
            divided by ``temperature`` for the divergence only).
        normalizer: float or 0-d tensor dividing the weighted sum (e.g. the token count across gradient accumulation
            and devices). A normalizer of 0 is treated as 1 (the sums are then 0 too).
        chunk_size: positions per chunk; ``None``: :func:`auto_kd_chunk_size` for this head and the buffers this call
            keeps alive (so they take at most the head's own float32 size): for ``forward_kl`` and
            ``sampled_reverse_kl``, 2 with ``compute_stats`` or a second softmax (T != 1 with the bucket tail or
            ``sampled_reverse_kl``) and 1 otherwise; 8 for the other divergences.
        compute_stats: also compute ``top1_agreement_sum`` and ``student_entropy_sum`` (an argmax and an entropy
            pass over the logits); with False they are ``None``. The loss and gradients do not depend on it.

    Returns:
        :class:`KDLossOutput`. With ``N == 0`` the loss is a zero that still backpropagates (zero gradients). The
        loss backpropagates once: backward scales the stored gradients in place, so a second backward through the
        same graph (``retain_graph=True``) raises instead of scaling them twice.
    """
    _check_options(divergence, tail, beta, skew_alpha, temperature)
    if not 0.0 <= float(kd_weight) <= 1.0:
        raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}.")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    if hidden.dim() != 2 or not hidden.dtype.is_floating_point:
        raise ValueError(f"hidden must be a floating point [N, H] tensor, got shape {tuple(hidden.shape)}.")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[1]} (hidden's last dim), got shape {tuple(weight.shape)}."
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [V] with V = {weight.shape[0]}, got shape {tuple(bias.shape)}.")
    if target_ids is None:
        raise ValueError("target_ids is required (the CE term and the stats read it).")
    n, vocab = hidden.shape[0], weight.shape[0]
    _check_teacher_shapes(n, vocab, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, divergence)
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a number or a 0-d tensor, got shape {tuple(normalizer.shape)}.")
    elif float(normalizer) < 0 or not math.isfinite(float(normalizer)):
        raise ValueError(f"normalizer must be a finite number >= 0, got {normalizer}.")

    cfg = {
        "kd_weight": float(kd_weight),
        "divergence": divergence,
        "beta": float(beta),
        "skew_alpha": float(skew_alpha),
        "temperature": float(temperature),
        "tail": tail,
        "chunk_size": None if chunk_size is None else int(chunk_size),
        "compute_stats": bool(compute_stats),
    }
    args = (hidden, weight, bias, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids)
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    if needs_grad:
        objective, kd, ce, top1, entropy, tail_mass = _ChunkedKDFunction.apply(*args, cfg)
    else:
        objective, kd, ce, top1, entropy, tail_mass, *_ = _chunk_pass(*args, cfg, (False, False, False))

    if isinstance(normalizer, torch.Tensor):
        norm = normalizer.detach().reshape(()).to(device=objective.device, dtype=objective.dtype)
        norm = torch.where(norm == 0, torch.ones_like(norm), norm)
    else:
        norm = float(normalizer) or 1.0
    return KDLossOutput(
        loss=objective / norm,
        kd_sum=kd,
        ce_sum=ce,
        num_positions=n,
        top1_agreement_sum=top1 if compute_stats else None,
        student_entropy_sum=entropy if compute_stats else None,
        teacher_tail_mass_sum=tail_mass,
    )
