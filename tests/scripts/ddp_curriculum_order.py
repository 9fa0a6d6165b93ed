"""Run under `accelerate launch` with 2 processes: train a few curriculum steps, write what each rank saw.

Usage: accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/scripts/ddp_curriculum_order.py OUT_DIR
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import torch.distributed as dist  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402


class RecordingCollator:
    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        self.batches.append([list(e["input_ids"]) for e in examples])
        return self.collator(examples)


def main(out_dir):
    tokenizer = build_tokenizer()
    args = CurriculumSFTConfig(
        output_dir=os.path.join(out_dir, "run"),
        per_device_train_batch_size=2,
        max_steps=6,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        bf16=False,
        use_cpu="--no-use-cpu" not in sys.argv,
        disable_tqdm=True,
        max_length=128,
        curriculum_stage_column="stage",
        curriculum_stages=["reasoning", "direct"],
        curriculum_difficulty="column",
        curriculum_pacing="root",
    )
    trainer = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        args,
        train_dataset=Dataset.from_list(arithmetic_examples(32, seed=0)),
        processing_class=tokenizer,
    )
    trainer.data_collator = RecordingCollator(trainer.data_collator)
    trainer.train()
    rank = trainer.accelerator.process_index
    record = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "process_group": dist.is_initialized() and dist.get_world_size(),
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "batches": trainer.data_collator.batches,
        "schedule": [
            list(trainer.train_dataset[int(i)]["input_ids"]) for i in trainer.curriculum_sampler.schedule(0).indices
        ],
        "final_weight_sum": float(sum(p.detach().double().sum() for p in trainer.model.parameters())),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)


if __name__ == "__main__":
    main(sys.argv[1])
