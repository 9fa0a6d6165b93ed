"""trl_edge.losses: every divergence against a dense reference computed another way, and the chunked loss against an
unchunked autograd reference."""

import ast
import gc
import importlib.util
import math
import weakref
from pathlib import Path

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from trl_edge import losses
from trl_edge.losses import (
    DIVERGENCES,
    TAIL_FLOOR,
    TAIL_MODES,
    KDLossOutput,
    auto_kd_chunk_size,
    chunked_kd_loss,
    sparse_divergence,
)

F64 = torch.float64
SUPPORT_DIVERGENCES = tuple(d for d in DIVERGENCES if d != "sampled_reverse_kl")


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    # The tensors here are tiny: intra-op threads only add synchronisation (10-30x slower on a busy 2-core box)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trl_gjsd():
    """TRL's own ``GKDTrainer.generalized_jsd_loss``, compiled from the installed source.

    Importing ``trl.experimental.gkd`` pulls in the whole Trainer stack (10-20 s on a small CPU box) for one
    static method that only needs torch; so the method's code is read from the installed file and compiled on its own.
    """
    origin = importlib.util.find_spec("trl").origin
    path = Path(origin).parent / "experimental" / "gkd" / "gkd_trainer.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "generalized_jsd_loss":
            node.decorator_list = []  # @staticmethod
            namespace = {"torch": torch, "F": torch.nn.functional}
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
            return namespace["generalized_jsd_loss"]
    pytest.fail(f"generalized_jsd_loss not found in {path}")


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _teacher(n, vocab, k, seed=0, scale=2.0, dtype=F64):
    """A full teacher distribution at T=1 and its cached top-k (sorted descending)."""
    full = torch.log_softmax(scale * torch.randn(n, vocab, generator=_generator(seed), dtype=F64), -1)
    lp, ids = full.sort(-1, descending=True)
    return full.to(dtype), ids[:, :k].contiguous(), lp[:, :k].to(dtype).contiguous()


def _student_logits(n, vocab, seed=1, dtype=F64):
    return (1.5 * torch.randn(n, vocab, generator=_generator(seed), dtype=F64)).to(dtype).requires_grad_()


# ---------------------------------------------------------------------------------------------------------------------
# k = V: the TRL generalized JSD, exactly
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize(
    "divergence, beta",
    [("forward_kl", 0.0), ("reverse_kl", 1.0), ("jsd", 0.0), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9), ("jsd", 1.0)],
)
def test_full_support_matches_trl_generalized_jsd(trl_gjsd, divergence, beta, tail, temperature):
    n, vocab = 6, 40
    full, ids, lp = _teacher(n, vocab, vocab)
    teacher_logits = full + 0.7  # TRL takes logits: any logits whose softmax at T=1 is the cached distribution
    student_logits = _student_logits(n, vocab)

    ours = sparse_divergence(
        torch.log_softmax(student_logits / temperature, -1),
        ids,
        lp,
        None,
        None,
        divergence=divergence,
        beta=beta,
        temperature=temperature,
        tail=tail,
    )
    ref = temperature**2 * trl_gjsd(
        student_logits, teacher_logits, labels=None, beta=beta, temperature=temperature, reduction="none"
    ).sum(-1)
    assert ours.shape == (n,) and ours.dtype == F64
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    weights = torch.rand(n, generator=_generator(3), dtype=F64)  # a non-uniform upstream gradient
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), student_logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), student_logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------------
# k < V: a dense (k + 1)-outcome reference in float64 with plain torch ops
# ---------------------------------------------------------------------------------------------------------------------


def _dense_outcomes(student_logits, ids, teacher_lp, temperature, tail):
    """Explicit probability vectors (p, q) over the k ids (+ tail), built from probabilities (not log-space)."""
    q_full = torch.softmax(student_logits / temperature, -1)
    q_ids = q_full.gather(-1, ids)
    p_ids = teacher_lp.exp()
    if tail == "renormalize":
        q = q_ids / q_ids.sum(-1, keepdim=True)
        w = p_ids ** (1.0 / temperature)
        return w / w.sum(-1, keepdim=True), q
    outside = torch.ones_like(q_full).scatter(-1, ids, 0.0)
    q_tail = (q_full * outside).sum(-1, keepdim=True)
    p_tail = (1.0 - p_ids.sum(-1, keepdim=True)).clamp(min=0.0)
    w = torch.cat([p_ids, p_tail], -1) ** (1.0 / temperature)
    p = w / w.sum(-1, keepdim=True)
    p = torch.cat([p[:, :-1], p[:, -1:].clamp(min=TAIL_FLOOR)], -1)
    return p, torch.cat([q_ids, q_tail], -1)


def _dense_divergence(p, q, divergence, beta, alpha):
    def kl(a, b):
        return (a * (a / b).log()).sum(-1)

    if divergence == "forward_kl":
        return kl(p, q)
    if divergence == "reverse_kl":
        return kl(q, p)
    if divergence == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m) if 0 < beta < 1 else (kl(p, q) if beta == 0 else kl(q, p))
    if divergence == "skew_forward_kl":
        return kl(p, alpha * p + (1 - alpha) * q)
    if divergence == "skew_reverse_kl":
        return kl(q, alpha * q + (1 - alpha) * p)
    assert divergence == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("tail", TAIL_MODES)
@pytest.mark.parametrize("divergence", SUPPORT_DIVERGENCES)
def test_sparse_divergence_matches_dense_reference(divergence, tail, temperature):
    n, vocab, k = 9, 30, 5
    _, ids, lp = _teacher(n, vocab, k, scale=1.0)  # a real tail: about half the mass is outside the top-5
    student_logits = _student_logits(n, vocab)
    beta, alpha = 0.3, 0.2
    ours = sparse_divergence(
        torch.log_softmax(student_logits / temperature, -1),
        ids,
        lp,
        None,
        None,
        divergence=divergence,
        beta=beta,
        skew_alpha=alpha,
        temperature=temperature,
        tail=tail,
    )
    p, q = _dense_outcomes(student_logits, ids, lp, temperature, tail)
    ref = temperature**2 * _dense_divergence(p, q, divergence, beta, alpha)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    weights = torch.rand(n, generator=_generator(3), dtype=F64)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), student_logits)
    (g_ref,) = torch.autograd.grad((ref * weights).sum(), student_logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("divergence", SUPPORT_DIVERGENCES)
def test_no_teacher_tail_uses_the_floor_and_stays_finite(divergence):
    # The top-k holds all the teacher's mass while the student spreads mass everywhere: reverse KL must stay finite
    n, vocab, k = 5, 20, 4
    ids = torch.stack([torch.randperm(vocab, generator=_generator(i))[:k] for i in range(n)])
    lp = torch.log_softmax(torch.randn(n, k, generator=_generator(7), dtype=F64), -1).sort(-1, descending=True)[0]
    student_logits = _student_logits(n, vocab)
    ours = sparse_divergence(
        torch.log_softmax(student_logits, -1), ids, lp, None, None, divergence=divergence, skew_alpha=0.1
    )
    p, q = _dense_outcomes(student_logits, ids, lp, 1.0, "bucket")
    assert torch.allclose(p[:, -1], torch.full((n,), TAIL_FLOOR, dtype=F64), rtol=1e-3, atol=0)
    ref = _dense_divergence(p, q, divergence, 0.5, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)
    (grad,) = torch.autograd.grad(ours.sum(), student_logits)
    assert torch.isfinite(ours).all() and torch.isfinite(grad).all()


def test_bucket_and_renormalize_agree_when_student_has_no_tail():
    # Same support for both: with p_tail = 0 (floored) and q_tail ~ 0, forward KL is the same in both modes
    n, vocab, k = 4, 12, 3
    ids = torch.arange(k).repeat(n, 1)
    lp = torch.log_softmax(torch.randn(n, k, generator=_generator(2), dtype=F64), -1).sort(-1, descending=True)[0]
    logits = torch.full((n, vocab), -60.0, dtype=F64)
    logits[:, :k] = torch.randn(n, k, generator=_generator(4), dtype=F64)
    s = torch.log_softmax(logits, -1)
    bucket = sparse_divergence(s, ids, lp, None, None, tail="bucket")
    renorm = sparse_divergence(s, ids, lp, None, None, tail="renormalize")
    torch.testing.assert_close(bucket, renorm, rtol=0, atol=1e-10)


def test_skew_limits_and_tvd_bounds():
    n, vocab, k = 6, 25, 6
    _, ids, lp = _teacher(n, vocab, k)
    s = torch.log_softmax(_student_logits(n, vocab).detach(), -1)

    def div(name, **kw):
        return sparse_divergence(s, ids, lp, None, None, divergence=name, **kw)

    torch.testing.assert_close(div("skew_forward_kl", skew_alpha=0.0), div("forward_kl"))
    torch.testing.assert_close(div("skew_reverse_kl", skew_alpha=0.0), div("reverse_kl"))
    torch.testing.assert_close(div("skew_forward_kl", skew_alpha=1.0), torch.zeros(n, dtype=F64))
    assert (div("skew_forward_kl", skew_alpha=0.5) < div("forward_kl")).all()
    tvd = div("tvd")
    assert ((tvd >= 0) & (tvd <= 1)).all()


def test_float32_inputs_compute_in_float32():
    n, vocab, k = 5, 30, 4
    _, ids, lp = _teacher(n, vocab, k, dtype=torch.float32)
    logits = _student_logits(n, vocab, dtype=torch.float32)
    out = sparse_divergence(torch.log_softmax(logits, -1), ids, lp, None, None, divergence="reverse_kl")
    assert out.dtype == torch.float32
    ref = sparse_divergence(
        torch.log_softmax(logits.double(), -1), ids, lp.double(), None, None, divergence="reverse_kl"
    )
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# sampled_reverse_kl
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sampled_reverse_kl_value_and_score_function_gradient(temperature):
    n, vocab, k = 8, 30, 6
    full, ids, lp = _teacher(n, vocab, k, scale=1.0)
    target = torch.randint(0, vocab, (n,), generator=_generator(5))
    token_lp = full.gather(-1, target[:, None]).squeeze(-1)
    logits = _student_logits(n, vocab)
    ours = sparse_divergence(
        torch.log_softmax(logits / temperature, -1),
        ids,
        lp,
        token_lp,
        target,
        divergence="sampled_reverse_kl",
        tail="renormalize",  # the tail mode does not change this estimator
        temperature=temperature,
    )
    # Reference, from probabilities: q_T(y), and p_T(y) normalised over the k ids + the tail bucket tempered as one
    q_y = torch.softmax(logits / temperature, -1).gather(-1, target[:, None]).squeeze(-1)
    if temperature == 1.0:
        log_p_y = token_lp
    else:
        p_tail = 1.0 - lp.exp().sum(-1)
        z = (lp.exp() ** (1 / temperature)).sum(-1) + p_tail ** (1 / temperature)
        log_p_y = (token_lp.exp() ** (1 / temperature) / z).log()
    d = q_y.log().detach() - log_p_y
    torch.testing.assert_close(ours, temperature**2 * d, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_ref,) = torch.autograd.grad((temperature**2 * d * q_y.log()).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_sampled_reverse_kl_value_is_exactly_logq_minus_logp_at_t1():
    n, vocab, k = 7, 20, 3
    full, ids, lp = _teacher(n, vocab, k)
    target = torch.randint(0, vocab, (n,), generator=_generator(9))
    token_lp = full.gather(-1, target[:, None]).squeeze(-1)
    s = torch.log_softmax(_student_logits(n, vocab), -1)
    out = sparse_divergence(s, ids, lp, token_lp, target, divergence="sampled_reverse_kl")
    assert torch.equal(out, s.gather(-1, target[:, None]).squeeze(-1) - token_lp)


def test_sampled_reverse_kl_is_unbiased_for_reverse_kl():
    # With k = V, E_{y ~ q}[estimate] is KL(q || p) and E_{y ~ q}[gradient] is its gradient (enumerate every y)
    n, vocab = 3, 10
    full, ids, lp = _teacher(n, vocab, vocab)
    logits = _student_logits(n, vocab)
    s = torch.log_softmax(logits, -1)
    q = s.exp().detach()
    value, grad = 0.0, torch.zeros_like(logits)
    for y in range(vocab):
        target = torch.full((n,), y)
        est = sparse_divergence(
            s, ids, lp, full[:, y], target, divergence="sampled_reverse_kl"
        )  # per position, y fixed
        (g,) = torch.autograd.grad((q[:, y] * est).sum(), logits, retain_graph=True)
        value = value + q[:, y] * est.detach()
        grad = grad + g
    exact = sparse_divergence(s, ids, lp, None, None, divergence="reverse_kl")
    torch.testing.assert_close(value, exact.detach(), rtol=1e-10, atol=1e-12)
    (g_exact,) = torch.autograd.grad(exact.sum(), logits)
    torch.testing.assert_close(grad, g_exact, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# chunked_kd_loss
# ---------------------------------------------------------------------------------------------------------------------


def _kd_problem(n=37, hidden_size=16, vocab=50, k=8, dtype=F64, bias=True, seed=0):
    g = _generator(seed)
    hidden = torch.randn(n, hidden_size, generator=g, dtype=F64).to(dtype).requires_grad_()
    weight = (0.5 * torch.randn(vocab, hidden_size, generator=g, dtype=F64)).to(dtype).requires_grad_()
    b = (0.1 * torch.randn(vocab, generator=g, dtype=F64)).to(dtype).requires_grad_() if bias else None
    full = torch.log_softmax(2 * torch.randn(n, vocab, generator=g, dtype=F64), -1)
    lp, ids = full.topk(k, -1)
    target = torch.randint(0, vocab, (n,), generator=g)
    token_lp = full.gather(-1, target[:, None]).squeeze(-1)
    return hidden, weight, b, ids, lp, token_lp, target


def _reference_loss(hidden, weight, bias, ids, lp, token_lp, target, *, kd_weight, normalizer, **kw):
    """Unchunked: full logits in float64, then sparse_divergence + CE, plain autograd."""
    h, w = hidden.double(), weight.double()
    logits = h @ w.T + (bias.double() if bias is not None else 0.0)
    t = kw.get("temperature", 1.0)
    kd = sparse_divergence(torch.log_softmax(logits / t, -1), ids, lp.double(), token_lp.double(), target, **kw)
    logprobs = torch.log_softmax(logits, -1)
    ce = -logprobs.gather(-1, target[:, None]).squeeze(-1)
    loss = (kd_weight * kd.sum() + (1 - kd_weight) * ce.sum()) / normalizer
    return loss, kd.detach(), ce.detach(), logits.detach(), logprobs.detach()


def _grads(loss, tensors):
    tensors = [x for x in tensors if x is not None]
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize(
    "divergence, tail, temperature, kd_weight, chunk_size",
    [
        ("forward_kl", "bucket", 1.0, 0.9, 8),
        ("forward_kl", "bucket", 1.0, 0.9, 64),
        ("forward_kl", "bucket", 1.0, 0.0, 8),
        ("forward_kl", "bucket", 1.0, 1.0, 8),
        ("reverse_kl", "renormalize", 2.0, 0.9, 8),
        ("reverse_kl", "renormalize", 2.0, 1.0, 37),
        ("jsd", "bucket", 1.5, 0.9, 8),
        ("jsd", "renormalize", 1.0, 0.5, 64),
        ("skew_forward_kl", "bucket", 1.0, 0.9, 10),
        ("skew_reverse_kl", "bucket", 1.0, 1.0, 8),
        ("tvd", "renormalize", 1.0, 0.9, 8),
        ("sampled_reverse_kl", "bucket", 2.0, 0.9, 8),
        ("sampled_reverse_kl", "bucket", 1.0, 1.0, 64),
    ],
)
def test_chunked_matches_unchunked_float64(divergence, tail, temperature, kd_weight, chunk_size):
    problem = _kd_problem()
    hidden, weight, bias = problem[:3]
    kw = dict(divergence=divergence, tail=tail, temperature=temperature, beta=0.3, skew_alpha=0.2)
    normalizer = torch.tensor(29)  # an integer token count, as the trainer passes it
    out = chunked_kd_loss(*problem, kd_weight=kd_weight, normalizer=normalizer, chunk_size=chunk_size, **kw)
    ref, kd, ce, logits, logprobs = _reference_loss(*problem, kd_weight=kd_weight, normalizer=29.0, **kw)
    assert isinstance(out, KDLossOutput) and out.num_positions == 37
    assert out.loss.dtype == F64 and out.loss.shape == ()
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    for got, want in zip(_grads(out.loss, problem[:3]), _grads(ref, problem[:3]), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # Stats against direct computations
    torch.testing.assert_close(out.kd_sum, kd.sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ce_sum, ce.sum(), rtol=1e-12, atol=1e-12)
    ids, lp = problem[3], problem[4]
    assert out.top1_agreement_sum.item() == (logits.argmax(-1) == ids[:, 0]).sum().item()
    torch.testing.assert_close(out.student_entropy_sum, -(logprobs.exp() * logprobs).sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.teacher_tail_mass_sum, (1 - lp.exp().sum(-1)).clamp(min=0).sum())
    for stat in (out.kd_sum, out.ce_sum, out.top1_agreement_sum, out.student_entropy_sum, out.teacher_tail_mass_sum):
        assert not stat.requires_grad and stat.shape == ()


def test_chunked_top1_agreement_counts_matches():
    hidden, weight, bias, ids, lp, token_lp, target = _kd_problem(n=10)
    with torch.no_grad():
        student_top1 = (hidden @ weight.T + bias).argmax(-1)
    ids = ids.clone()
    ids[:6, 0] = student_top1[:6]  # exactly these six agree (the other rows: forced disagreement)
    ids[6:, 0] = (student_top1[6:] + 1) % weight.shape[0]
    out = chunked_kd_loss(hidden, weight, bias, ids, lp, token_lp, target, chunk_size=3)
    assert out.top1_agreement_sum.item() == 6


def test_chunked_float_normalizer_no_bias_and_backward_scaling():
    hidden, weight, _, ids, lp, token_lp, target = _kd_problem(bias=False)
    out = chunked_kd_loss(hidden, weight, None, ids, lp, token_lp, target, normalizer=3.5, chunk_size=5)
    ref = _reference_loss(hidden, weight, None, ids, lp, token_lp, target, kd_weight=0.9, normalizer=3.5)[0]
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    # backward() with an upstream gradient != 1 (e.g. a loss scale) scales every gradient
    (3.0 * out.loss).backward()
    g_ref = _grads(3.0 * ref, (hidden, weight))
    torch.testing.assert_close(hidden.grad, g_ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weight.grad, g_ref[1], rtol=1e-10, atol=1e-12)


def test_chunked_second_backward_raises_instead_of_scaling_twice():
    problem = _kd_problem()
    out = chunked_kd_loss(*problem, normalizer=2.0, chunk_size=8)
    out.loss.backward(retain_graph=True)
    first = problem[0].grad.clone()
    with pytest.raises(RuntimeError, match="inplace"):
        out.loss.backward()
    assert torch.equal(problem[0].grad, first)


def test_chunked_frozen_head_gets_no_gradient():
    hidden, weight, bias, *teacher = _kd_problem()
    weight, bias = weight.detach(), bias.detach()
    out = chunked_kd_loss(hidden, weight, bias, *teacher, chunk_size=8)
    ref = _reference_loss(hidden, weight, bias, *teacher, kd_weight=0.9, normalizer=1.0)[0]
    out.loss.backward()
    (g_ref,) = _grads(ref, (hidden,))
    torch.testing.assert_close(hidden.grad, g_ref, rtol=1e-10, atol=1e-12)
    assert weight.grad is None and bias.grad is None


def test_chunked_keeps_no_logits_for_backward():
    # Of the tensors saved for backward, only the gradients ([N, H], [V, H], [V]) outlive the forward pass: no chunk's
    # [chunk, V] logits (nor any [N, V] tensor) stays alive in the graph
    problem = _kd_problem(n=37, hidden_size=16, vocab=50)
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = chunked_kd_loss(*problem, chunk_size=8, normalizer=torch.tensor(4.0))
    gc.collect()
    alive = {tuple(ref().shape) for ref in saved if ref() is not None}
    assert alive <= {(37, 16), (50, 16), (50,), ()}, alive
    out.loss.backward()


def test_chunked_without_grad_mode_matches():
    problem = _kd_problem()
    with torch.no_grad():
        out = chunked_kd_loss(*problem, chunk_size=8, divergence="jsd")
    ref = _reference_loss(*problem, kd_weight=0.9, normalizer=1.0, divergence="jsd")[0]
    assert out.loss.grad_fn is None
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-12, atol=1e-12)


def test_chunked_empty_batch_returns_zero_loss_that_backprops_zeros():
    hidden, weight, bias, ids, lp, token_lp, target = _kd_problem()
    empty = hidden.detach()[:0].requires_grad_()
    for normalizer in (torch.tensor(0), 1.0, 0.0):
        out = chunked_kd_loss(
            empty, weight, bias, ids[:0], lp[:0], token_lp[:0], target[:0], normalizer=normalizer, chunk_size=4
        )
        assert out.num_positions == 0 and out.loss.item() == 0.0 and out.loss.requires_grad
        for stat in (out.kd_sum, out.ce_sum, out.top1_agreement_sum, out.student_entropy_sum):
            assert stat.item() == 0.0
        out.loss.backward()
        assert empty.grad.shape == (0, 16)
        assert torch.count_nonzero(weight.grad) == 0 and torch.count_nonzero(bias.grad) == 0
        weight.grad = bias.grad = empty.grad = None


@pytest.mark.parametrize("head_dtype", [torch.bfloat16, torch.float32])
def test_chunked_bf16_hidden(head_dtype):
    hidden, weight, bias, *teacher = _kd_problem(n=37, hidden_size=32, vocab=64, k=8)
    params = [hidden.detach().to(torch.bfloat16)] + [x.detach().to(head_dtype) for x in (weight, bias)]
    params = [x.requires_grad_() for x in params]
    teacher[1], teacher[2] = teacher[1].float(), teacher[2].float()  # the cache's float32 log-probs
    kw = dict(divergence="reverse_kl", temperature=2.0)
    out = chunked_kd_loss(*params, *teacher, chunk_size=8, **kw)
    assert out.loss.dtype == torch.float32
    # Reference: the same (rounded) values in float64
    params64 = [x.detach().double().requires_grad_() for x in params]
    ref = _reference_loss(*params64, *teacher, kd_weight=0.9, normalizer=1.0, **kw)[0]
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(out.loss, params)
    for g, want, x in zip(got, _grads(ref, params64), params, strict=True):
        assert g.dtype == x.dtype
        torch.testing.assert_close(g.double(), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_chunked_float32_matches_float64_reference():
    hidden, weight, bias, *teacher = _kd_problem()
    args32 = [x.detach().float().requires_grad_() for x in (hidden, weight, bias)]
    out = chunked_kd_loss(*args32, *teacher, chunk_size=16, divergence="skew_forward_kl")
    args64 = [x.detach().double().requires_grad_() for x in args32]
    ref = _reference_loss(*args64, *teacher, kd_weight=0.9, normalizer=1.0, divergence="skew_forward_kl")[0]
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(out.loss, args32), _grads(ref, args64), strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_chunked_ignores_autocast():
    # The Trainer's bf16 mixed precision runs the loss under autocast: the projection must still be float32
    args32 = [x.detach().float().requires_grad_() for x in _kd_problem()[:3]]
    teacher = _kd_problem()[3:]
    plain = chunked_kd_loss(*args32, *teacher, chunk_size=8)
    grads = torch.autograd.grad(plain.loss, args32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = chunked_kd_loss(*args32, *teacher, chunk_size=8)
        assert mixed.loss.dtype == torch.float32
        mixed_grads = torch.autograd.grad(mixed.loss, args32)
    torch.testing.assert_close(mixed.loss, plain.loss, rtol=0, atol=0)
    for a, b in zip(mixed_grads, grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# chunked_kd_loss: the closed-form gradient (forward_kl, sampled_reverse_kl), stats on demand, automatic chunk size
# ---------------------------------------------------------------------------------------------------------------------


def _peaked_problem(n=23, vocab=40, k=8, seed=0):
    """A float64 problem whose logits are chosen (the head is square and invertible, so ``hidden`` is solved for).

    Rows 0-2: the student's top-k (the cached ids) holds all but ~1e-9 of its mass and the teacher's all but 1e-8;
    row 3: the teacher's top-k holds all its mass (the tail is floored); the other rows are random.
    """
    g = _generator(seed)
    weight = torch.randn(vocab, vocab, generator=g, dtype=F64) / math.sqrt(vocab) + torch.eye(vocab, dtype=F64)
    bias = 0.1 * torch.randn(vocab, generator=g, dtype=F64)
    logits = 1.5 * torch.randn(n, vocab, generator=g, dtype=F64)
    full = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=F64), -1)
    lp, ids = full.topk(k, -1)
    if k < vocab:
        for row in range(3):
            logits[row] = -10.0
            logits[row, ids[row]] = 11.0 + torch.randn(k, generator=g, dtype=F64)
            lp[row] = torch.log_softmax(lp[row], -1) + math.log1p(-1e-8)
        lp[3] = torch.log_softmax(lp[3], -1)
    hidden = torch.linalg.solve(weight, (logits - bias).T).T
    target = torch.randint(0, vocab, (n,), generator=g)
    target[0] = ids[0, 2]  # a target inside the cached ids, on a peaked row
    token_lp = full.gather(-1, target[:, None]).squeeze(-1)
    return [hidden.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), ids, lp, token_lp, target]


def _paths(monkeypatch, problem, **kw):
    """(closed form, autograd) results and gradients; the closed-form run fails if it falls back to autograd."""

    def no_autograd(*args, **kwargs):
        raise AssertionError("the closed-form path called autograd")

    results = []
    for closed_form in (True, False):
        with monkeypatch.context() as patch:
            patch.setattr(losses, "_autograd_chunk", no_autograd) if closed_form else patch.setattr(
                losses, "_CLOSED_FORM", ()
            )
            out = chunked_kd_loss(*problem, **kw)
        results.append((out, _grads(out.loss, problem[:3])))
    return results


@pytest.mark.parametrize("k", [8, 40])  # 40: k == V, no token outside the cached ids
@pytest.mark.parametrize("kd_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("tail", TAIL_MODES)
def test_closed_form_forward_kl_matches_autograd(monkeypatch, tail, temperature, kd_weight, k):
    problem = _peaked_problem(k=k)
    kw = dict(divergence="forward_kl", tail=tail, temperature=temperature, kd_weight=kd_weight, chunk_size=7)
    (closed, g_closed), (auto, g_auto) = _paths(monkeypatch, problem, **kw)
    for name in ("loss", "kd_sum", "ce_sum", "student_entropy_sum", "teacher_tail_mass_sum"):
        torch.testing.assert_close(getattr(closed, name), getattr(auto, name), rtol=1e-12, atol=1e-12)
    assert closed.top1_agreement_sum.item() == auto.top1_agreement_sum.item()
    for got, want in zip(g_closed, g_auto, strict=True):  # hidden, weight, bias
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ref = _reference_loss(*problem, kd_weight=kd_weight, normalizer=1.0, divergence="forward_kl", tail=tail,
                          temperature=temperature)[0]  # fmt: skip
    torch.testing.assert_close(closed.loss, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [8, 40])
@pytest.mark.parametrize("kd_weight", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_closed_form_sampled_reverse_kl_matches_autograd(monkeypatch, temperature, kd_weight, k):
    problem = _peaked_problem(k=k)
    kw = dict(divergence="sampled_reverse_kl", temperature=temperature, kd_weight=kd_weight, chunk_size=7)
    (closed, g_closed), (auto, g_auto) = _paths(monkeypatch, problem, **kw)
    for name in ("loss", "kd_sum", "ce_sum", "student_entropy_sum"):
        torch.testing.assert_close(getattr(closed, name), getattr(auto, name), rtol=1e-12, atol=1e-12)
    for got, want in zip(g_closed, g_auto, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_closed_form_tail_gradient_is_exact_when_the_top_k_holds_almost_all_the_mass(monkeypatch):
    # With an identity head the gradient of ``hidden`` is the logit gradient itself, so the tokens outside the cached
    # ids (a factor q_j (1 - p_tail / q_tail), with q_tail ~ 1e-9) are checked element by element, relatively
    hidden, _, _, ids, lp, token_lp, target = _peaked_problem()
    logits = (hidden.detach() @ _peaked_problem()[1].detach().T + _peaked_problem()[2].detach())[:3]
    problem = [logits.clone().requires_grad_(), torch.eye(40, dtype=F64).requires_grad_(), None]
    problem += [ids[:3], lp[:3], token_lp[:3], target[:3]]
    q = torch.softmax(logits, -1)
    q_tail = q.scatter(-1, ids[:3], 0.0).sum(-1)
    assert (q_tail < 1e-8).all()
    # The test can fail: computing q_tail as 1 - sum(q over the ids) would be off by far more than its tolerance
    assert ((1 - q.gather(-1, ids[:3]).sum(-1) - q_tail).abs() / q_tail > 1e-8).any()
    (_, (g_closed, _)), (_, (g_auto, _)) = _paths(monkeypatch, problem, kd_weight=0.9, chunk_size=2)
    torch.testing.assert_close(g_closed, g_auto, rtol=1e-9, atol=0)


@pytest.mark.parametrize("divergence, temperature", [("forward_kl", 1.0), ("forward_kl", 2.0), ("jsd", 1.0)])
def test_compute_stats_false_same_loss_and_gradients_no_stats(divergence, temperature):
    problem = _kd_problem()
    kw = dict(divergence=divergence, temperature=temperature, chunk_size=8)
    with_stats = chunked_kd_loss(*problem, **kw)
    without = chunked_kd_loss(*problem, compute_stats=False, **kw)
    assert with_stats.top1_agreement_sum is not None and with_stats.student_entropy_sum is not None
    assert without.top1_agreement_sum is None and without.student_entropy_sum is None
    for name in ("loss", "kd_sum", "ce_sum", "teacher_tail_mass_sum"):
        assert torch.equal(getattr(without, name), getattr(with_stats, name)), name
    for a, b in zip(_grads(without.loss, problem[:3]), _grads(with_stats.loss, problem[:3]), strict=True):
        assert torch.equal(a, b)


class _LiveBuffers(TorchDispatchMode):
    """Counts the storages of at least ``nbytes`` alive at once, op by op (forward and backward)."""

    def __init__(self, nbytes):
        super().__init__()
        self.nbytes, self.alive, self.peak = nbytes, {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor) and x.untyped_storage().nbytes() >= self.nbytes:
                self.alive.setdefault(x.untyped_storage().data_ptr(), StorageWeakRef(x.untyped_storage()))
        self.alive = {ptr: ref for ptr, ref in self.alive.items() if not ref.expired()}
        self.peak = max(self.peak, len(self.alive))
        return out


@pytest.mark.parametrize(
    "divergence, temperature, compute_stats, most",
    [
        ("forward_kl", 1.0, False, 1),
        ("forward_kl", 1.0, True, 2),
        ("forward_kl", 2.5, False, 2),
        ("sampled_reverse_kl", 2.5, True, 2),
    ],
)
def test_closed_form_keeps_at_most_two_chunk_buffers(divergence, temperature, compute_stats, most):
    # [chunk, V] = [20, 50] float64 is larger than every other tensor here ([37, 16], [50, 16], [37, 8])
    problem = _kd_problem(n=37, hidden_size=16, vocab=50)
    kw = dict(chunk_size=20, temperature=temperature, compute_stats=compute_stats)

    def peak(name):
        with _LiveBuffers(20 * 50 * 8) as mode:
            chunked_kd_loss(*problem, divergence=name, **kw).loss.backward()
        return mode.peak

    assert peak(divergence) == most
    assert peak("jsd") > 4  # the counter sees the autograd path's buffers


def test_auto_kd_chunk_size_rule():
    assert auto_kd_chunk_size(49152, 576) == 256  # SmolLM2-135M: 576 / 2 = 288 -> 256
    assert auto_kd_chunk_size(151936, 1536) == 512  # Qwen2-1.5B: 768 -> 512
    assert auto_kd_chunk_size(512, 32) == 64  # 16, clamped up
    assert auto_kd_chunk_size(128256, 16384) == 4096  # 8192, clamped down
    assert auto_kd_chunk_size(49152, 576, live_buffers=1) == 512  # the closed form at T = 1 without stats
    assert auto_kd_chunk_size(49152, 576, live_buffers=8) == 64  # 72 -> 64
    assert auto_kd_chunk_size(151936, 1536, live_buffers=8) == 128  # 192 -> 128
    for h in (576, 1536, 4096):  # the rule: the buffers take at most the head's size
        chunk = auto_kd_chunk_size(32000, h)
        assert 2 * chunk * 32000 <= 32000 * h < 2 * (2 * chunk) * 32000
    with pytest.raises(ValueError, match="hidden_size"):
        auto_kd_chunk_size(100, 0)


@pytest.mark.parametrize(
    "divergence, temperature, compute_stats, live_buffers",
    [
        ("forward_kl", 1.0, False, 1),
        ("forward_kl", 1.0, True, 2),
        ("forward_kl", 2.0, False, 2),
        ("sampled_reverse_kl", 1.0, False, 1),
        ("jsd", 1.0, False, 8),
    ],
)
def test_chunk_size_none_uses_the_automatic_chunk_size(
    monkeypatch, divergence, temperature, compute_stats, live_buffers
):
    problem = _kd_problem(n=37, hidden_size=16, vocab=50)
    calls, rows = [], []

    def fake_auto(vocab_size, hidden_size, *, live_buffers):
        calls.append((vocab_size, hidden_size, live_buffers))
        return 8

    def spy(chunk_fn):
        def wrapped(logits, *args):
            rows.append(logits.shape[0])
            return chunk_fn(logits, *args)

        return wrapped

    monkeypatch.setattr(losses, "auto_kd_chunk_size", fake_auto)
    monkeypatch.setattr(losses, "_closed_form_chunk", spy(losses._closed_form_chunk))
    monkeypatch.setattr(losses, "_autograd_chunk", spy(losses._autograd_chunk))
    kw = dict(divergence=divergence, temperature=temperature)
    out = chunked_kd_loss(*problem, chunk_size=None, compute_stats=compute_stats, **kw)
    assert calls == [(50, 16, live_buffers)] and rows == [8, 8, 8, 8, 5]
    ref = _reference_loss(*problem, kd_weight=0.9, normalizer=1.0, **kw)[0]
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    default = chunked_kd_loss(*problem, **kw)  # the real rule: one chunk of 64 >= 37 positions
    torch.testing.assert_close(default.loss, ref, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_unknown_divergence_or_tail_lists_the_choices():
    hidden, weight, bias, ids, lp, token_lp, target = _kd_problem(n=4)
    s = torch.log_softmax(torch.randn(4, 50, dtype=F64), -1)
    with pytest.raises(ValueError, match="kl_div") as err:
        sparse_divergence(s, ids, lp, token_lp, target, divergence="kl_div")
    assert all(name in str(err.value) for name in DIVERGENCES)
    with pytest.raises(ValueError, match="drop") as err:
        chunked_kd_loss(hidden, weight, bias, ids, lp, token_lp, target, tail="drop")
    assert all(name in str(err.value) for name in TAIL_MODES)
    with pytest.raises(ValueError, match="forward_kl"):
        chunked_kd_loss(hidden, weight, bias, ids, lp, token_lp, target, divergence="fkl")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=1.5), "beta"),
        (dict(skew_alpha=-0.1), "skew_alpha"),
        (dict(temperature=0.0), "temperature"),
        (dict(kd_weight=1.2), "kd_weight"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(normalizer=-1.0), "normalizer"),
        (dict(normalizer=torch.ones(2)), "normalizer"),
    ],
)
def test_bad_options_raise(kwargs, match):
    problem = _kd_problem(n=4)
    with pytest.raises(ValueError, match=match):
        chunked_kd_loss(*problem, **kwargs)


def test_shape_mismatches_raise_clear_errors():
    hidden, weight, bias, ids, lp, token_lp, target = _kd_problem(n=6, vocab=50, k=8)
    s = torch.log_softmax(torch.randn(6, 50, dtype=F64), -1)
    with pytest.raises(ValueError, match="teacher_logprobs must have the shape"):
        sparse_divergence(s, ids, lp[:, :5], None, None)
    with pytest.raises(ValueError, match="teacher_ids must be"):
        sparse_divergence(s, ids[:4], lp[:4], None, None)
    with pytest.raises(ValueError, match="target_ids must be"):
        sparse_divergence(s, ids, lp, token_lp, target[:3], divergence="sampled_reverse_kl")
    with pytest.raises(ValueError, match="needs teacher_token_logprobs"):
        sparse_divergence(s, ids, lp, None, target, divergence="sampled_reverse_kl")
    with pytest.raises(ValueError, match="more than the vocabulary"):
        sparse_divergence(s[:, :5], ids, lp, None, None)
    with pytest.raises(ValueError, match="student_logprobs must be"):
        sparse_divergence(s[0], ids, lp, None, None)
    with pytest.raises(ValueError, match="integer"):
        sparse_divergence(s, ids.double(), lp, None, None)
    with pytest.raises(ValueError, match="weight must be"):
        chunked_kd_loss(hidden, weight[:, :5], bias, ids, lp, token_lp, target)
    with pytest.raises(ValueError, match="bias must be"):
        chunked_kd_loss(hidden, weight, bias[:7], ids, lp, token_lp, target)
    with pytest.raises(ValueError, match="hidden must be"):
        chunked_kd_loss(hidden[None], weight, bias, ids, lp, token_lp, target)
    with pytest.raises(ValueError, match="teacher_token_logprobs must be"):
        chunked_kd_loss(hidden, weight, bias, ids, lp, token_lp[:2], target)
    with pytest.raises(ValueError, match="target_ids must be"):
        chunked_kd_loss(hidden, weight, bias, ids, lp, token_lp, target[:-1])


def test_divergences_are_nonnegative_and_zero_at_the_teacher():
    # Student == teacher on a k = V support: every exact divergence is 0
    n, vocab = 4, 16
    full, ids, lp = _teacher(n, vocab, vocab)
    for divergence in SUPPORT_DIVERGENCES:
        for tail in TAIL_MODES:
            out = sparse_divergence(full, ids, lp, None, None, divergence=divergence, tail=tail)
            assert out.abs().max() < 1e-12, (divergence, tail)
    s = torch.log_softmax(torch.randn(n, vocab, dtype=F64, generator=_generator(8)), -1)
    for divergence in SUPPORT_DIVERGENCES:
        assert (sparse_divergence(s, ids[:, :5], lp[:, :5], None, None, divergence=divergence) >= -1e-12).all()
    assert math.isclose(TAIL_FLOOR, 1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# Per-position weights and the options object
# ---------------------------------------------------------------------------------------------------------------------


def _position_weights(n, seed=5):
    g = _generator(seed)
    kd_w, ce_w = torch.rand(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64)
    ce_w[[1, 4, 9]] = 0.0  # rows trained on the divergence alone
    kd_w[[2, 9, 20]], ce_w[[2, 20]] = 0.0, 0.0  # rows that count for nothing (9: both set above and here)
    return kd_w, ce_w


@pytest.mark.parametrize("divergence", ["forward_kl", "sampled_reverse_kl", "jsd", "reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("tail", TAIL_MODES)
def test_per_position_weights_match_a_dense_reference(divergence, temperature, tail):
    problem = _kd_problem(n=37, vocab=50, k=8)
    hidden, weight, bias, ids, lp, token_lp, target = problem
    kd_w, ce_w = _position_weights(37)
    kw = dict(divergence=divergence, temperature=temperature, tail=tail, beta=0.3)
    out = chunked_kd_loss(*problem, kd_weights=kd_w, ce_weights=ce_w, normalizer=11.0, chunk_size=7, **kw)
    # The reference: full [N, V] logits, the per-position terms by plain torch ops, autograd
    logits = hidden @ weight.T + bias
    kd_rows = sparse_divergence(torch.log_softmax(logits / temperature, -1), ids, lp, token_lp, target, **kw)
    ce_rows = -torch.log_softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    ref = (kd_w * kd_rows + ce_w * ce_rows).sum() / 11.0
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    got, want = _grads(out.loss, problem[:3]), _grads(ref, problem[:3])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert (got[0][[2, 9, 20]] == 0).all()  # a position with both weights 0 gets no gradient at all
    assert got[0][[1, 4]].abs().sum() > 0  # one with a divergence weight only still trains
    # The sums stay unweighted statistics: every position once
    torch.testing.assert_close(out.kd_sum, kd_rows.detach().sum(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ce_sum, ce_rows.detach().sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_per_position_weights_default_to_kd_weight_and_each_side_alone(divergence):
    n = 37
    problem = _kd_problem(n=n)
    scalar = chunked_kd_loss(*problem, kd_weight=0.7, divergence=divergence, chunk_size=6)
    kd_w, ce_w = torch.full((n,), 0.7, dtype=F64), torch.full((n,), 0.3, dtype=F64)
    full = chunked_kd_loss(
        *problem, kd_weight=0.3, divergence=divergence, chunk_size=6, kd_weights=kd_w, ce_weights=ce_w
    )
    torch.testing.assert_close(full.loss, scalar.loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(_grads(full.loss, problem[:3]), _grads(scalar.loss, problem[:3]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    kd_w, _ = _position_weights(n)
    only_kd = chunked_kd_loss(*problem, kd_weight=0.7, divergence=divergence, chunk_size=6, kd_weights=kd_w)
    ref = _reference_loss(*problem, kd_weight=0.0, normalizer=1.0, divergence=divergence)[1:3]  # (kd, ce) rows
    torch.testing.assert_close(only_kd.loss, (kd_w * ref[0]).sum() + 0.3 * ref[1].sum(), rtol=1e-12, atol=1e-12)


def test_bad_position_weights_raise():
    problem = _kd_problem(n=6)
    with pytest.raises(ValueError, match=r"kd_weights must be a floating point \[N\] tensor with N = 6"):
        chunked_kd_loss(*problem, kd_weights=torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="ce_weights must be finite and >= 0"):
        chunked_kd_loss(*problem, ce_weights=torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=F64))


def test_options_object_is_the_keywords_checked_once():
    from trl_edge.losses import DIVERGENCE_REGISTRY, ClosedFormDivergence, KDLossOptions

    problem = _kd_problem(n=9)
    options = KDLossOptions(divergence="jsd", beta=0.2, temperature=1.5, kd_weight=0.6)
    a = chunked_kd_loss(*problem, options=options, chunk_size=4)
    b = chunked_kd_loss(*problem, divergence="jsd", beta=0.2, temperature=1.5, kd_weight=0.6, chunk_size=4)
    assert torch.equal(a.loss, b.loss)
    c = chunked_kd_loss(*problem, options=options, beta=0.7, chunk_size=4)  # a keyword overrides the object
    d = chunked_kd_loss(*problem, divergence="jsd", beta=0.7, temperature=1.5, kd_weight=0.6, chunk_size=4)
    assert torch.equal(c.loss, d.loss) and not torch.equal(a.loss, c.loss)
    assert tuple(DIVERGENCE_REGISTRY) == DIVERGENCES
    closed = {n for n, d in DIVERGENCE_REGISTRY.items() if isinstance(d, ClosedFormDivergence)}
    assert closed == {"forward_kl", "sampled_reverse_kl"}
    assert str(KDLossOptions.BOUNDS["temperature"]) == "(0, inf)" and str(KDLossOptions.BOUNDS["beta"]) == "[0, 1]"
    for bad in (dict(temperature=math.inf), dict(temperature=math.nan), dict(skew_alpha=1.01)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            KDLossOptions(**bad)
