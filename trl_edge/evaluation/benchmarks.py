"""Benchmarks through lm-evaluation-harness (``pip install trl-edge[eval]``), the paper's table by default.

The model is loaded once by :func:`trl_edge.model_loading.load_causal_lm` (revision, dtype, custom code, device map)
and handed to lm-eval's ``HFLM`` as an object, so lm-eval never loads it a second way. Results come back flat,
``lm_eval/<task>/<metric>`` (``lm_eval/gsm8k/exact_match/strict-match`` when lm-eval applied a named filter).
Local tasks (a folder of task YAMLs with ``dataset_path: json``) run offline through ``include_path``.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..model_loading import load_causal_lm, load_tokenizer, model_name

__all__ = ["OPENPANGU_BENCHMARKS", "DEFAULT_TASKS", "run_lm_eval", "flatten_lm_eval_results"]

# The openPangu-Embedded-1B table -> (lm-eval task, the metric the table reports). CLUEWSC has no lm-eval task.
OPENPANGU_BENCHMARKS = {
    "MMLU": ("mmlu", "acc"),
    "CMMLU": ("cmmlu", "acc"),
    "C-Eval": ("ceval-valid", "acc"),
    "IF-Eval": ("ifeval", "prompt_level_strict_acc"),
    "GSM8K": ("gsm8k", "exact_match"),
    "MATH-500": ("minerva_math500", "math_verify"),
    "DROP": ("drop", "f1"),
    "MBPP": ("mbpp", "pass_at_1"),
    "HumanEval": ("humaneval", "pass@1"),
}
DEFAULT_TASKS = tuple(task for task, _ in OPENPANGU_BENCHMARKS.values())
TASK_ALIASES = {"openpangu": DEFAULT_TASKS}  # `--tasks openpangu` = the whole table
# Tasks that execute the model's code (lm-eval refuses them without confirm_run_unsafe_code=True).
UNSAFE_CODE_TASKS = ("mbpp", "humaneval")
# Tasks whose scoring needs lm-eval's extras: task prefix -> (modules, extra).
TASK_EXTRAS = {
    "ifeval": (("langdetect", "immutabledict"), "ifeval"),
    "minerva_math": (("sympy", "math_verify"), "math"),
}


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(
            "Benchmarks run through lm-evaluation-harness, which is not installed: `pip install trl-edge[eval]` "
            '(or `pip install "lm-eval>=0.4,<0.5"`).'
        ) from err
    return lm_eval


def _matches(task: str, prefix: str) -> bool:
    return task == prefix or task.startswith(prefix + "_")


def _check_tasks(tasks: list[str], confirm_run_unsafe_code: bool) -> None:
    unsafe = [t for t in tasks if any(_matches(t, u) for u in UNSAFE_CODE_TASKS)]
    if unsafe and not confirm_run_unsafe_code:
        raise ValueError(
            f"{', '.join(unsafe)} run the code the model writes. Run them in a sandbox with "
            "confirm_run_unsafe_code=True (`--confirm_run_unsafe_code`), or leave them out of the task list."
        )
    for task in tasks:
        for prefix, (modules, extra) in TASK_EXTRAS.items():
            missing = [m for m in modules if _matches(task, prefix) and importlib.util.find_spec(m) is None]
            if missing:
                raise ImportError(
                    f'lm-eval\'s {task} needs {", ".join(missing)}: `pip install "lm-eval[{extra}]>=0.4,<0.5"`.'
                )


def _task_manager(tasks: list[str], include_path):
    """A TaskManager that knows ``tasks``; lm-eval's own index (~15 s to build) only when they need it."""
    from lm_eval.tasks import TaskManager

    paths = None
    if include_path is not None:
        paths = [include_path] if isinstance(include_path, str | os.PathLike) else list(include_path)
        paths = [str(Path(p).resolve()) for p in paths]
        for path in paths:
            if not os.path.exists(path):
                raise FileNotFoundError(f"include_path {path} does not exist (a folder of lm-eval task YAMLs).")
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=paths)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hints = []
        for task in unknown:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hints.append(f"{task} (did you mean {', '.join(close)}?)" if close else task)
        where = f" nor in {', '.join(paths)}" if paths else ""
        raise ValueError(
            f"lm-eval has no task {'; '.join(hints)}{where}. List them with `lm-eval ls tasks`; local tasks need "
            "include_path (`--include_path DIR`)."
        )
    return manager


def _leaves(name: str, table: dict, groups: dict) -> list[str]:
    """``name`` if lm-eval reported metrics for it, else its subtasks' (a group without aggregated metrics)."""
    if any("," in key for key in table.get(name, {})):
        return [name]
    return [leaf for sub in groups.get(name, []) for leaf in _leaves(sub, table, groups)]


def flatten_lm_eval_results(results: dict, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """``lm_eval/<task>/<metric>`` floats from ``simple_evaluate``'s results (keyed ``"metric,filter"``).

    Only ``tasks`` are reported (a group by its aggregate, or by its subtasks when it has none); all of lm-eval's
    entries when ``tasks`` is None. Non-numeric values (``"N/A"`` standard errors) are left out.
    """
    table, groups = results.get("results", {}), results.get("group_subtasks", {})
    names = list(table) if tasks is None else [leaf for t in tasks for leaf in _leaves(t, table, groups)]
    counts = results.get("n-samples", {})
    flat = {}
    for task in dict.fromkeys(names):
        for key, value in table.get(task, {}).items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            flat[f"lm_eval/{task}/{metric if filter_name == 'none' else f'{metric}/{filter_name}'}"] = float(value)
        if isinstance(counts.get(task), dict) and "effective" in counts[task]:
            flat[f"lm_eval/{task}/num_samples"] = float(counts[task]["effective"])
    return flat


def run_lm_eval(
    model,
    tasks: Sequence[str] | None = None,
    *,
    tokenizer=None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = True,
    batch_size: int | str = 8,
    limit: int | float | None = None,
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    device: str | None = None,
    confirm_run_unsafe_code: bool = False,
    system_instruction: str | None = None,
    gen_kwargs: dict | None = None,
    output_path: str | os.PathLike | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | None = None,
    attn_implementation: str | None = None,
) -> dict[str, float]:
    """Run lm-evaluation-harness tasks on a checkpoint and return ``lm_eval/<task>/<metric>`` floats.

    Args:
        model: a causal LM, or its name or path (loaded with ``load_causal_lm`` and the loading options below).
        tasks: lm-eval task or group names; default :data:`DEFAULT_TASKS`, the openPangu-Embedded table (also
            what the name ``openpangu`` stands for).
        tokenizer: a tokenizer or its name/path (default: the model's).
        num_fewshot: few-shot examples per prompt (default: each task's own).
        apply_chat_template: format prompts with the tokenizer's chat template (default True: a chat model is
            measured as it is used; few-shot examples then become turns). False for base models.
        batch_size: an int, or ``"auto"``.
        limit: at most this many examples per task (a fraction when < 1): smoke tests.
        include_path: folder(s) of local task YAMLs (e.g. ``dataset_path: json`` + ``dataset_kwargs: {data_files:
            ...}``; relative data files resolve against the working directory, as in lm-eval).
        device: where a model given by name is loaded (default: the best available device).
        confirm_run_unsafe_code: allow tasks that execute generated code (MBPP, HumanEval); run them in a sandbox.
        system_instruction, gen_kwargs: passed to lm-eval as they are.
        output_path: also write lm-eval's full results (configs, versions, every sample) there as JSON.
        revision, dtype, trust_remote_code, device_map, attn_implementation: how a model given by name is loaded
            (:class:`trl_edge.model_loading.ModelLoading`).
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    tasks = [task for name in (DEFAULT_TASKS if tasks is None else tasks) for task in TASK_ALIASES.get(name, [name])]
    if not tasks:
        raise ValueError("No lm-eval tasks to run: name at least one (default: the openPangu-Embedded table).")
    _check_tasks(tasks, confirm_run_unsafe_code)
    if confirm_run_unsafe_code:
        os.environ.setdefault("HF_ALLOW_CODE_EVAL", "1")  # `evaluate`'s code_eval asks for it too
    task_manager = _task_manager(tasks, include_path)

    if device is None and device_map is None and isinstance(model, str | os.PathLike):
        from ..devices import detect_device

        device = detect_device()
    loaded = load_causal_lm(
        model, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code, device_map=device_map,
        attn_implementation=attn_implementation, device=device,
    )  # fmt: skip
    if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
        source = tokenizer if tokenizer is not None else model if isinstance(model, str | os.PathLike) else None
        source = source if source is not None else model_name(loaded)
        tokenizer = load_tokenizer(source, revision=revision, trust_remote_code=trust_remote_code)
    if apply_chat_template and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"apply_chat_template is on but the tokenizer of {model_name(loaded)} has no chat template. For a base "
            "model, turn it off (apply_chat_template=False, `--apply_chat_template false`)."
        )
    lm = HFLM(pretrained=loaded, tokenizer=tokenizer, batch_size=batch_size)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=num_fewshot,
        limit=limit,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template),
        system_instruction=system_instruction,
        gen_kwargs=gen_kwargs,
        task_manager=task_manager,
        log_samples=output_path is not None,
        confirm_run_unsafe_code=confirm_run_unsafe_code,
    )
    if output_path is not None:
        from lm_eval.utils import handle_non_serializable

        path = Path(output_path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
        os.replace(tmp, path)
    return flatten_lm_eval_results(results, tasks)
