"""Evaluation script: ``trl-edge eval --config eval.yaml`` (flags override the YAML).

Measures one checkpoint, in this process (no accelerate launch), in up to three ways: fidelity to the teacher on a
held-out teacher cache, generation quality on held-out prompt/answer data, and benchmarks through
lm-evaluation-harness.
Writes ``metrics.json`` to ``output_dir``: flat ``name -> float`` metrics and an ``info`` block (the model, what ran,
seconds each), for a pipeline to read.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl_edge.model_loading import ModelLoading
from trl_edge.scripts import script_parser

PER_SAMPLE_FILE = "fidelity_per_sample.json"  # each held-out sequence's KL and top-1 agreement, in cache order

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a file, this folder would shadow the `evaluate` package with this very script


@dataclass
class EvalArguments:
    """Arguments of `trl-edge eval`; the model's loading options (revision, dtype, ...) are ModelLoading's flags."""

    model: str = field(default=None, metadata={"help": "Checkpoint to evaluate: a model name or a local path."})
    output_dir: str = field(default=None, metadata={"help": "Where metrics.json (and per-sample records) go."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer name or path (default: the model's)."})
    device: str | None = field(
        default=None, metadata={"help": "Device to evaluate on (default: the best available; not with device_map)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass, generate call, lm-eval batch."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N sequences of the teacher cache and generation set."}
    )
    # fidelity
    teacher_cache: str | None = field(
        default=None, metadata={"help": "Held-out teacher cache: `trl-edge cache` on data the model never trained on."}
    )
    fidelity_chunk_size: int = field(
        default=1024, metadata={"help": "Scored positions projected through the LM head at a time."}
    )
    # generation
    generation_dataset: str | None = field(
        default=None,
        metadata={"help": "Held-out prompts with references: a `save_to_disk` folder or a .jsonl/.json data file."},
    )
    generation_split: str = field(default="test", metadata={"help": "Split of a saved DatasetDict to use."})
    max_new_tokens: int = field(default=256, metadata={"help": "Greedy decoding budget per prompt."})
    reference_column: str | None = field(
        default=None, metadata={"help": "Reference text for ROUGE-L (default: `completion`, else `answer`)."}
    )
    target_column: str | None = field(
        default=None, metadata={"help": "Ground-truth answer for exact match (default: `target` when present)."}
    )
    kind_column: str = field(default="kind", metadata={"help": "Column to break generation metrics down by."})
    # lm-eval
    tasks: list[str] | None = field(
        default=None,
        metadata={
            "help": "lm-eval tasks (`openpangu` = the openPangu-Embedded table: mmlu cmmlu ceval-valid ifeval gsm8k "
            "minerva_math500 drop mbpp humaneval). None: no benchmarks."
        },
    )
    include_path: str | None = field(default=None, metadata={"help": "Folder of local lm-eval task YAMLs."})
    num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples (default: each task's)."})
    limit: float | None = field(
        default=None, metadata={"help": "At most this many examples per task (a fraction when < 1): smoke tests."}
    )
    apply_chat_template: bool = field(
        default=True, metadata={"help": "Prompt lm-eval tasks through the chat template (False for base models)."}
    )
    system_instruction: str | None = field(default=None, metadata={"help": "System prompt for lm-eval tasks."})
    confirm_run_unsafe_code: bool = field(
        default=False, metadata={"help": "Allow tasks that run generated code (mbpp, humaneval): use a sandbox."}
    )

    def __post_init__(self):
        missing = [name for name in ("model", "output_dir") if getattr(self, name) is None]
        if missing:
            raise ValueError(f"`trl-edge eval` needs {', '.join('--' + m for m in missing)}.")
        if not (self.tasks or self.teacher_cache or self.generation_dataset):
            raise ValueError(
                "Nothing to evaluate: give --teacher_cache (fidelity), --generation_dataset (generation quality) "
                "and/or --tasks (lm-eval benchmarks, e.g. `--tasks openpangu`)."
            )


def load_generation_dataset(path: str, split: str = "test"):
    """A ``Dataset`` from a ``save_to_disk`` folder (its ``split`` if it is a DatasetDict) or a JSON(-lines) file."""
    from datasets import Dataset, load_dataset, load_from_disk

    if os.path.isfile(path):
        if not path.endswith((".json", ".jsonl")):
            raise ValueError(f"generation_dataset {path} is not a .json/.jsonl file; save others with save_to_disk.")
        return load_dataset("json", data_files=path, split="train")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"generation_dataset {path} is neither a data file nor a `save_to_disk` folder.")
    dataset = load_from_disk(path)
    if isinstance(dataset, Dataset):
        return dataset
    if split in dataset:
        return dataset[split]
    if len(dataset) == 1:
        return next(iter(dataset.values()))
    raise ValueError(f"The dataset at {path} has no split {split!r} (it has {list(dataset)}): set --generation_split.")


def write_metrics(path: Path, metrics: dict[str, float], info: dict) -> None:
    """``metrics.json``, atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**metrics, "info": info}, indent=2, ensure_ascii=False, allow_nan=True))
    os.replace(tmp, path)


def format_table(metrics: dict[str, float], max_rows: int = 40) -> str:
    rows = [(k, v) for k, v in metrics.items() if not k.endswith("_stderr") and "_stderr/" not in k]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [f"{k:<{width}}  {v:.4f}" if math.isfinite(v) else f"{k:<{width}}  {v}" for k, v in rows[:max_rows]]
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more in metrics.json")
    return "\n".join(lines)


def main(args: EvalArguments, loading: ModelLoading | None = None) -> dict[str, float]:
    import trl_edge
    from trl_edge.devices import detect_device
    from trl_edge.model_loading import load_causal_lm, load_tokenizer

    loading = loading or ModelLoading()
    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = args.device or (detect_device() if loading.device_map is None else None)
    model = load_causal_lm(args.model, **loading.kwargs(), device=device)
    tokenizer = load_tokenizer(
        args.tokenizer or args.model, revision=loading.revision, trust_remote_code=loading.trust_remote_code
    )
    metrics: dict[str, float] = {}
    info = {
        "model": args.model,
        "tokenizer": args.tokenizer or args.model,
        "loading": loading.kwargs(),
        "device": str(device) if device is not None else f"device_map={loading.device_map}",
        "trl_edge_version": trl_edge.__version__,
        "evaluations": {},
    }

    def ran(name: str, t0: float, **details) -> None:
        info["evaluations"][name] = {"seconds": round(time.perf_counter() - t0, 3), **details}

    if args.teacher_cache:
        from trl_edge.evaluation.fidelity import evaluate_fidelity

        t0 = time.perf_counter()
        fidelity = evaluate_fidelity(
            model,
            args.teacher_cache,
            args.batch_size,
            tokenizer=tokenizer,
            chunk_size=args.fidelity_chunk_size,
            max_samples=args.max_samples,
            per_sample=True,
        )
        per_sample = fidelity.pop("fidelity/per_sample")
        (output_dir / PER_SAMPLE_FILE).write_text(json.dumps(per_sample))  # paired comparisons read it
        metrics.update(fidelity)
        ran("fidelity", t0, teacher_cache=args.teacher_cache, per_sample=PER_SAMPLE_FILE)
    if args.generation_dataset:
        from trl_edge.evaluation.generation import evaluate_generation

        t0 = time.perf_counter()
        dataset = load_generation_dataset(args.generation_dataset, args.generation_split)
        metrics.update(
            evaluate_generation(
                model,
                tokenizer,
                dataset,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                reference_column=args.reference_column,
                target_column=args.target_column,
                kind_column=args.kind_column,
                max_samples=args.max_samples,
                predictions_file=output_dir / "generations.jsonl",
            )
        )
        ran("generation", t0, dataset=args.generation_dataset, predictions="generations.jsonl")
    if args.tasks:
        from trl_edge.evaluation.benchmarks import run_lm_eval

        t0 = time.perf_counter()
        limit = args.limit if args.limit is None or args.limit < 1 else int(args.limit)
        metrics.update(
            run_lm_eval(
                model,
                args.tasks,
                tokenizer=tokenizer,
                num_fewshot=args.num_fewshot,
                apply_chat_template=args.apply_chat_template,
                batch_size=args.batch_size,
                limit=limit,
                include_path=args.include_path,
                confirm_run_unsafe_code=args.confirm_run_unsafe_code,
                system_instruction=args.system_instruction,
                output_path=output_dir / "lm_eval_results.json",
            )
        )
        ran("lm_eval", t0, tasks=list(args.tasks), results="lm_eval_results.json")
    info["seconds"] = round(time.perf_counter() - started, 3)
    path = output_dir / "metrics.json"
    write_metrics(path, metrics, info)
    print(format_table(metrics))
    print(f"Metrics written to {path.resolve()}")
    return metrics


def dataclass_types() -> tuple:
    """The dataclasses of this script's config (a pipeline checks its stage's keys against them)."""
    return (EvalArguments, ModelLoading)


def make_parser(prog: str | None = None):
    return script_parser(dataclass_types(), prog)


def run(argv: list[str] | None = None, prog: str | None = None) -> int:
    args, loading = make_parser(prog=prog).parse_args_and_config(argv, fail_with_unknown_args=True)
    main(args, loading)
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
