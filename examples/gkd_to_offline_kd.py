"""Turn a TRL GKDTrainer script into offline on-policy distillation: cache the teacher once, then train.

    python examples/gkd_to_offline_kd.py             # tiny models, offline, CPU, about a minute

The TRL script this starts from (the teacher sits in memory and runs at every step):

    from trl.experimental.gkd import GKDConfig, GKDTrainer
    args = GKDConfig(output_dir="out", lmbda=1.0, beta=0.0)        # lmbda=1: on-policy student samples
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=prompts)
    trainer.train()

Offline, the three passes are separate: the student samples its answers once per round, the teacher scores them
once (its top-k per token goes to disk), and the student trains on the cache with no teacher loaded.
"""

import argparse

import torch
from datasets import Dataset

from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer, cache_teacher_logits
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer


def student_rollouts(student, tokenizer, prompts, max_new_tokens=24):
    """On-policy data: the student's own completions of the prompts (sampled, temperature 1)."""
    rows = []
    student.eval()
    for prompt in prompts:
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = student.generate(
                **ids, do_sample=True, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
            )
        completion = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]})
    return Dataset.from_list(rows)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", default="outputs/example-offline-kd")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--num_prompts", type=int, default=32)
    cli = parser.parse_args()
    torch.manual_seed(0)

    tokenizer = build_tokenizer()
    teacher = build_tiny_model(tokenizer, arch="qwen2", hidden_size=64, seed=1)  # was: GKDTrainer(teacher_model=...)
    student = build_tiny_model(tokenizer, hidden_size=32, seed=2)
    prompts = [row["prompt"] for row in arithmetic_examples(cli.num_prompts, seed=0)]

    # 1. The student samples its own answers (once per round).
    rollouts = student_rollouts(student, tokenizer, prompts)
    # 2. The teacher scores them once; its top-k distributions go to disk.
    cache = cache_teacher_logits(teacher, tokenizer, rollouts, f"{cli.output_dir}/teacher-cache", top_k=32)
    del teacher  # never needed again
    # 3. The student trains on the cache: forward KL (GKD's beta=0) mixed with CE.
    args = OfflineOnPolicyKDConfig(
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=5,
        report_to="none",
        use_cpu=True,
        bf16=False,
        kd_weight=0.9,
        divergence="forward_kl",
    )
    trainer = OfflineOnPolicyKDTrainer(student, args=args, train_dataset=cache, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    print(f"Model saved to {args.output_dir}")


if __name__ == "__main__":
    main()
