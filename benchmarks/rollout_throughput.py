"""Rollout throughput of the transformers backend: sampled tokens per second of a SmolLM2-135M-class student.

    python benchmarks/rollout_throughput.py                  # SmolLM2-135M-Instruct, 2 threads: ~3 min
    python benchmarks/rollout_throughput.py --batch_sizes 8 --prompts 16

``trl_edge.generate_rollouts`` is timed end to end (tokenizing the prompts, length-grouped left-padded ``generate``
with the sampling distribution recorded, writing the Arrow shards) over real chat prompts, at several batch sizes
and samples per prompt. Reported: completion tokens sampled per second, and samples per second. The student is the
embedded SmolLM2-135M-Instruct (``embedded:smollm2-135m-instruct``); where it cannot be converted, a random model of
its shape (throughput depends on the shape, not the weights; real weights only change where samples stop).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "What is 17 + 25? Answer with the number.",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "Explain in one sentence why the sky is blue.",
    "What is the capital of France?",
    "Give a synonym of 'happy'.",
    "What is 9 times 7?",
    "Translate 'good morning' into French.",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--num_samples", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_json", default=str(Path(__file__).parent / "results/rollout_throughput.json"))
    return parser.parse_args(argv)


def load_student():
    import torch

    from trl_edge.model_loading import load_causal_lm, load_tokenizer

    try:
        from trl_edge.embedded import ensure_embedded_model

        path = ensure_embedded_model()
        return load_causal_lm(path, dtype=torch.float32), load_tokenizer(path), str(path)
    except ImportError as err:
        from transformers import AutoModelForCausalLM, LlamaConfig

        from trl_edge.testing import build_tokenizer

        print(f"[rollout_throughput] {err}; using a random SmolLM2-shaped model")
        tokenizer = build_tokenizer()
        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)  # fmt: skip
        return AutoModelForCausalLM.from_config(config), tokenizer, "random SmolLM2-135M shape"


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from datasets import Dataset

    from trl_edge import generate_rollouts

    torch.set_num_threads(args.threads)
    model, tokenizer, name = load_student()
    rows = [{"prompt": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]} for i in range(args.prompts)]
    prompts = Dataset.from_list(rows)
    results = {"student": name, "threads": args.threads, "max_new_tokens": args.max_new_tokens, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for num_samples in args.num_samples:
            for batch_size in args.batch_sizes:
                out = Path(tmp) / f"b{batch_size}-n{num_samples}"
                start = time.perf_counter()
                rollouts = generate_rollouts(
                    model, tokenizer, prompts, out, num_samples=num_samples, temperature=1.0,
                    max_new_tokens=args.max_new_tokens, batch_size=batch_size, seed=0, use_cpu=True,
                )  # fmt: skip
                seconds = time.perf_counter() - start
                data = rollouts.to_dataset()
                tokens = sum(len(ids) for ids in data["completion_ids"])
                run = {
                    "batch_size": batch_size, "num_samples": num_samples, "samples": len(data), "tokens": tokens,
                    "seconds": seconds, "tokens_per_s": tokens / seconds, "samples_per_s": len(data) / seconds,
                    "ended_with_eos": sum(r == "eos" for r in data["finish_reason"]) / len(data),
                }  # fmt: skip
                results["runs"].append(run)
                print(f"[rollout_throughput] batch {batch_size}, {num_samples} sample(s)/prompt: "
                      f"{run['tokens_per_s']:.1f} tokens/s", flush=True)  # fmt: skip
    print(table(results))
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    lines = [
        f"Student: {results['student']}; {results['threads']} threads; up to {results['max_new_tokens']} new tokens",
        "",
        "| prompts per generate call | samples per prompt | completion tokens / s | samples / s | ended with EOS |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        cells = (r["batch_size"], r["num_samples"], f"{r['tokens_per_s']:.1f}", f"{r['samples_per_s']:.2f}",
                 f"{100 * r['ended_with_eos']:.0f}%")  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
