"""Under `accelerate launch` with 2 processes: write one teacher cache together, then distil from it with DDP.

Usage: accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/scripts/ddp_kd.py OUT_DIR
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import torch.distributed as dist  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer, cache_teacher_logits  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402


def main(out_dir):
    tokenizer = build_tokenizer()
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=1)
    data = Dataset.from_list(arithmetic_examples(24, seed=0))
    cache = cache_teacher_logits(teacher, tokenizer, data, os.path.join(out_dir, "cache"), top_k=16, shard_size=6)
    args = OfflineOnPolicyKDConfig(
        output_dir=os.path.join(out_dir, "run"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer), args, train_dataset=cache, processing_class=tokenizer
    )
    seen = []
    collate = trainer.data_collator.__call__

    def recording(examples):
        seen.append([int(e["cache_index"]) for e in examples])
        return collate(examples)

    trainer.data_collator = recording
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "process_group": dist.is_initialized() and dist.get_world_size(),
        "batches": seen,
        "schedule": trainer.curriculum_sampler.schedule(0).indices.tolist(),
        "final_weight_sum": float(sum(p.detach().double().sum() for p in trainer.model.parameters())),
        "loss": trainer.state.log_history[-1]["train_loss"],
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1])
