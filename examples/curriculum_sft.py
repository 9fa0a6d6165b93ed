"""Turn an existing TRL SFT script into a curriculum one: two imports and a few config fields change.

    python examples/curriculum_sft.py                      # tiny model, offline, on CPU
    python examples/curriculum_sft.py --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --use_cpu false

The TRL script this starts from:

    from trl import SFTConfig, SFTTrainer
    args = SFTConfig(output_dir="out", max_steps=40)
    trainer = SFTTrainer(model, args=args, train_dataset=dataset)
    trainer.train()
"""

import argparse

from datasets import Dataset

from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer  # was: from trl import SFTConfig, SFTTrainer
from trl_edge.testing import arithmetic_examples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default="recipes/assets/tiny-llama")
    parser.add_argument("--output_dir", default="outputs/example-curriculum-sft")
    parser.add_argument("--max_steps", type=int, default=40)
    parser.add_argument("--use_cpu", default="true")
    cli = parser.parse_args()
    use_cpu = cli.use_cpu.lower() == "true"

    # Any TRL dataset format works; a `stage` column and a `difficulty` column drive the curriculum.
    dataset = Dataset.from_list(arithmetic_examples(256, seed=0))

    args = CurriculumSFTConfig(  # was: SFTConfig(...), every SFTConfig field still applies
        output_dir=cli.output_dir,
        max_steps=cli.max_steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=10,
        report_to="none",
        use_cpu=use_cpu,
        bf16=not use_cpu,
        # The curriculum: reasoning chains first, then direct answers (3:1), easy to hard inside each stage.
        curriculum_stage_column="stage",
        curriculum_stages=["reasoning", "direct"],
        curriculum_stage_shares=[0.75, 0.25],
        curriculum_difficulty="column",
        curriculum_pacing="root",
    )
    trainer = CurriculumSFTTrainer(cli.model_name_or_path, args=args, train_dataset=dataset)  # was: SFTTrainer
    trainer.train()
    trainer.save_model()
    print(f"Model saved to {args.output_dir}")


if __name__ == "__main__":
    main()
