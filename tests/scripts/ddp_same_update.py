"""Train 2 optimizer steps over global batches of 4 (2 accumulation steps each) with 1 or 2 processes.

Usage: [accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml] ddp_same_update.py OUT_DIR {sft,kd}
With 2 processes each rank takes half of every global batch; the update must be the one a single process makes
over the whole batch. The SFT run scores difficulty with the reference model, each rank scoring half the dataset.
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from trl_edge import (  # noqa: E402
    CurriculumSFTConfig,
    CurriculumSFTTrainer,
    OfflineOnPolicyKDConfig,
    OfflineOnPolicyKDTrainer,
    cache_teacher_logits,
)
from trl_edge.curriculum import scorers  # noqa: E402
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402


def main(out_dir, kind):
    tokenizer = build_tokenizer()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    data = Dataset.from_list(arithmetic_examples(24, seed=0))
    common = dict(
        output_dir=os.path.join(out_dir, "run"), per_device_train_batch_size=4 // (2 * world),
        gradient_accumulation_steps=2, max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
        lr_scheduler_type="constant", save_strategy="no", report_to=[], bf16=False, use_cpu=True, disable_tqdm=True,
        activation_checkpointing=False, max_length=128, seed=0,
    )  # fmt: skip
    scored = []
    original = scorers.sequence_nll
    scorers.sequence_nll = lambda model, ids, *a, **k: scored.append(len(ids)) or original(model, ids, *a, **k)
    if kind == "sft":
        args = CurriculumSFTConfig(**common, curriculum_difficulty="reference", curriculum_pacing="root")
        trainer = CurriculumSFTTrainer(
            build_tiny_model(tokenizer), args, train_dataset=data, processing_class=tokenizer
        )
    else:
        cache = cache_teacher_logits(build_tiny_model(tokenizer, arch="qwen2", seed=1), tokenizer, data,
                                     os.path.join(out_dir, "cache"), top_k=16, shard_size=8)  # fmt: skip
        args = OfflineOnPolicyKDConfig(**common, kd_weight=0.7, curriculum_pacing="linear")
        trainer = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), args, train_dataset=cache,
                                           processing_class=tokenizer)  # fmt: skip
    trainer.train()
    rank = trainer.accelerator.process_index
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"scored": sum(scored), "difficulty": trainer.curriculum_difficulty.tolist()}, f)
    if rank == 0:
        state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, os.path.join(out_dir, "weights.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
