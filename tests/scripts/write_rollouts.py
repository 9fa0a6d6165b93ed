"""Sample rollouts of a tiny student over a small prompt set; run directly or under `accelerate launch`.

Usage: write_rollouts.py OUT_DIR [--kill-after N]   (--kill-after: die abruptly after sealing N shards)
"""

import argparse
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402

from trl_edge.rollout import writer  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer, exit_after  # noqa: E402


def build_inputs():
    tokenizer = build_tokenizer()
    rows = [{"prompt": r["prompt"], "stage": r["stage"]} for r in arithmetic_examples(10, seed=3)]
    return build_tiny_model(tokenizer, seed=2), tokenizer, Dataset.from_list(rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()
    if args.kill_after is not None:
        exit_after(writer, "_write_shard", args.kill_after)
    model, tokenizer, dataset = build_inputs()
    writer.generate_rollouts(
        model, tokenizer, dataset, args.out, num_samples=2, max_new_tokens=8, shard_size=3, batch_size=2, seed=5
    )


if __name__ == "__main__":
    main()
