"""Score sequences with vLLM instead of transformers: prompt log-probs of a single forward pass per sequence.

Optional (``pip install trl-edge[vllm]``). vLLM returns, at every prompt position, the ``k`` most likely tokens and
the token actually there, as raw log-probs (temperature 1): exactly what the cache stores, at vLLM's throughput.
"""

from __future__ import annotations

import numpy as np

from .format import scored_positions


def require_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "backend='vllm' needs vLLM: `pip install trl-edge[vllm]` on a host with a GPU, or use the default "
            "backend='transformers'."
        ) from err
    return vllm


def load_vllm_teacher(teacher: str, revision: str | None, dtype: str, top_k: int):
    vllm = require_vllm()
    return vllm.LLM(
        model=str(teacher),
        revision=revision,
        dtype="auto" if dtype == "auto" else str(dtype).replace("torch.", ""),
        max_logprobs=top_k,
        logprobs_mode="raw_logprobs",
        enable_prefix_caching=False,
    )


def prompt_logprobs_to_topk(prompt_logprobs, input_ids: np.ndarray, labels: np.ndarray, top_k: int):
    """vLLM's per-position ``{token_id: Logprob}`` dicts -> ``(topk_ids [P, k], topk_logprobs [P, k], token_lp [P])``.

    ``prompt_logprobs[t + 1]`` is the distribution of token ``t + 1`` given the tokens up to ``t``: the cache's
    position ``t``. vLLM adds the actual token to the top-k when it is not among them; it is dropped from the top-k
    (and kept as the token log-prob).
    """
    positions = scored_positions(labels)
    ids = np.zeros((len(positions), top_k), dtype=np.int64)
    values = np.zeros((len(positions), top_k), dtype=np.float32)
    token_lp = np.zeros(len(positions), dtype=np.float32)
    for row, t in enumerate(positions):
        entries = prompt_logprobs[t + 1]
        if entries is None or len(entries) < top_k:
            raise ValueError(f"vLLM returned {0 if entries is None else len(entries)} log-probs at position {t + 1}, "
                             f"fewer than top_k={top_k}.")  # fmt: skip
        best = sorted(entries.items(), key=lambda kv: (-kv[1].logprob, kv[0]))[:top_k]
        ids[row] = [token for token, _ in best]
        values[row] = [entry.logprob for _, entry in best]
        token_lp[row] = entries[int(input_ids[t + 1])].logprob
    return ids, values, token_lp


def score_with_vllm(llm, sequences: list[np.ndarray], labels: list[np.ndarray], top_k: int):
    """The same output as ``writer.score_batch``, computed by a ``vllm.LLM``."""
    vllm = require_vllm()
    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=top_k, temperature=1.0)
    prompts = [vllm.TokensPrompt(prompt_token_ids=[int(x) for x in seq]) for seq in sequences]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    return [
        prompt_logprobs_to_topk(out.prompt_logprobs, seq, lab, top_k)
        for out, seq, lab in zip(outputs, sequences, labels)
    ]
