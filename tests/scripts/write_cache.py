"""Write a teacher cache of a tiny teacher over a small dataset; run directly or under `accelerate launch`.

Usage: write_cache.py OUT_DIR [--kill-after N]   (--kill-after: die abruptly after sealing N shards)
"""

import argparse
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402

from trl_edge.cache import writer  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer, exit_after  # noqa: E402


def build_inputs():
    tokenizer = build_tokenizer()
    return build_tiny_model(tokenizer, seed=1), tokenizer, Dataset.from_list(arithmetic_examples(20, seed=3))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()
    if args.kill_after is not None:
        exit_after(writer, "_write_shard", args.kill_after)
    model, tokenizer, dataset = build_inputs()
    writer.cache_teacher_logits(model, tokenizer, dataset, args.out, top_k=16, shard_size=4, batch_size=3)


if __name__ == "__main__":
    main()
