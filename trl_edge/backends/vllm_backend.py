"""Score and sample with vLLM instead of transformers: the one module of trl-edge that imports vLLM.

Optional (``pip install trl-edge[vllm]``). Each call hands vLLM every sequence at once (one ``LLM.generate`` over a
whole shard or prompt set, not a call per small batch), so its scheduler batches them.

* Scoring: vLLM's prompt log-probs give, at every position, the ``k`` most likely tokens and the token actually
  there, as raw log-probs (temperature 1): exactly what the cache stores.
* Sampling: ``SamplingParams(n=..., temperature, top_p, top_k, seed, logprobs=0)`` returns each sampled token and its
  log-prob under the sampling distribution (``logprobs_mode="processed_logprobs"``).
"""

from __future__ import annotations

import numpy as np

from ..tokens import scored_positions


def require_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "backend='vllm' needs vLLM: `pip install trl-edge[vllm]` on a host with a GPU, or use the default "
            "backend='transformers'."
        ) from err
    return vllm


def prompt_logprobs_to_topk(prompt_logprobs, input_ids: np.ndarray, labels: np.ndarray, top_k: int,
                            support_size: int | None = None):  # fmt: skip
    """vLLM's per-position ``{token_id: Logprob}`` dicts -> ``(topk_ids [P, k], topk_logprobs [P, k], token_lp [P])``.

    ``prompt_logprobs[t + 1]`` is the distribution of token ``t + 1`` given the tokens up to ``t``: the cache's
    position ``t``. vLLM adds the actual token to the top-k when it is not among them; it is dropped from the top-k
    (and kept as the token log-prob). Ids ``>= support_size`` (a head's padding rows) are never candidates.
    """
    positions = scored_positions(labels)
    ids = np.zeros((len(positions), top_k), dtype=np.int64)
    values = np.zeros((len(positions), top_k), dtype=np.float32)
    token_lp = np.zeros(len(positions), dtype=np.float32)
    for row, t in enumerate(positions):
        entries = prompt_logprobs[t + 1] or {}
        ranked = sorted(entries.items(), key=lambda kv: (-kv[1].logprob, kv[0]))
        best = [(token, entry) for token, entry in ranked if support_size is None or token < support_size][:top_k]
        if len(best) < top_k:
            raise ValueError(f"vLLM returned {len(best)} usable log-probs at position {t + 1}, fewer than "
                             f"top_k={top_k}: raise max_logprobs.")  # fmt: skip
        ids[row] = [token for token, _ in best]
        values[row] = [entry.logprob for _, entry in best]
        token_lp[row] = entries[int(input_ids[t + 1])].logprob
    return ids, values, token_lp


class VLLMEngine:
    """A ``vllm.LLM`` with the two things trl-edge asks of an inference engine: scoring and sampling."""

    def __init__(self, llm):
        self.llm = llm
        config = llm.llm_engine.model_config
        self.name, self.vocab_size = str(config.model), int(config.get_vocab_size())
        self.logprobs_mode = getattr(config, "logprobs_mode", None)  # None: an engine too old to say

    @classmethod
    def load(cls, model, *, revision=None, dtype="auto", trust_remote_code=False, tensor_parallel_size=1,
             max_logprobs=20, seed=0, logprobs_mode="raw_logprobs"):  # fmt: skip
        vllm = require_vllm()
        if not isinstance(model, str):
            return cls(model)  # already a vllm.LLM
        return cls(
            vllm.LLM(
                model=str(model),
                revision=revision,
                dtype="auto" if dtype == "auto" else str(dtype).replace("torch.", ""),
                trust_remote_code=trust_remote_code,
                tensor_parallel_size=tensor_parallel_size,
                max_logprobs=max_logprobs,
                logprobs_mode=logprobs_mode,
                enable_prefix_caching=False,
                seed=seed,
            )
        )

    def score(self, sequences, labels, top_k: int, support_size: int | None = None):
        """The same output as ``PositionScorer``: one vLLM call for all ``sequences``."""
        vllm = require_vllm()
        if self.logprobs_mode in ("raw_logits", "processed_logits"):
            raise ValueError(f"This vLLM engine returns logits (logprobs_mode={self.logprobs_mode!r}), not log-probs: "
                             "build it with logprobs_mode='raw_logprobs' or 'processed_logprobs'.")  # fmt: skip
        params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=top_k + 8, temperature=1.0)
        prompts = [vllm.TokensPrompt(prompt_token_ids=[int(x) for x in seq]) for seq in sequences]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            prompt_logprobs_to_topk(out.prompt_logprobs, seq, lab, top_k, support_size)
            for out, seq, lab in zip(outputs, sequences, labels)
        ]

    def generate(self, prompts: list[list[int]], sampling, seeds: list[int]):
        """Per prompt, ``sampling.num_samples`` samples ``(token_ids, logprobs, finish_reason)`` in one vLLM call."""
        vllm = require_vllm()
        plain = sampling.temperature in (0, 1) and not sampling.top_k and sampling.top_p >= 1
        if self.logprobs_mode not in (None, "processed_logprobs") and not plain:
            # vLLM's default (raw_logprobs) would store the model's log-probs, not the sampling distribution's
            raise ValueError(f"This vLLM engine has logprobs_mode={self.logprobs_mode!r}: rollouts store log-probs "
                             "under the sampling distribution (temperature, top-k, top-p), so build it with "
                             "logprobs_mode='processed_logprobs'.")  # fmt: skip
        requests, params = [], []
        for prompt, seed in zip(prompts, seeds):
            requests.append(vllm.TokensPrompt(prompt_token_ids=[int(x) for x in prompt]))
            params.append(
                vllm.SamplingParams(
                    n=sampling.num_samples,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=sampling.top_k if sampling.top_k else -1,
                    max_tokens=sampling.max_new_tokens,
                    seed=seed,
                    logprobs=0,
                    stop_token_ids=list(sampling.stop_token_ids),
                )
            )
        outputs = self.llm.generate(requests, params, use_tqdm=True)
        results = []
        for out in outputs:
            samples = []
            for completion in out.outputs:
                ids = list(completion.token_ids)
                lps = [next(iter(d.values())).logprob if d else float("nan") for d in (completion.logprobs or [])]
                reason = "eos" if completion.finish_reason == "stop" else "length"
                samples.append((ids, lps, reason))
            results.append(samples)
        return results
