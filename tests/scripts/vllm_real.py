"""Real vLLM (run with the vLLM environment's python): sample rollouts and score them with one ``vllm.LLM``.

``python tests/scripts/vllm_real.py MODEL_DIR OUT_DIR`` writes ``OUT_DIR/rollouts`` (trl-edge's vLLM backend),
``OUT_DIR/cache`` (its vLLM scoring of those rollouts) and ``OUT_DIR/direct.json`` (what ``LLM.generate`` itself
returns for the same prompts, seeds and settings), for tests/test_vllm_real.py to compare.
"""

import json
import sys
from pathlib import Path

SAMPLING = dict(num_samples=2, temperature=0.8, top_p=0.95, top_k=50, max_new_tokens=24, seed=3)
TOP_K = 16

if __name__ == "__main__":  # vLLM spawns its engine process
    from datasets import Dataset
    from vllm import LLM, SamplingParams, TokensPrompt

    from trl_edge import cache_teacher_logits, generate_rollouts
    from trl_edge.model_loading import load_tokenizer
    from trl_edge.rollout import RolloutSet
    from trl_edge.rollout.writer import _shard_seed
    from trl_edge.testing import arithmetic_examples

    model_dir, out = sys.argv[1], Path(sys.argv[2])
    tokenizer = load_tokenizer(model_dir)
    llm = LLM(model=model_dir, dtype="float32", enforce_eager=True, max_model_len=512, max_logprobs=TOP_K + 8,
              logprobs_mode="processed_logprobs", seed=0)  # fmt: skip
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in arithmetic_examples(4)])
    rollouts = generate_rollouts(llm, tokenizer, prompts, out / "rollouts", backend="vllm", shard_size=4, **SAMPLING)
    cache_teacher_logits(llm, tokenizer, RolloutSet(out / "rollouts"), out / "cache", top_k=TOP_K,
                         encoding="lossless", backend="vllm")  # fmt: skip
    direct = []
    for i in range(len(prompts)):
        prompt = rollouts[i * SAMPLING["num_samples"]]["prompt_ids"]
        params = SamplingParams(n=SAMPLING["num_samples"], temperature=SAMPLING["temperature"],
                                top_p=SAMPLING["top_p"], top_k=SAMPLING["top_k"],
                                max_tokens=SAMPLING["max_new_tokens"], seed=_shard_seed(SAMPLING["seed"], 0) + i,
                                logprobs=0, stop_token_ids=[tokenizer.eos_token_id])  # fmt: skip
        (output,) = llm.generate([TokensPrompt(prompt_token_ids=list(prompt))], params, use_tqdm=False)
        direct.append([{"ids": list(c.token_ids), "logprobs": [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)]}
                       for c in output.outputs])  # fmt: skip
    (out / "direct.json").write_text(json.dumps({"samples": direct, "sampling": SAMPLING, "top_k": TOP_K}))
