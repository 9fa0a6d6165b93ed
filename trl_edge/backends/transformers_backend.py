"""Run a transformers causal LM over token sequences: log-probs at chosen positions (scoring), and sampling.

Scoring sends only the positions that matter through the LM head, in chunks, in **float32** whatever the model's
dtype: a bf16 head rounds a logit near 25 to a grid of 0.125 (up to 0.06 nats of error in a log-prob), far above
what the cache's encodings lose (``benchmarks/teacher_head_precision.py``). ``[batch, seq, vocab]`` logits are never
built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..batch import left_pad, right_pad
from ..clock import Clock
from ..model_loading import input_device
from ..tokens import scored_positions


def has_plain_lm_head(model) -> bool:
    """Whether logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling after the head)."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


def check_plain_lm_head(model, what: str) -> None:
    if not has_plain_lm_head(model):
        raise ValueError(
            f"{what} needs logits that are exactly the LM head of the last hidden state; this model applies logit "
            "soft-capping or scaling after its head, which is not supported yet."
        )


@dataclass
class PositionScorer:
    """Scores sequences with ``model``: at every position ``t`` whose next token carries loss (``labels[t + 1] !=
    -100``) the top-k next-token ids and log-probs and the log-prob of the token actually there.

    Args:
        model: a causal LM (any dtype; a ``device_map`` model works: inputs go to its first device).
        top_k: candidates kept per position; 0 keeps only the actual token's log-prob (a model's NLL).
        support_size: ids ``>= support_size`` are never chosen as top-k candidates (rows of a head padded past the
            tokenizer, which no text can contain); their probability stays in the normaliser, so it lands in the
            cache's tail bucket. Defaults to the whole head.
        chunk_size: positions per LM-head chunk (bounds the ``[chunk, vocab]`` float32 buffers).
    """

    model: object
    top_k: int
    support_size: int | None = None
    chunk_size: int = 2048

    def __post_init__(self):
        head = self.model.get_output_embeddings()
        self.plain = has_plain_lm_head(self.model) and head is not None
        self.head_size = head.weight.shape[0]
        self.support_size = min(self.support_size or self.head_size, self.head_size)
        self.top_k = min(self.top_k, self.support_size)
        self._weight = self._bias = None

    def _fp32_head(self):
        if self._weight is None:  # one float32 copy per scorer, not per chunk
            head = self.model.get_output_embeddings()
            self._weight = head.weight.detach().float()
            bias = getattr(head, "bias", None)
            self._bias = bias.detach().float() if bias is not None else None
        return self._weight, self._bias

    @torch.no_grad()
    def __call__(self, sequences, labels, pad_token_id: int = 0, timings: dict[str, float] | None = None):
        """Per sequence ``(topk_ids int64 [P, k], topk_logprobs float32 [P, k], token_logprobs float32 [P])``.

        ``timings``, if given, adds the seconds of the forward (``forward``: backbone, LM head, log-softmax) and of
        choosing what to keep (``topk``: top-k, gathering the actual token's log-prob, copying to the host).
        """
        model, k = self.model, self.top_k
        device = input_device(model)
        clock = Clock(timings, device)
        input_ids, attention_mask = right_pad(sequences, pad_token_id)
        cols = [scored_positions(lab) for lab in labels]
        rows = np.concatenate([np.full(len(c), row) for row, c in enumerate(cols)])
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        clock.start()
        if self.plain:
            hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        else:  # logits after soft-capping/scaling come out of the model itself, in its dtype
            hidden = model(input_ids=input_ids, attention_mask=attention_mask).logits
        rows_t = torch.as_tensor(rows, dtype=torch.long, device=hidden.device)
        cols_t = torch.as_tensor(np.concatenate(cols), dtype=torch.long, device=hidden.device)
        selected = hidden[rows_t, cols_t]
        targets = input_ids.to(hidden.device)[rows_t, cols_t + 1]
        ids, values, token_lp = [], [], []
        for start in range(0, selected.shape[0], self.chunk_size):
            chunk = selected[start : start + self.chunk_size]
            if self.plain:
                weight, bias = self._fp32_head()
                logits = torch.nn.functional.linear(chunk.to(weight.device, torch.float32), weight, bias)
            else:
                logits = chunk.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            clock.lap("forward")
            token_lp.append(logprobs.gather(-1, targets[start : start + self.chunk_size, None]).squeeze(-1).cpu())
            if k > 0:
                candidates = logprobs[:, : self.support_size] if self.support_size < logprobs.shape[-1] else logprobs
                top = candidates.topk(k, dim=-1)
                ids.append(top.indices.cpu())
                values.append(top.values.cpu())
            clock.lap("topk")
        ids = torch.cat(ids) if ids else torch.zeros((0, k), dtype=torch.long)
        values = torch.cat(values) if values else torch.zeros((0, k))
        token_lp = torch.cat(token_lp) if token_lp else torch.zeros(0)
        counts = [len(c) for c in cols]
        if k == 0:
            ids, values = torch.zeros((len(token_lp), 0), dtype=torch.long), torch.zeros((len(token_lp), 0))
        return [
            (i.numpy().astype(np.int64), v.numpy().astype(np.float32), t.numpy().astype(np.float32))
            for i, v, t in zip(ids.split(counts), values.split(counts), token_lp.split(counts))
        ]


def warp_logits(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float) -> torch.Tensor:
    """The sampling distribution's logits (float32): temperature, then top-k, then top-p, as rollouts sample them
    (and as the on-policy drift re-scores them)."""
    scores = scores.float()
    if temperature != 1.0:
        scores = scores / temperature
    if top_k:
        kth = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


class _SamplingDistribution:
    """A logits processor that *is* the sampling distribution: temperature, top-k and top-p, applied here (and not
    by ``generate``, which would apply them after any processor), while it records the log-prob of every sampled
    token under the distribution it was drawn from.

    At each step it gathers, for the token just appended to ``input_ids``, the log-prob the previous step gave it,
    so it keeps one ``[batch, vocab]`` buffer instead of every step's scores.
    """

    def __init__(self, temperature: float, top_k: int | None, top_p: float):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.previous: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        return warp_logits(scores, self.temperature, self.top_k, self.top_p)

    def collect(self, last_tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.logprobs.append(self.previous.gather(-1, last_tokens[:, None]).squeeze(-1).cpu())

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.collect(input_ids[:, -1])
        scores = self.warp(scores)
        self.previous = torch.log_softmax(scores, dim=-1)
        return scores


@torch.no_grad()
def sample_completions(model, prompts: list[list[int]], *, num_samples: int, temperature: float, top_p: float,
                       top_k: int | None, max_new_tokens: int, stop_token_ids: list[int], pad_token_id: int,
                       seed: int):  # fmt: skip
    """``num_samples`` completions of each prompt (token ids), in one left-padded batch.

    Returns per prompt a list of ``(completion_ids, logprobs, finish_reason)``: the completion ends at (and
    includes) the first stop token the model sampled (``eos``), or after ``max_new_tokens`` (``length``, no stop token
    added); ``logprobs`` are those of the sampled tokens under the sampling distribution (temperature, top-k, top-p
    applied; greedy when ``temperature == 0``: the model's own log-probs). ``seed`` seeds the draw.
    """
    from transformers import GenerationConfig, LogitsProcessorList

    device = input_device(model)
    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    width = input_ids.shape[1]
    greedy = temperature == 0
    distribution = _SamplingDistribution(1.0 if greedy else temperature, None if greedy else top_k,
                                         1.0 if greedy else top_p)  # fmt: skip
    # A fresh config: no warper or penalty from the model's own generation_config. Greedy sets no sampling flag
    # (transformers warns about any it would ignore); sampling switches generate's own warpers off, ours applies them.
    warpers = {} if greedy else {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    config = GenerationConfig(
        do_sample=not greedy, **warpers, max_new_tokens=max_new_tokens,
        num_return_sequences=1 if greedy else num_samples, eos_token_id=list(stop_token_ids),
        pad_token_id=pad_token_id, return_dict_in_generate=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config,
            logits_processor=LogitsProcessorList([distribution]),
        )  # fmt: skip
    finally:
        model.train(was_training)
    sequences = out.sequences[:, width:].cpu()
    distribution.collect(out.sequences[:, -1])
    logprobs = torch.stack(distribution.logprobs, dim=1) if distribution.logprobs else torch.zeros(len(sequences), 0)
    stops = set(int(t) for t in stop_token_ids)
    per_row = []
    for row in range(len(sequences)):
        ids = sequences[row].tolist()
        end = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
        reason = "eos" if end is not None else "length"
        end = end if end is not None else min(len(ids), max_new_tokens)
        per_row.append((ids[:end], logprobs[row, :end].tolist(), reason))
    n = 1 if greedy else num_samples
    results = [per_row[i * n : (i + 1) * n] for i in range(len(prompts))]
    if greedy and num_samples > 1:  # greedy decoding has one answer: every sample is it
        results = [samples * num_samples for samples in results]
    return results
