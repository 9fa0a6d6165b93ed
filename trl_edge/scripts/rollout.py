"""Rollout script: ``trl-edge rollout --config recipe.yaml`` or ``accelerate launch recipes/rollout.py --config ...``.

The current student samples completions of a prompt dataset into a rollout set (``trl_edge.generate_rollouts``);
every accelerate rank samples its own shards, and rerunning the same command resumes an interrupted job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_edge.scripts import script_parser
from trl_edge.scripts.loading import load_dataset_dict


@dataclass
class RolloutArguments:
    """Arguments of `trl-edge rollout`: the policy, the prompts, the sampling and where the rollout set goes."""

    model_name_or_path: str = field(default=None, metadata={"help": "The policy (student) name or path."})
    dataset: str = field(
        default=None,
        metadata={"help": "Prompt dataset with a `prompt` column: hub name, data folder or `save_to_disk` folder."},
    )
    output_dir: str = field(
        default=None, metadata={"help": "Rollout set directory (rerun the same command to resume)."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to sample."})
    max_prompts: int | None = field(default=None, metadata={"help": "Sample only the first N prompts (quick runs)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer name or path (default: the policy's)."})
    num_samples: int = field(default=1, metadata={"help": "Samples per prompt."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest set with this mass."})
    top_k: int | None = field(default=None, metadata={"help": "Keep only the k most likely tokens (None/0: off)."})
    max_new_tokens: int = field(default=256, metadata={"help": "Most tokens per completion (cut ones end `length`)."})
    seed: int = field(default=0, metadata={"help": "Seed of the draw (each shard is seeded from it)."})
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate call (transformers backend)."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per shard (unit of atomic writes and resume)."})
    round: int | None = field(default=None, metadata={"help": "Round of on-policy distillation (provenance)."})
    backend: str = field(
        default="transformers",
        metadata={"help": "Who samples: transformers, or vllm (extra `vllm`).", "choices": ["transformers", "vllm"]},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM backend: GPUs per policy."})
    revision: str | None = field(default=None, metadata={"help": "Policy revision (branch, tag, commit)."})
    dtype: str = field(
        default="auto", metadata={"help": "Policy dtype: auto (bf16 where supported, else fp32), bfloat16, float32."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the policy's own modelling code."})
    attn_implementation: str | None = field(default=None, metadata={"help": "Attention kernel of the policy."})
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Sample on the CPU even with an accelerator present (default: only without)."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing rollout set in output_dir."})

    def __post_init__(self):
        missing = [name for name in ("model_name_or_path", "dataset", "output_dir") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"`trl-edge rollout` needs {', '.join('--' + m for m in missing)}.")


def main(args: RolloutArguments):
    from trl_edge.model_loading import load_tokenizer
    from trl_edge.rollout import generate_rollouts

    dataset = load_dataset_dict(args.dataset, args.dataset_config, split=args.dataset_split)
    if args.dataset_split not in dataset:
        raise ValueError(f"The dataset has no split {args.dataset_split!r} (it has {list(dataset)}).")
    tokenizer = load_tokenizer(
        args.tokenizer or args.model_name_or_path, revision=args.revision, trust_remote_code=args.trust_remote_code
    )
    prompts = dataset[args.dataset_split]
    if args.max_prompts is not None:
        prompts = prompts.select(range(min(args.max_prompts, len(prompts))))
    rollouts = generate_rollouts(
        args.model_name_or_path, tokenizer, prompts, args.output_dir,
        num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size, shard_size=args.shard_size,
        backend=args.backend, round=args.round, dtype=args.dtype, revision=args.revision,
        trust_remote_code=args.trust_remote_code, attn_implementation=args.attn_implementation,
        tensor_parallel_size=args.tensor_parallel_size, use_cpu=args.use_cpu, overwrite=args.overwrite,
    )  # fmt: skip
    from accelerate import PartialState  # already set up by generate_rollouts

    if PartialState().is_main_process:
        print(f"Rollouts written to {rollouts.path.resolve()}: {rollouts!r}")
    return rollouts


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    return (RolloutArguments,)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None):
    (args,) = make_parser().parse_args_and_config(argv, fail_with_unknown_args=True)
    return main(args)


if __name__ == "__main__":
    run()
