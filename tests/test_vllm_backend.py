"""The vLLM backend, against a stand-in for the `vllm` package built on a tiny transformers model.

vLLM needs a GPU; these tests check trl-edge's side of the contract: what it asks `LLM.generate` for (one call per
shard, the sampling parameters) and how it maps vLLM's outputs (prompt log-probs with the actual token added,
sampled token ids with their log-probs, finish reasons) into caches and rollout sets.
"""

import sys
import types
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from conftest import make_dataset

from trl_edge import cache_teacher_logits, generate_rollouts
from trl_edge.testing import arithmetic_examples, build_tiny_model


@dataclass
class Logprob:
    logprob: float


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 16
    seed: int | None = None
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    stop_token_ids: list = field(default_factory=list)


@dataclass
class TokensPrompt:
    prompt_token_ids: list


class FakeLLM:
    """Answers like vLLM's offline `LLM.generate`, from a transformers model."""

    def __init__(self, model):
        self.model, self.calls = model, []
        config = types.SimpleNamespace(model="fake/teacher", get_vocab_size=lambda: model.config.vocab_size)
        self.llm_engine = types.SimpleNamespace(model_config=config)

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(len(prompts))
        params = params if isinstance(params, list) else [params] * len(prompts)
        outputs = []
        for prompt, p in zip(prompts, params):
            ids = torch.tensor([prompt.prompt_token_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(self.model(input_ids=ids).logits[0].float(), -1)
            if p.prompt_logprobs:
                entries = [None]
                for t in range(1, ids.shape[1]):
                    top = logprobs[t - 1].topk(p.prompt_logprobs)
                    entry = {int(i): Logprob(float(v)) for i, v in zip(top.indices, top.values)}
                    actual = int(ids[0, t])
                    entry[actual] = Logprob(float(logprobs[t - 1, actual]))  # vLLM adds the actual token
                    entries.append(entry)
                outputs.append(types.SimpleNamespace(prompt_logprobs=entries, outputs=[]))
                continue
            completions = []
            for j in range(p.n):  # deterministic "samples": token j+1 ... then a stop token for even j
                tokens = [5 + j, 6 + j] + ([p.stop_token_ids[0]] if j % 2 == 0 else [7, 8])
                tokens = tokens[: p.max_tokens]
                reason = "stop" if tokens[-1] in p.stop_token_ids else "length"
                completions.append(types.SimpleNamespace(
                    token_ids=tokens, logprobs=[{t: Logprob(-0.5 - k)} for k, t in enumerate(tokens)],
                    finish_reason=reason,
                ))  # fmt: skip
            outputs.append(types.SimpleNamespace(prompt_logprobs=None, outputs=completions))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    import importlib.machinery

    import trl.trainer.sft_trainer  # noqa: F401  (TRL checks for vLLM at import: let it see none)

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.SamplingParams, module.TokensPrompt = SamplingParams, TokensPrompt
    module.LLM = lambda **kwargs: pytest.fail(f"no real vLLM here: {kwargs}")
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_the_vllm_cache_equals_the_transformers_cache(tmp_path, tokenizer, fake_vllm):
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=1)
    data = make_dataset(6)
    exact = cache_teacher_logits(teacher, tokenizer, data, tmp_path / "hf", top_k=8, encoding="lossless")
    llm = FakeLLM(teacher)
    served = cache_teacher_logits(llm, tokenizer, data, tmp_path / "vllm", top_k=8, encoding="lossless",
                                  backend="vllm", shard_size=4, batch_size=2)  # fmt: skip
    assert llm.calls == [4, 2]  # one generate call per shard, every sequence of the shard at once
    for i in range(len(exact)):
        a, b = exact[i], served[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["topk_ids"], b["topk_ids"])
        torch.testing.assert_close(a["topk_logprobs"], b["topk_logprobs"], rtol=0, atol=1e-5)
        torch.testing.assert_close(a["token_logprobs"], b["token_logprobs"], rtol=0, atol=1e-5)


def test_vllm_rollouts_keep_the_sampled_ids_their_logprobs_and_why_they_ended(tmp_path, tokenizer, fake_vllm):
    from datasets import Dataset

    llm = FakeLLM(build_tiny_model(tokenizer, seed=2))
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in arithmetic_examples(5)])
    rows = generate_rollouts(llm, tokenizer, prompts, tmp_path / "r", num_samples=2, max_new_tokens=4, backend="vllm",
                             shard_size=3, stop_token_ids=[tokenizer.eos_token_id]).to_dataset()  # fmt: skip
    assert llm.calls == [3, 2]  # one call per shard
    eos = tokenizer.eos_token_id
    assert rows["completion_ids"][:2] == [[5, 6, eos], [6, 7, 7, 8]]
    assert rows["finish_reason"][:2] == ["eos", "length"]
    np.testing.assert_allclose(rows["logprobs"][1], [-0.5, -1.5, -2.5, -3.5])
    assert rows["prompt_index"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_an_engine_that_returns_raw_logprobs_is_refused_for_warped_sampling(tmp_path, tokenizer, fake_vllm):
    """vLLM's default logprobs_mode (raw) would silently store untempered log-probs (a defect before issue 16)."""
    from datasets import Dataset

    llm = FakeLLM(build_tiny_model(tokenizer, seed=2))
    llm.llm_engine.model_config.logprobs_mode = "raw_logprobs"
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in arithmetic_examples(2)])
    with pytest.raises(ValueError, match="processed_logprobs"):
        generate_rollouts(llm, tokenizer, prompts, tmp_path / "r", temperature=0.7, backend="vllm",
                          stop_token_ids=[tokenizer.eos_token_id])  # fmt: skip
