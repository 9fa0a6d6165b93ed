"""One caching call, in a fresh process, with a tokenizer that has no pad token (SmolLM2-like).

Usage: rerun_cache.py OUT_DIR [--through-sft]   (--through-sft: first build an SFTTrainer with the tokenizer, as a
pipeline or a notebook does; TRL then sets pad_token = eos_token on it)
"""

import argparse
import os

os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402

from trl_edge.cache.writer import cache_teacher_logits  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--through-sft", action="store_true")
    args = parser.parse_args()
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    data = Dataset.from_list(arithmetic_examples(8, seed=4))
    teacher = build_tiny_model(tokenizer, seed=1)  # before SFT sets a pad token (it would change padding_idx)
    if args.through_sft:
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(
            output_dir=os.path.join(args.out, "sft"), report_to=[], use_cpu=True, bf16=False, max_steps=1
        )
        SFTTrainer(build_tiny_model(tokenizer, seed=2), config, train_dataset=data, processing_class=tokenizer)
        assert tokenizer.pad_token == tokenizer.eos_token
    cache = cache_teacher_logits(teacher, tokenizer, data, os.path.join(args.out, "cache"), top_k=8, shard_size=4)
    print("CACHE", len(cache), [cache.sample_id(i) for i in range(len(cache))])


if __name__ == "__main__":
    main()
