"""Teacher caching script: ``trl-edge cache --teacher NAME --dataset DATA --output_dir DIR --top_k 64``.

Also ``accelerate launch recipes/cache_teacher.py --config recipe.yaml``: every rank scores its own shards and
together they write one cache. Rerunning the same command resumes an interrupted cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl_edge.scripts import script_parser
from trl_edge.scripts.loading import load_dataset_dict


@dataclass
class CacheTeacherArguments:
    """Arguments of `trl-edge cache`. The tokenization fields have SFTConfig's names and defaults: set them as the
    KD run will, so the cache holds exactly the sequences it trains on."""

    teacher: str = field(
        default=None, metadata={"help": "Teacher model name or path (shares the student's tokenizer)."}
    )
    dataset: str = field(
        default=None,
        metadata={
            "help": "What to score: a rollout set (`trl-edge rollout` output: its exact token ids), or a dataset (hub "
            "name, local folder of data files, or `save_to_disk` folder) tokenized as SFT does."
        },
    )
    output_dir: str = field(default=None, metadata={"help": "Cache directory (rerun the same command to resume)."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to score."})
    teacher_revision: str | None = field(default=None, metadata={"help": "Teacher revision (branch, tag, commit)."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer name or path (default: the teacher's)."})
    top_k: int = field(default=64, metadata={"help": "Teacher next-token candidates kept per position."})
    encoding: str = field(
        default="compact",
        metadata={
            "help": "`compact` (small, bounded error) or `lossless` (bit-exact).",
            "choices": ["compact", "lossless"],
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per teacher forward pass."})
    shard_size: int = field(default=1024, metadata={"help": "Samples per shard (unit of atomic writes and resume)."})
    dtype: str = field(
        default="auto",
        metadata={"help": "Teacher dtype: auto (bf16 where supported, else fp32), bfloat16, float16, float32."},
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the teacher's own modelling code (e.g. openPangu); read it first."}
    )
    device_map: str | None = field(
        default=None,
        metadata={"help": "`auto` spreads a teacher too large for one device over all visible ones (one process)."},
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Teacher attention kernel: eager, sdpa, flash_attention_2."}
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM backend: GPUs per teacher."})
    overwrite: bool = field(default=False, metadata={"help": "Discard an existing cache in output_dir."})
    backend: str = field(
        default="transformers",
        metadata={
            "help": "Who runs the teacher: transformers, or vllm (extra `vllm`).",
            "choices": ["transformers", "vllm"],
        },
    )
    use_cpu: bool | None = field(
        default=None, metadata={"help": "Score on the CPU even with an accelerator present (default: only without)."}
    )
    max_length: int | None = field(default=1024, metadata={"help": "As SFTConfig.max_length."})
    truncation_mode: str = field(default="keep_start", metadata={"help": "As SFTConfig.truncation_mode."})
    completion_only_loss: bool | None = field(default=None, metadata={"help": "As SFTConfig.completion_only_loss."})
    assistant_only_loss: bool = field(default=False, metadata={"help": "As SFTConfig.assistant_only_loss."})
    dataset_text_field: str = field(default="text", metadata={"help": "As SFTConfig.dataset_text_field."})

    def __post_init__(self):
        missing = [name for name in ("teacher", "dataset", "output_dir") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"`trl-edge cache` needs {', '.join('--' + m for m in missing)}.")


def main(args: CacheTeacherArguments):
    from trl_edge.cache.tokenize import SFTTokenization
    from trl_edge.cache.writer import cache_teacher_logits
    from trl_edge.model_loading import load_tokenizer
    from trl_edge.rollout import RolloutSet

    if RolloutSet.is_rollout_set(args.dataset):
        data = RolloutSet(args.dataset)
    else:
        dataset = load_dataset_dict(args.dataset, args.dataset_config, split=args.dataset_split)
        if args.dataset_split not in dataset:
            raise ValueError(f"The dataset has no split {args.dataset_split!r} (it has {list(dataset)}).")
        data = dataset[args.dataset_split]
    tokenizer = load_tokenizer(
        args.tokenizer or args.teacher, revision=args.teacher_revision, trust_remote_code=args.trust_remote_code
    )
    cache = cache_teacher_logits(
        args.teacher,
        tokenizer,
        data,
        args.output_dir,
        top_k=args.top_k,
        encoding=args.encoding,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        tokenization=SFTTokenization.from_config(args),
        dtype=args.dtype,
        teacher_revision=args.teacher_revision,
        trust_remote_code=args.trust_remote_code,
        device_map=args.device_map,
        attn_implementation=args.attn_implementation,
        tensor_parallel_size=args.tensor_parallel_size,
        overwrite=args.overwrite,
        use_cpu=args.use_cpu,
        backend=args.backend,
    )
    from accelerate import PartialState  # already set up by the writer

    if PartialState().is_main_process:
        print(f"Teacher cache written to {cache.path.resolve()}: {cache!r}")
    return cache


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    return (CacheTeacherArguments,)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None):
    (args,) = make_parser().parse_args_and_config(argv, fail_with_unknown_args=True)
    return main(args)


if __name__ == "__main__":
    run()
