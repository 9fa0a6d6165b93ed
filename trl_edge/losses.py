"""Distillation losses against a cached sparse teacher distribution.

The teacher cache holds, per scored position, the teacher's top-k next-token ids and log-probs (temperature 1, sorted
by descending log-prob) and its log-prob of the token that actually follows. Two pieces live here:

* :func:`sparse_divergence`: the per-position divergence between the student's full next-token distribution and the
  teacher's sparse one, for the divergences in :data:`DIVERGENCES` (one :class:`Divergence` object each, in
  :data:`DIVERGENCE_REGISTRY`).
* :func:`chunked_kd_loss`: ``kd_weight * divergence + (1 - kd_weight) * CE`` straight from the student's final hidden
  states and LM head, chunk by chunk over the positions, with the gradients computed during the forward pass so that
  no ``[N, V]`` logits are ever kept alive for backward (the idea of TRL's chunked divergence and Liger's fused
  linear losses). For ``forward_kl`` and ``sampled_reverse_kl`` the logit gradient is written in closed form, in
  place, so the loss costs about what a plain cross-entropy does; the other divergences go through autograd.

What the loss is (divergence, its parameters, temperature, tail, ``kd_weight``) is one :class:`KDLossOptions`,
checked once against its bounds (:attr:`KDLossOptions.BOUNDS`, :attr:`KDLossOptions.CHOICES`), which the trainer's
config reads too.

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
import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

TAIL_MODES = ("bucket", "renormalize")
TAIL_FLOOR = 1e-12

__all__ = [
    "DIVERGENCES",
    "DIVERGENCE_REGISTRY",
    "TAIL_MODES",
    "TAIL_FLOOR",
    "Bound",
    "Divergence",
    "ClosedFormDivergence",
    "KDLossOptions",
    "KDLossOutput",
    "sparse_divergence",
    "auto_kd_chunk_size",
    "chunked_kd_loss",
]


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    # float64 stays float64 (exact tests); everything else (fp32, bf16, fp16) is computed in float32
    return torch.float64 if torch.float64 in dtypes else torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# The outcomes both distributions are compared over
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


# ---------------------------------------------------------------------------------------------------------------------
# The divergences: one object each
# ---------------------------------------------------------------------------------------------------------------------


class Divergence:
    """A divergence between the student ``q`` and the cached sparse teacher ``p``, per position.

    Most compare the two distributions over the cached outcomes (``on_outcomes``); one that reads the sampled
    token instead (``reads_sampled_token``) overrides ``per_position``. Values are not yet multiplied by ``T ** 2``.
    """

    name: ClassVar[str]
    reads_sampled_token: ClassVar[bool] = False  # reads teacher_token_logprobs and target_ids

    def per_position(self, student_logprobs, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids,
                     options: KDLossOptions) -> torch.Tensor:  # fmt: skip
        """``[N]``: the divergence at each position (inputs as :func:`sparse_divergence` takes them)."""
        log_q, log_p = _outcome_logprobs(
            student_logprobs, teacher_ids, teacher_logprobs, options.temperature, options.tail
        )
        return self.on_outcomes(log_q, log_p, options)

    def on_outcomes(self, log_q: torch.Tensor, log_p: torch.Tensor, options: KDLossOptions) -> torch.Tensor:
        """``[N]`` from the student's and the teacher's log-probs over the same outcomes, ``[N, k (+1)]``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ClosedFormDivergence(Divergence):
    """A divergence whose gradient w.r.t. the student's logits :func:`chunked_kd_loss` computes in closed form."""

    def needs_tempered_outside(self, options: KDLossOptions, k: int, vocab: int) -> bool:
        """Whether the gradient reads the softmax at ``T`` of the tokens outside the cached ids besides CE's softmax
        at 1 (a second exp pass over the chunk, and a second ``[chunk, V]`` buffer)."""
        raise NotImplementedError

    def logit_gradient(self, student: _TemperedStudent, teacher_logprobs, teacher_token_logprobs,
                       options: KDLossOptions, kd_weight):  # fmt: skip
        """The divergence on one chunk and the gradient of ``kd_weight * T**2 * divergence`` w.r.t. the logits ``z``.

        ``kd_weight`` is a float or a ``[chunk, 1]`` tensor. Returns ``(values [chunk] times T**2, on_ids [chunk, k],
        outside, on_target)``: the gradient on the cached ids; on every token outside them, ``outside * e_T`` with
        ``e_T = exp(z / T - max)`` (``outside`` a float or ``[chunk, 1]``); on the target token, ``on_target`` added
        (a float or ``[chunk, 1]``).
        """
        raise NotImplementedError


class ForwardKL(ClosedFormDivergence):
    """KL(p || q). Its logit gradient (of ``T**2 * KL``): ``T * (S q - p)`` on the cached ids and
    ``T * q * (S - p_tail / q_tail)`` outside them with the bucket tail (``S = sum(p)``, 1 up to the tail floor);
    ``T * (S q~ - p~)`` on the ids and 0 outside when renormalised."""

    name = "forward_kl"

    def on_outcomes(self, log_q, log_p, options):
        return _kl(log_p, log_q)

    def needs_tempered_outside(self, options, k, vocab):
        return options.temperature != 1.0 and options.tail == "bucket" and k < vocab

    def logit_gradient(self, student, teacher_logprobs, teacher_token_logprobs, options, kd_weight):
        temperature, k = options.temperature, student.z_ids.shape[1]
        bucket = options.tail == "bucket" and k < student.vocab
        log_p = _teacher_outcomes(teacher_logprobs, temperature, bucket)
        p = log_p.exp()
        p_sum = p.sum(-1, keepdim=True)
        outside = 0.0
        if bucket:
            log_q = torch.cat([student.z_ids - student.lse, student.lse_outside - student.lse], dim=-1)
            q_per_e = (student.outside_max - student.lse).exp()  # q of an outside token per unit of e_T
            outside = kd_weight * temperature * (p_sum * q_per_e - p[:, -1:] / student.outside_sum)
        else:
            log_q = torch.log_softmax(student.z_ids, dim=-1)
        values = temperature**2 * _kl(log_p, log_q)
        on_ids = kd_weight * temperature * (p_sum * log_q[:, :k].exp() - p[:, :k])
        return values, on_ids, outside, 0.0


class ReverseKL(Divergence):
    """KL(q || p)."""

    name = "reverse_kl"

    def on_outcomes(self, log_q, log_p, options):
        return _kl(log_q, log_p)


class GeneralizedJSD(Divergence):
    """TRL's generalized JSD: ``beta * KL(p || m) + (1 - beta) * KL(q || m)`` with ``m = beta p + (1 - beta) q``;
    ``beta = 0`` is KL(p || q), ``beta = 1`` is KL(q || p)."""

    name = "jsd"

    def on_outcomes(self, log_q, log_p, options):
        beta = options.beta
        if beta == 0.0:
            return _kl(log_p, log_q)
        if beta == 1.0:
            return _kl(log_q, log_p)
        log_m = _log_mix(log_p, log_q, beta)  # m = beta * p + (1 - beta) * q, as in TRL
        return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)


class SkewForwardKL(Divergence):
    """KL(p || a p + (1 - a) q), ``a = skew_alpha`` (DistiLLM)."""

    name = "skew_forward_kl"

    def on_outcomes(self, log_q, log_p, options):
        return _kl(log_p, _log_mix(log_p, log_q, options.skew_alpha))


class SkewReverseKL(Divergence):
    """KL(q || a q + (1 - a) p), ``a = skew_alpha`` (DistiLLM)."""

    name = "skew_reverse_kl"

    def on_outcomes(self, log_q, log_p, options):
        return _kl(log_q, _log_mix(log_q, log_p, options.skew_alpha))


class TotalVariation(Divergence):
    """0.5 * sum |p - q|."""

    name = "tvd"

    def on_outcomes(self, log_q, log_p, options):
        return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


class SampledReverseKL(ClosedFormDivergence):
    """``log q(y) - log p(y)`` at the sequence's next token ``y``, with the score-function gradient ``d * grad log
    q(y)`` (the on-policy estimator of KL(q || p); see the module docstring). Its logit gradient (of ``T**2 * d *
    log q_T(y)``): ``T * d * (onehot(y) - q)``."""

    name = "sampled_reverse_kl"
    reads_sampled_token = True

    def per_position(self, student_logprobs, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids,
                     options):  # fmt: skip
        vocab = student_logprobs.shape[-1]
        lq = student_logprobs.gather(-1, target_ids.long().unsqueeze(-1)).squeeze(-1)
        lp = _sampled_teacher_logprob(teacher_logprobs, teacher_token_logprobs, options.temperature, vocab)
        d = (lq - lp).detach()
        # Surrogate: its value is d, its gradient is d * grad(log q(y)) (REINFORCE for E_q[log q - log p])
        prod = lq * d
        return prod - prod.detach() + d

    def needs_tempered_outside(self, options, k, vocab):
        return options.temperature != 1.0

    def logit_gradient(self, student, teacher_logprobs, teacher_token_logprobs, options, kd_weight):
        temperature = options.temperature
        lp = _sampled_teacher_logprob(teacher_logprobs, teacher_token_logprobs, temperature, student.vocab)
        d = student.z_target - student.lse - lp.unsqueeze(1)
        coef = kd_weight * temperature * d
        on_ids = -coef * (student.z_ids - student.lse).exp()
        outside = 0.0 if student.outside_max is None else -coef * (student.outside_max - student.lse).exp()
        return temperature**2 * d.squeeze(1), on_ids, outside, coef


DIVERGENCE_REGISTRY: dict[str, Divergence] = {
    d.name: d
    for d in (ForwardKL(), ReverseKL(), GeneralizedJSD(), SkewForwardKL(), SkewReverseKL(), TotalVariation(),
              SampledReverseKL())
}  # fmt: skip
DIVERGENCES = tuple(DIVERGENCE_REGISTRY)

# The divergences chunked_kd_loss differentiates in closed form (1 or 2 live [chunk, V] buffers), and the [chunk, V]
# buffers the autograd path keeps alive (about 7.5 measured at T = 1, 8.5 at 2)
_CLOSED_FORM = tuple(name for name, d in DIVERGENCE_REGISTRY.items() if isinstance(d, ClosedFormDivergence))
_AUTOGRAD_BUFFERS = 8


# ---------------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The values an option may take: ``low`` to ``high``, either end open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return bool(above and below)

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class KDLossOptions:
    """What the distillation loss is, checked once: ``kd_weight * divergence + (1 - kd_weight) * CE``.

    Args:
        divergence: one of :data:`DIVERGENCES` (see :func:`sparse_divergence`).
        beta: the generalized JSD's interpolation (``divergence="jsd"``; TRL's convention: 0 = forward KL,
            1 = reverse KL).
        skew_alpha: the skew of ``skew_forward_kl`` / ``skew_reverse_kl`` (0: the plain KL; 1: zero).
        temperature: softmax temperature of both distributions (the divergence is multiplied by ``T ** 2``).
        tail: one of :data:`TAIL_MODES` (see the module docstring).
        kd_weight: the divergence's weight; the CE gets ``1 - kd_weight``.

    ``BOUNDS`` and ``CHOICES`` are the one statement of what each option accepts (the KD config checks them too).
    """

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "beta": Bound(0.0, 1.0),
        "skew_alpha": Bound(0.0, 1.0),
        "temperature": Bound(0.0, math.inf, low_open=True, high_open=True),
        "kd_weight": Bound(0.0, 1.0),
    }
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"divergence": DIVERGENCES, "tail": TAIL_MODES}

    divergence: str = "forward_kl"
    beta: float = 0.5
    skew_alpha: float = 0.1
    temperature: float = 1.0
    tail: str = "bucket"
    kd_weight: float = 0.9

    def __post_init__(self):
        for name, choices in self.CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"Unknown `{name}` {value!r}; choose one of {', '.join(choices)}.")
        for name, bound in self.BOUNDS.items():
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if number not in bound:
                raise ValueError(f"`{name}` must be in {bound}, got {value}.")
            object.__setattr__(self, name, number)

    @classmethod
    def resolve(cls, options: KDLossOptions | None, **given) -> KDLossOptions:
        """``options`` (default: the defaults) with the options given as keywords (``None``: not given) in place."""
        given = {name: value for name, value in given.items() if value is not None}
        if options is None:
            return cls(**given)
        if not isinstance(options, KDLossOptions):
            raise TypeError(f"options must be a KDLossOptions, got {type(options).__name__}.")
        return dataclasses.replace(options, **given) if given else options

    @property
    def divergence_fn(self) -> Divergence:
        return DIVERGENCE_REGISTRY[self.divergence]


# ---------------------------------------------------------------------------------------------------------------------
# Sparse divergence
# ---------------------------------------------------------------------------------------------------------------------


def _check_teacher_shapes(n: int, vocab: int, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids,
                          options: KDLossOptions) -> None:  # fmt: skip
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
    for name, tensor in (("teacher_token_logprobs", teacher_token_logprobs), ("target_ids", target_ids)):
        if tensor is None:
            if options.divergence_fn.reads_sampled_token:
                raise ValueError(f"divergence={options.divergence!r} needs {name}, got None.")
            continue
        if tuple(tensor.shape) != (n,):
            raise ValueError(f"{name} must be [N] with N = {n}, got shape {tuple(tensor.shape)}.")


def _divergence_per_position(student_logprobs, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids,
                             options: KDLossOptions) -> torch.Tensor:  # fmt: skip
    """:func:`sparse_divergence` on checked inputs."""
    dtype = _compute_dtype(student_logprobs.dtype)
    if teacher_token_logprobs is not None:
        teacher_token_logprobs = teacher_token_logprobs.to(dtype)
    value = options.divergence_fn.per_position(
        student_logprobs.to(dtype), teacher_ids.long(), teacher_logprobs.to(dtype), teacher_token_logprobs,
        target_ids, options,
    )  # fmt: skip
    return options.temperature**2 * value


def sparse_divergence(
    student_logprobs: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_token_logprobs: torch.Tensor | None,
    target_ids: torch.Tensor | None,
    *,
    options: KDLossOptions | None = None,
    divergence: str | None = None,
    beta: float | None = None,
    skew_alpha: float | None = None,
    temperature: float | None = None,
    tail: str | None = None,
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
        options: a :class:`KDLossOptions` (its ``kd_weight`` is not used here); the keywords below override it.
        divergence: one of :data:`DIVERGENCES` (default ``forward_kl``): ``forward_kl`` = KL(p || q), ``reverse_kl``
            = KL(q || p), ``jsd`` = TRL's generalized JSD (``beta``, default 0.5), ``skew_forward_kl`` =
            KL(p || a p + (1 - a) q), ``skew_reverse_kl`` = KL(q || a q + (1 - a) p) with ``a = skew_alpha``
            (default 0.1, DistiLLM), ``tvd`` = 0.5 * sum |p - q|, ``sampled_reverse_kl`` = log q(y) - log p(y)
            with the score-function gradient.
        temperature: default 1. tail: one of :data:`TAIL_MODES` (default ``bucket``; see the module docstring).

    The result is per position: a caller that weights positions multiplies it (``(weights * result).sum()``).

    Returns:
        ``[N]`` in float32 (float64 when the student's log-probs are float64), differentiable w.r.t.
        ``student_logprobs``.
    """
    options = KDLossOptions.resolve(options, divergence=divergence, beta=beta, skew_alpha=skew_alpha,
                                    temperature=temperature, tail=tail)  # fmt: skip
    if student_logprobs.dim() != 2:
        raise ValueError(f"student_logprobs must be [N, V], got shape {tuple(student_logprobs.shape)}.")
    if not student_logprobs.dtype.is_floating_point:
        raise ValueError(f"student_logprobs must be floating point, got dtype {student_logprobs.dtype}.")
    n, vocab = student_logprobs.shape
    _check_teacher_shapes(n, vocab, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, options)
    return _divergence_per_position(
        student_logprobs, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, options
    )


# ---------------------------------------------------------------------------------------------------------------------
# Chunked loss from hidden states
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class KDLossOutput:
    """What :func:`chunked_kd_loss` returns.

    Every ``*_sum`` is a detached scalar summed over positions, in float32 (float64 when ``hidden`` or the head is
    float64); ``loss`` has the same dtype. ``kd_sum`` and ``ce_sum`` are *unweighted*: each position counts once,
    whatever ``kd_weight`` or the per-position weights (they are statistics to log). ``top1_agreement_sum`` and
    ``student_entropy_sum`` cost two more passes over the logits, so they are ``None`` unless ``compute_stats=True``
    (e.g. on logging steps only).
    """

    loss: torch.Tensor  # scalar, differentiable: sum(w_kd * kd + w_ce * ce) / normalizer
    kd_sum: torch.Tensor  # sum over positions of the divergence (times T**2), unweighted
    ce_sum: torch.Tensor  # sum over positions of -log q(target) at temperature 1, unweighted
    num_positions: int
    top1_agreement_sum: torch.Tensor | None  # positions where the student's argmax == the teacher's top-1 id
    student_entropy_sum: torch.Tensor | None  # the student's entropy at temperature 1, nats
    teacher_tail_mass_sum: torch.Tensor  # 1 - sum(exp(teacher_logprobs)), clamped >= 0


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


@dataclass
class _Positions:
    """The scored positions' teacher data, targets and loss weights (a whole call's, or one chunk's)."""

    teacher_ids: torch.Tensor  # [N, k] int64
    teacher_logprobs: torch.Tensor  # [N, k]
    teacher_token_logprobs: torch.Tensor | None  # [N]
    target_ids: torch.Tensor  # [N] int64
    kd_weights: torch.Tensor | float  # [N] or the scalar kd_weight
    ce_weights: torch.Tensor | float  # [N] or the scalar 1 - kd_weight

    def rows(self, start: int, end: int, dtype: torch.dtype) -> _Positions:
        def take(x):
            return x[start:end].to(dtype) if isinstance(x, torch.Tensor) else x

        tok = self.teacher_token_logprobs
        return _Positions(self.teacher_ids[start:end], take(self.teacher_logprobs), None if tok is None else take(tok),
                          self.target_ids[start:end], take(self.kd_weights), take(self.ce_weights))  # fmt: skip

    @property
    def weighted(self) -> bool:
        return isinstance(self.kd_weights, torch.Tensor) or isinstance(self.ce_weights, torch.Tensor)

    def objective(self, kd_rows: torch.Tensor, ce_rows: torch.Tensor) -> torch.Tensor:
        """The weighted sum of one chunk's per-position divergences and CEs (``[chunk]`` each)."""
        if not self.weighted:
            return self.kd_weights * kd_rows.sum() + self.ce_weights * ce_rows.sum()
        return (self.kd_weights * kd_rows).sum() + (self.ce_weights * ce_rows).sum()


def _column(weight):
    """A per-position weight as a ``[chunk, 1]`` column (a scalar as it is)."""
    return weight.unsqueeze(1) if isinstance(weight, torch.Tensor) else weight


def _autograd_chunk(logits, spare, rows: _Positions, options: KDLossOptions, need_grad, stats):
    """Any divergence + CE on one chunk by autograd: ``(kd_rows, ce_rows, top1, entropy, grad_logits)`` (``spare``
    unused)."""
    temperature = options.temperature
    grad_logits = top1 = entropy = None
    with torch.enable_grad():
        logits.requires_grad_(need_grad)
        logprobs_t = torch.log_softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
        logprobs_1 = logprobs_t if temperature == 1.0 else torch.log_softmax(logits, dim=-1)
        kd_rows = _divergence_per_position(logprobs_t, rows.teacher_ids, rows.teacher_logprobs,
                                           rows.teacher_token_logprobs, rows.target_ids, options)  # fmt: skip
        ce_rows = -logprobs_1.gather(-1, rows.target_ids.unsqueeze(-1)).squeeze(-1)
        if need_grad:
            (grad_logits,) = torch.autograd.grad(rows.objective(kd_rows, ce_rows), logits)
    if stats:
        with torch.no_grad():
            entropy = -(logprobs_1.exp() * logprobs_1).sum()
            top1 = (logits.argmax(-1) == rows.teacher_ids[:, 0]).sum()
    return kd_rows.detach(), ce_rows.detach(), top1, entropy, grad_logits


def _two_exp_passes(options: KDLossOptions, k: int, vocab: int) -> bool:
    """Whether the closed form needs the full softmax at T besides CE's at 1 (a second exp pass, a second buffer)."""
    return options.divergence_fn.needs_tempered_outside(options, k, vocab)


@dataclass
class _TemperedStudent:
    """A chunk's student at temperature ``T``, as a closed-form divergence reads it (every log-sum-exp over the tokens
    outside the cached ids is over them alone, so ``q_tail`` stays exact when the top-k holds almost all the mass)."""

    vocab: int
    z_ids: torch.Tensor  # [c, k] the cached ids' logits / T
    z_target: torch.Tensor  # [c, 1] the target's logit / T
    lse: torch.Tensor  # [c, 1] log of the softmax's normaliser at T
    lse_outside: torch.Tensor  # [c, 1] its part over the tokens outside the cached ids (-inf when there are none)
    outside_max: torch.Tensor | None  # [c, 1] the largest outside logit / T (None when there is no outside token)
    outside_sum: torch.Tensor | None  # [c, 1] sum of exp(z / T - outside_max) outside the cached ids


def _closed_form_chunk(logits, spare, rows: _Positions, options: KDLossOptions, need_grad, stats):
    """A :class:`ClosedFormDivergence` + CE on one chunk, gradient in closed form: as ``_autograd_chunk``.

    Overwrites ``logits`` and ``spare`` (a buffer of its shape, needed only with ``stats`` or ``_two_exp_passes``);
    the gradient it returns is one of them. The divergence's gradient comes from its ``logit_gradient``; CE adds
    ``softmax(z) - onehot(target)``, times the CE weight.
    """
    divergence, temperature = options.divergence_fn, options.temperature
    vocab, k = logits.shape[1], rows.teacher_ids.shape[1]
    ids, target = rows.teacher_ids, rows.target_ids.unsqueeze(1)
    kd_weight, ce_weight = _column(rows.kd_weights), _column(rows.ce_weights)
    two_pass = _two_exp_passes(options, k, vocab)
    logit_ids = logits.gather(1, ids)
    logit_target = logits.gather(1, target)
    top1 = (logits.argmax(-1) == ids[:, 0]).sum() if stats else None

    # The tokens outside the cached ids, shifted by their max: exp_1 = exp(z - max), exp_t = exp((z - max) / T) there
    # (0 on the ids), and their sums
    outside_max = exp_1 = exp_t = None
    lse_outside_1 = lse_outside_t = torch.full_like(logit_target, float("-inf"))
    if k < vocab:
        shifted = logits.scatter_(1, ids, float("-inf"))
        outside_max = shifted.amax(-1, keepdim=True)
        shifted.sub_(outside_max)
        exp_1 = torch.exp(shifted, out=spare) if stats or two_pass else shifted.exp_()
        sum_1 = exp_1.sum(-1, keepdim=True)
        lse_outside_1 = outside_max + sum_1.log()
        if stats:  # sum exp_1 * (z - max), for the entropy
            outside_dot = torch.einsum("ij,ij->i", exp_1, shifted.scatter_(1, ids, 0.0)).unsqueeze(1)
            if two_pass:
                shifted.scatter_(1, ids, float("-inf"))
        if two_pass:
            exp_t = shifted.div_(temperature).exp_()
            sum_t = exp_t.sum(-1, keepdim=True)
            lse_outside_t = outside_max / temperature + sum_t.log()
        else:
            exp_t, sum_t, lse_outside_t = exp_1, sum_1, lse_outside_1

    lse_1 = torch.logaddexp(torch.logsumexp(logit_ids, -1, keepdim=True), lse_outside_1)
    ce_rows = (lse_1 - logit_target).squeeze(1)
    q1_ids = (logit_ids - lse_1).exp()
    entropy = None
    if stats:
        plogp = (q1_ids * (logit_ids - lse_1)).sum(-1, keepdim=True)
        if outside_max is not None:
            plogp = plogp + (outside_max - lse_1).exp() * (outside_dot + (outside_max - lse_1) * sum_1)
        entropy = -plogp.sum()

    z_ids = logit_ids / temperature if temperature != 1.0 else logit_ids
    student = _TemperedStudent(
        vocab=vocab,
        z_ids=z_ids,
        z_target=logit_target / temperature,
        lse=torch.logaddexp(torch.logsumexp(z_ids, -1, keepdim=True), lse_outside_t),
        lse_outside=lse_outside_t,
        outside_max=None if outside_max is None else outside_max / temperature,
        outside_sum=None if outside_max is None else sum_t,
    )
    kd_rows, kd_on_ids, kd_outside, kd_on_target = divergence.logit_gradient(
        student, rows.teacher_logprobs, rows.teacher_token_logprobs, options, kd_weight
    )
    if not need_grad:
        return kd_rows, ce_rows, top1, entropy, None

    if outside_max is None:  # k == V: every token is a cached id
        grad = logits.zero_()
    else:
        ce_outside = ce_weight * (outside_max - lse_1).exp()  # CE's gradient on the outside tokens, per unit of exp_1
        grad = exp_t.mul_(kd_outside).addcmul_(exp_1, ce_outside) if two_pass else exp_1.mul_(ce_outside + kd_outside)
    grad.scatter_(1, ids, kd_on_ids + ce_weight * q1_ids)  # 0 there before: exp(-inf)
    on_target = -ce_weight + kd_on_target  # CE's -onehot(target), and what the divergence adds there
    if not isinstance(on_target, torch.Tensor):
        on_target = torch.full_like(logit_target, on_target)
    grad.scatter_add_(1, target, on_target)
    return kd_rows, ce_rows, top1, entropy, grad


def _chunk_pass(hidden, weight, bias, positions: _Positions, options: KDLossOptions, chunk_size, stats, grads):
    """Runs every chunk once: the loss sums and stats, and (``grads``) the gradients of the weighted sum.

    Returns ``(objective, kd_sum, ce_sum, top1, entropy, tail, grad_hidden, grad_weight, grad_bias)``; the objective is
    the weighted sum of the divergences and CEs, and the gradients are those of the objective (None when not
    needed), in the compute dtype (float32, or float64 for float64 inputs), whatever autocast says. ``top1`` and
    ``entropy`` are 0 unless ``stats``.
    """
    with _no_autocast(hidden.device):
        return _run_chunks(hidden, weight, bias, positions, options, chunk_size, stats, grads)


def _run_chunks(hidden, weight, bias, positions: _Positions, options: KDLossOptions, chunk_size, stats, grads):
    need_h, need_w, need_b = grads
    n, device = hidden.shape[0], hidden.device
    dtype = _compute_dtype(hidden.dtype, weight.dtype)
    closed_form = options.divergence in _CLOSED_FORM
    chunk_fn = _closed_form_chunk if closed_form else _autograd_chunk
    if closed_form:
        live_buffers = 2 if stats or _two_exp_passes(options, positions.teacher_ids.shape[1], weight.shape[0]) else 1
    else:
        live_buffers = _AUTOGRAD_BUFFERS
    chunk_size = chunk_size or auto_kd_chunk_size(weight.shape[0], weight.shape[1], live_buffers=live_buffers)

    w = weight.detach().to(dtype)  # a copy only when the head is not already in the compute dtype
    b = bias.detach().to(dtype) if bias is not None else None
    grad_hidden = torch.empty(hidden.shape, dtype=dtype, device=device) if need_h else None
    grad_w = (torch.empty_like(w) if n else torch.zeros_like(w)) if need_w else None  # the first chunk overwrites it
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

    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        h = hidden[start:end].detach().to(dtype)
        with torch.no_grad():
            out = None if work is None else work[: end - start]
            logits = torch.mm(h, w.t(), out=out) if b is None else torch.addmm(b, h, w.t(), out=out)
            rows = positions.rows(start, end, dtype)
            chunk_spare = None if spare is None else spare[: end - start]
            kd_rows, ce_rows, top1, entropy, grad_logits = chunk_fn(
                logits, chunk_spare, rows, options, any(grads), stats
            )
            del logits  # the autograd path's logits: only their gradient outlives this step
            tail = (-torch.expm1(torch.logsumexp(rows.teacher_logprobs, dim=-1))).clamp_min(0).sum()
            top1 = zero if top1 is None else top1.to(dtype)
            entropy = zero if entropy is None else entropy
            sums += torch.stack([rows.objective(kd_rows, ce_rows), kd_rows.sum(), ce_rows.sum(), top1, entropy, tail])
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
    def forward(ctx, hidden, weight, bias, positions, options, chunk_size, stats):
        grads = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        objective, kd, ce, top1, entropy, tail, grad_h, grad_w, grad_b = _chunk_pass(
            hidden, weight, bias, positions, options, chunk_size, stats, grads
        )
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(kd, ce, top1, entropy, tail)
        return objective, kd, ce, top1, entropy, tail

    @staticmethod
    def backward(ctx, grad_objective, *unused):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_objective is None:
            return (None,) * 7
        results = []
        for grad, dtype in zip((grad_h, grad_w, grad_b), ctx.dtypes, strict=True):
            # Scale in the compute dtype, in place (a copy of the head's size costs as much as the scaling), then
            # round once to the parameter's dtype. A second backward through this graph fails the saved tensors'
            # version check instead of scaling twice.
            results.append(None if grad is None else grad.mul_(grad_objective.to(grad.dtype)).to(dtype))
        return (*results, None, None, None, None)


def _check_position_weights(name: str, weights: torch.Tensor | None, n: int) -> None:
    if weights is None:
        return
    if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (n,) or not weights.dtype.is_floating_point:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"{name} must be a floating point [N] tensor with N = {n}, got {shape}.")
    if not bool(((weights >= 0) & torch.isfinite(weights)).all()):
        raise ValueError(f"{name} must be finite and >= 0 at every position.")


def chunked_kd_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    teacher_token_logprobs: torch.Tensor | None,
    target_ids: torch.Tensor,
    *,
    options: KDLossOptions | None = None,
    kd_weight: float | None = None,
    divergence: str | None = None,
    beta: float | None = None,
    skew_alpha: float | None = None,
    temperature: float | None = None,
    tail: str | None = None,
    kd_weights: torch.Tensor | None = None,
    ce_weights: torch.Tensor | None = None,
    normalizer: float | torch.Tensor = 1.0,
    chunk_size: int | None = None,
    compute_stats: bool = True,
) -> KDLossOutput:
    """``sum(w_kd * divergence + w_ce * CE) / normalizer`` from the student's hidden states, per scored position.

    The weights are ``kd_weight`` and ``1 - kd_weight`` at every position (``kd_weight * sum(divergence) +
    (1 - kd_weight) * sum(CE)``), or the per-position ``kd_weights`` / ``ce_weights`` where given.

    The logits ``hidden @ weight.T + bias`` are computed ``chunk_size`` positions at a time in float32 (float64 when
    ``hidden`` or ``weight`` is float64) and never all at once; the gradients w.r.t. ``hidden``, ``weight`` and
    ``bias`` are computed during the forward pass, chunk by chunk, and only scaled in backward, so no chunk's logits
    outlive its own step. For ``forward_kl`` and ``sampled_reverse_kl`` (the :class:`ClosedFormDivergence` ones) the
    logit gradient is computed in closed form (no autograd), in place, with at most two ``[chunk_size, V]`` float32
    buffers alive; the other divergences go through autograd (about eight). Peak extra memory: those buffers, plus a
    float32 copy of the head when it is not float32 and a float32 gradient accumulator of the head's size.

    Args:
        hidden: ``[N, H]`` the student's final hidden states at the scored positions (any float dtype).
        weight: ``[V, H]`` the LM head. bias: ``[V]`` or None.
        teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids: as in :func:`sparse_divergence`.
        options: a :class:`KDLossOptions` (default: its defaults); the keywords below override it.
        kd_weight: the divergence's weight (default 0.9); the CE (``-log q(target)`` at temperature 1) gets
            ``1 - kd_weight``.
        divergence, beta, skew_alpha, temperature, tail: as in :func:`sparse_divergence` (the student's logits are
            divided by ``temperature`` for the divergence only).
        kd_weights: ``[N]`` the divergence's weight at each position, instead of ``kd_weight`` (finite, >= 0).
        ce_weights: ``[N]`` the CE's weight at each position, instead of ``1 - kd_weight`` (finite, >= 0). A
            position whose two weights are 0 adds nothing to the loss or the gradients.
        normalizer: float or 0-d tensor dividing the weighted sum (e.g. the token count across gradient accumulation
            and devices). A normalizer of 0 is treated as 1 (the sums are then 0 too).
        chunk_size: positions per chunk; ``None``: :func:`auto_kd_chunk_size` for this head and the buffers this call
            keeps alive (so they take at most the head's own float32 size): for ``forward_kl`` and
            ``sampled_reverse_kl``, 2 with ``compute_stats`` or a second softmax (T != 1 with the bucket tail or
            ``sampled_reverse_kl``) and 1 otherwise; 8 for the other divergences.
        compute_stats: also compute ``top1_agreement_sum`` and ``student_entropy_sum`` (an argmax and an entropy
            pass over the logits); with False they are ``None``. The loss and gradients do not depend on it.

    Returns:
        :class:`KDLossOutput` (its ``kd_sum`` and ``ce_sum`` unweighted). With ``N == 0`` the loss is a zero that
        still backpropagates (zero gradients). The loss backpropagates once: backward scales the stored gradients in
        place, so a second backward through the same graph (``retain_graph=True``) raises instead of scaling them
        twice.
    """
    options = KDLossOptions.resolve(options, kd_weight=kd_weight, divergence=divergence, beta=beta,
                                    skew_alpha=skew_alpha, temperature=temperature, tail=tail)  # fmt: skip
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
    _check_teacher_shapes(n, vocab, teacher_ids, teacher_logprobs, teacher_token_logprobs, target_ids, options)
    _check_position_weights("kd_weights", kd_weights, n)
    _check_position_weights("ce_weights", ce_weights, n)
    if isinstance(normalizer, torch.Tensor):
        if normalizer.numel() != 1:
            raise ValueError(f"normalizer must be a number or a 0-d tensor, got shape {tuple(normalizer.shape)}.")
    elif float(normalizer) < 0 or not math.isfinite(float(normalizer)):
        raise ValueError(f"normalizer must be a finite number >= 0, got {normalizer}.")

    positions = _Positions(
        teacher_ids.long(), teacher_logprobs, teacher_token_logprobs, target_ids.long(),
        options.kd_weight if kd_weights is None else kd_weights,
        1.0 - options.kd_weight if ce_weights is None else ce_weights,
    )  # fmt: skip
    run = (positions, options, None if chunk_size is None else int(chunk_size), bool(compute_stats))
    needs_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    if needs_grad:
        objective, kd, ce, top1, entropy, tail_mass = _ChunkedKDFunction.apply(hidden, weight, bias, *run)
    else:
        objective, kd, ce, top1, entropy, tail_mass, *_ = _chunk_pass(hidden, weight, bias, *run, (False,) * 3)

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
