"""Turn a TRL GKDTrainer script into offline on-policy distillation: sample once, cache the teacher once, train.

    python examples/gkd_to_offline_kd.py             # tiny models, offline, CPU, about a minute

The TRL script this starts from (the teacher sits in memory and runs at every step):

    from trl.experimental.gkd import GKDConfig, GKDTrainer
    args = GKDConfig(output_dir="out", lmbda=1.0, beta=0.0)        # lmbda=1: on-policy student samples
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=prompts)
    trainer.train()

Offline, the three passes are separate: the student samples its answers once per round (token-exact, resumable:
`generate_rollouts`), the teacher scores exactly those tokens once (its top-k per token goes to disk), and the student
trains on the cache with no teacher loaded. A second round samples afresh from the improved student and mixes the
first round's cache back in.
"""

import argparse

import torch
from datasets import Dataset

from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer, cache_teacher_logits, generate_rollouts
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", default="outputs/example-offline-kd")
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--num_prompts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    cli = parser.parse_args()
    torch.manual_seed(0)

    tokenizer = build_tokenizer()
    teacher = build_tiny_model(tokenizer, arch="qwen2", hidden_size=64, seed=1)  # was: GKDTrainer(teacher_model=...)
    student = build_tiny_model(tokenizer, hidden_size=32, seed=2)
    prompts = Dataset.from_list([{"prompt": r["prompt"]} for r in arithmetic_examples(cli.num_prompts, seed=0)])

    caches = []
    for round_ in range(1, cli.rounds + 1):
        # 1. The current student samples its own answers: the exact token ids, with their log-probs and provenance.
        rollouts = generate_rollouts(
            student, tokenizer, prompts, f"{cli.output_dir}/round{round_}/rollouts", num_samples=2, temperature=1.0,
            max_new_tokens=24, seed=round_, round=round_, use_cpu=True,
        )  # fmt: skip
        # 2. The teacher scores exactly those tokens once; its top-k distributions go to disk.
        caches.append(cache_teacher_logits(teacher, tokenizer, rollouts, f"{cli.output_dir}/round{round_}/cache",
                                           top_k=32, use_cpu=True))  # fmt: skip
        # 3. The student trains on this round's cache (and the last round's): forward KL (GKD's beta=0) with CE.
        args = OfflineOnPolicyKDConfig(
            output_dir=f"{cli.output_dir}/round{round_}/student",
            max_steps=cli.max_steps,
            per_device_train_batch_size=8,
            learning_rate=1e-3,
            logging_steps=5,
            report_to="none",
            use_cpu=True,
            bf16=False,
            kd_weight=0.9,
            divergence="forward_kl",
            teacher_cache_weights=[0.7, 0.3] if len(caches) > 1 else None,
        )
        trainer = OfflineOnPolicyKDTrainer(student, args=args, train_dataset=caches[-2:][::-1],
                                           processing_class=tokenizer)  # fmt: skip
        trainer.train()
        trainer.save_model()
        print(f"Round {round_}: model saved to {args.output_dir}")


if __name__ == "__main__":
    main()
