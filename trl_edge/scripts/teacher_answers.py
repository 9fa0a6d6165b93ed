"""Teacher answers: ``trl-edge teacher-answers --config recipe.yaml`` (also a pipeline stage, ``teacher_answers``).

The teacher writes the SFT answers for a prompt set, so that the SFT data and the KD scores come from one teacher
(the "teacher consistency" offline on-policy distillation needs). The answers are sampled as a rollout set
(``rollouts_dir``: token-exact, cacheable as is) and written as a prompt-completion dataset (``output_dir``, a
``save_to_disk`` folder in the prompts' own format, with their other columns) for ``trl-edge sft``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field

from trl_edge.scripts import script_parser
from trl_edge.scripts.loading import load_dataset_dict


@dataclass
class TeacherAnswersArguments:
    """Arguments of `trl-edge teacher-answers`."""

    model_name_or_path: str = field(default=None, metadata={"help": "The teacher that answers."})
    dataset: str = field(default=None, metadata={"help": "Prompt dataset (a `prompt` column, any TRL format)."})
    output_dir: str = field(default=None, metadata={"help": "Where the prompt-completion dataset goes."})
    rollouts_dir: str | None = field(
        default=None, metadata={"help": "Where the answers' rollout set goes (default: OUTPUT_DIR-rollouts)."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of the prompt dataset."})
    max_prompts: int | None = field(default=None, metadata={"help": "Answer only the first N prompts (quick runs)."})
    temperature: float = field(default=0.0, metadata={"help": "Sampling temperature (0: greedy, the default)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens per answer."})
    keep_truncated: bool = field(
        default=False, metadata={"help": "Keep answers cut at max_new_tokens (by default they are dropped)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the draw."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per rollout shard."})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm."})
    dtype: str = field(default="auto", metadata={"help": "Teacher dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the teacher's own modelling code."})
    use_cpu: bool | None = field(default=None, metadata={"help": "Generate on the CPU."})

    def __post_init__(self):
        missing = [name for name in ("model_name_or_path", "dataset", "output_dir") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"`trl-edge teacher-answers` needs {', '.join('--' + m for m in missing)}.")


def answers_dataset(rollouts, prompts, tokenizer, keep_truncated: bool = False):
    """The rollout set as prompt-completion rows in the prompts' own format (messages or text)."""
    from datasets import Dataset
    from trl.data_utils import is_conversational

    rows = []
    for sample in rollouts.to_dataset():
        if sample["finish_reason"] == "length" and not keep_truncated:
            continue
        row = dict(prompts[int(sample["prompt_index"])])
        text = tokenizer.decode(sample["completion_ids"], skip_special_tokens=True).strip()
        conversational = is_conversational(row)
        row["completion"] = [{"role": "assistant", "content": text}] if conversational else f" {text}"
        row["finish_reason"] = sample["finish_reason"]
        rows.append(row)
    if not rows:
        raise ValueError("Every teacher answer was cut at max_new_tokens: raise `max_new_tokens`.")
    return Dataset.from_list(rows)


def main(args: TeacherAnswersArguments):
    from accelerate import PartialState

    from trl_edge.model_loading import load_tokenizer
    from trl_edge.rollout import generate_rollouts

    prompts = load_dataset_dict(args.dataset, split=args.dataset_split)[args.dataset_split]
    if args.max_prompts is not None:
        prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    rollouts = generate_rollouts(
        args.model_name_or_path, tokenizer, prompts, args.rollouts_dir or f"{args.output_dir.rstrip('/')}-rollouts",
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.batch_size, shard_size=args.shard_size, backend=args.backend, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, use_cpu=args.use_cpu,
    )  # fmt: skip
    state = PartialState()
    if state.is_main_process:
        dataset = answers_dataset(rollouts, prompts, tokenizer, args.keep_truncated)
        parent = os.path.dirname(os.path.abspath(args.output_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".answers-")
        dataset.save_to_disk(tmp)
        if os.path.isdir(args.output_dir):
            shutil.rmtree(args.output_dir)
        os.replace(tmp, args.output_dir)  # the dataset appears whole or not at all
        dropped = len(rollouts) - len(dataset)
        print(f"Teacher answers written to {os.path.abspath(args.output_dir)}: {len(dataset)} answers"
              f"{f', {dropped} cut at max_new_tokens dropped' if dropped else ''}")  # fmt: skip
    state.wait_for_everyone()


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    return (TeacherAnswersArguments,)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None):
    (args,) = make_parser().parse_args_and_config(argv, fail_with_unknown_args=True)
    return main(args)


if __name__ == "__main__":
    run()
