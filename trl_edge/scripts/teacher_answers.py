"""Teacher answers: ``trl-edge teacher-answers --config recipe.yaml`` (also a pipeline stage, ``teacher_answers``).

The teacher writes the SFT answers for a prompt set, so that the SFT data and the KD scores come from one teacher
(the "teacher consistency" offline on-policy distillation needs). The answers are sampled as a rollout set
(``rollouts_dir``: token-exact, cacheable as is) and written as a prompt-completion dataset (``output_dir``, a
``save_to_disk`` folder in the prompts' own format, with their other columns) for ``trl-edge sft``.

Each answer row also carries the teacher's exact tokens (``input_ids``: prompt + answer as sampled, and
``completion_mask``), so SFT trains on the very tokens the KD cache scores, and an answer cut at
``max_new_tokens`` gets no end-of-turn appended (re-rendering its text through the chat template would close it,
teaching the student to stop mid-answer). Cut answers are dropped by default (``truncated_answers``).
``teacher_answers.json`` next to the data records the teacher's identity and the answers' lengths: choose
``max_new_tokens`` so that they end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from trl_edge.scripts import script_parser
from trl_edge.scripts.loading import load_dataset_dict

TRUNCATED_ANSWERS = ("drop", "keep")
RECORD_FILE = "teacher_answers.json"


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
    truncated_answers: str = field(
        default="drop",
        metadata={
            "help": "Answers cut at max_new_tokens: `drop` them, or `keep` them as sampled (token-exact, no "
            "end-of-turn: SFT does not learn to stop there).",
            "choices": list(TRUNCATED_ANSWERS),
        },
    )
    keep_truncated: bool | None = field(
        default=None, metadata={"help": "Deprecated: `truncated_answers: keep`."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the draw."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per rollout shard."})
    backend: str = field(default="transformers", metadata={"help": "transformers or vllm."})
    dtype: str = field(default="auto", metadata={"help": "Teacher dtype."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the teacher's own modelling code."})
    use_cpu: bool | None = field(default=None, metadata={"help": "Generate on the CPU."})

    def __post_init__(self):
        if self.keep_truncated is not None:
            self.truncated_answers = "keep" if self.keep_truncated else "drop"
        if self.truncated_answers not in TRUNCATED_ANSWERS:
            raise ValueError(
                f"`truncated_answers` must be one of {TRUNCATED_ANSWERS}, got {self.truncated_answers!r}."
            )
        missing = [name for name in ("model_name_or_path", "dataset", "output_dir") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"`trl-edge teacher-answers` needs {', '.join('--' + m for m in missing)}.")


def answers_dataset(rollouts, prompts, tokenizer, keep_truncated: bool = False):
    """The rollout set as prompt-completion rows in the prompts' own format (messages or text), each with the
    teacher's exact tokens: ``input_ids`` (prompt + answer, as sampled) and ``completion_mask``."""
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
        row["input_ids"] = list(sample["prompt_ids"]) + list(sample["completion_ids"])
        row["completion_mask"] = [0] * len(sample["prompt_ids"]) + [1] * len(sample["completion_ids"])
        rows.append(row)
    if not rows:
        raise ValueError("Every teacher answer was cut at max_new_tokens: raise `max_new_tokens`.")
    return Dataset.from_list(rows)


def answer_lengths(rollouts, max_new_tokens: int) -> dict:
    """How long the teacher's answers are, in tokens, and how many were cut at ``max_new_tokens``."""
    import numpy as np

    rows = rollouts.to_dataset()
    lengths = np.asarray([len(c) for c in rows["completion_ids"]])
    cut = np.asarray([r == "length" for r in rows["finish_reason"]])
    return {
        "answers": int(len(lengths)), "max_new_tokens": int(max_new_tokens), "cut": int(cut.sum()),
        "cut_share": float(cut.mean()) if len(cut) else 0.0, "mean": float(lengths.mean()),
        "p50": float(np.percentile(lengths, 50)), "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max()),
    }  # fmt: skip


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
        dataset = answers_dataset(rollouts, prompts, tokenizer, args.truncated_answers == "keep")
        lengths = answer_lengths(rollouts, args.max_new_tokens)
        parent = os.path.dirname(os.path.abspath(args.output_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=".answers-")
        dataset.save_to_disk(tmp)
        record = {"teacher": rollouts.metadata.policy_identity, "lengths": lengths,
                  "truncated_answers": args.truncated_answers, "rows": len(dataset)}  # fmt: skip
        with open(os.path.join(tmp, RECORD_FILE), "w") as f:
            json.dump(record, f, indent=2)
        if os.path.isdir(args.output_dir):
            shutil.rmtree(args.output_dir)
        os.replace(tmp, args.output_dir)  # the dataset appears whole or not at all
        dropped = len(rollouts) - len(dataset)
        print(f"Teacher answers written to {os.path.abspath(args.output_dir)}: {len(dataset)} answers"
              f"{f', {dropped} cut at max_new_tokens dropped' if dropped else ''}; lengths (tokens) p50 "
              f"{lengths['p50']:.0f}, p95 {lengths['p95']:.0f}, max {lengths['max']}; {lengths['cut_share']:.0%} cut "
              f"at max_new_tokens={args.max_new_tokens}")  # fmt: skip
        if lengths["cut_share"] > 0.05:
            print(f"Warning: {lengths['cut_share']:.0%} of the teacher's answers are cut at max_new_tokens="
                  f"{args.max_new_tokens}: raise it, or ask the prompts for shorter answers.")  # fmt: skip
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
