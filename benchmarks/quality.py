"""Does our distillation beat plain SFT and TRL's distillation trainers, on a real model, at equal optimizer steps?

    python benchmarks/quality.py                               # every row, defaults below: ~1 h on 2 CPU cores
    python benchmarks/quality.py --arms trl_sft ours_recipe    # some rows
    python benchmarks/quality.py --quick                       # few steps and prompts: does it run (~6 min)

The teacher is SmolLM2-135M-Instruct (``embedded:smollm2-135m-instruct``); the student its depth-pruned copy
(``make_student``, ``--student_layers`` of 30, evenly spaced). The data is the quickstart's prompt sets
(``recipes/quickstart/data``: sums, capitals, comparisons, next numbers, opposites, open questions; held out: new
questions of those kinds plus subtraction and colours, never trained on). The teacher writes the answers once
(greedy), so every row learns from one teacher. Every row starts from the same pruned student and takes
``--steps`` optimizer steps of ``--batch_size`` sequences at ``--learning_rate`` (cosine, 10% warm-up):

1. ``trl_sft``: TRL ``SFTTrainer`` on the teacher's answers;
2. ``curriculum_sft``: ours, reasoning answers first, then direct ones, easy to hard;
3. ``trl_gkd``: TRL ``GKDTrainer``, ``lmbda=0`` (the teacher's answers), its default JSD (``beta=0.5``), the teacher
   live;
4. ``trl_distillation``: TRL's ``DistillationTrainer``: the student samples at every step, the teacher scores live
   (reverse KL, its default);
5. ``ours_offline``: ``OfflineOnPolicyKDTrainer`` on a cache of the teacher's answers (JSD, ``beta=0.5``);
6. ``ours_recipe`` (forward KL), ``ours_recipe_reverse`` and ``ours_recipe_jsd`` (the quickstart's KD settings): SFT
   for ``--sft_steps`` (``--recipe_sft``: plain, or curriculum; one warm-up shared by the three rows), then
   ``--rounds`` rounds of offline on-policy KD: the student samples the training prompts, the teacher scores those
   tokens once, the student trains on that cache mixed with the teacher-answer cache (``--answer_share``).

Measured on the held-out split, for every row and for the teacher and the untrained student:

* ``kl``: KL(teacher || student) per token on the teacher's held-out answers (top-64 + tail, cached);
* ``top1``: how often the student's most likely token is the teacher's;
* ``rouge_l``: ROUGE-L of the student's greedy answer against the teacher's;
* ``accuracy``: the student's final answer against the ground truth, on the held-out questions that have one;
* wall time (rollouts and caching included) and training time.

Nothing here asserts a winner: the table says what it measures, wins and losses alike.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("trl_sft", "curriculum_sft", "trl_gkd", "trl_distillation", "ours_offline", "ours_recipe",
        "ours_recipe_reverse", "ours_recipe_jsd")  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--workdir", default=str(Path.home() / ".cache/trl-edge/quality"))
    p.add_argument("--student_layers", type=int, default=14)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-4, help="every row (1e-4: worse KD, worse SFT top-1)")
    p.add_argument("--max_new_tokens", type=int, default=40, help="teacher answers, rollouts, evaluation")
    p.add_argument("--max_length", type=int, default=160)
    p.add_argument("--top_k", type=int, default=64)
    p.add_argument("--train_prompts", type=int, default=None, help="first N training prompts (default: all)")
    p.add_argument("--heldout_prompts", type=int, default=None)
    # ours_recipe
    p.add_argument("--sft_steps", type=int, default=40, help="SFT steps before the KD rounds")
    p.add_argument(
        "--recipe_sft",
        choices=["plain", "curriculum"],
        default="plain",
        help="the SFT before the KD rounds: random order, or curriculum_sft's stages and pacing",
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rollout_temperature", type=float, default=0.7)
    p.add_argument("--rollout_top_p", type=float, default=0.9)
    p.add_argument("--rollout_samples", type=int, default=1)
    p.add_argument("--rollout_prompts", type=int, default=96, help="training prompts the student samples per round")
    p.add_argument("--answer_share", type=float, default=0.7, help="share of teacher answers in each KD round")
    p.add_argument("--kd_weight", type=float, default=0.9, help="KD share of the loss in the recipe's KD rounds")
    p.add_argument("--offline_kd_weight", type=float, default=0.9, help="KD share of the loss in ours_offline")
    p.add_argument("--offline_divergence", default="jsd", help="divergence of ours_offline (forward_kl was worse)")
    p.add_argument("--gkd_beta", type=float, default=0.5, help="trl_gkd's JSD beta (TRL's default; 0: forward KL)")
    p.add_argument("--kd_temperature", type=float, default=1.0, help="distillation temperature of our KD rows")
    p.add_argument("--kd_learning_rate", type=float, default=None, help="default: --learning_rate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no_reference", action="store_true", help="skip the teacher and pruned-student rows")
    p.add_argument("--output_json", default=str(ROOT / "benchmarks/results/quality.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.sft_steps, args.rounds = 6, 2, 2
        args.train_prompts, args.heldout_prompts, args.max_new_tokens = 24, 12, 16
    if args.sft_steps >= args.steps:
        p.error("--sft_steps must leave steps for the KD rounds")
    return args


def log(message: str) -> None:
    print(f"[quality] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------ setup
def prompts(split: str, limit: int | None):
    from datasets import load_dataset

    data = load_dataset("json", data_files=str(ROOT / f"recipes/quickstart/data/{split}/prompts.jsonl"), split="train")
    return data.select(range(min(limit, len(data)))) if limit else data


def setup(args) -> dict:
    """The teacher, the pruned student, the teacher's answers and caches: made once, reused by every row."""
    import torch

    from trl_edge import cache_teacher_logits, generate_rollouts, make_student
    from trl_edge.embedded import ensure_embedded_model
    from trl_edge.model_loading import load_causal_lm, load_tokenizer
    from trl_edge.scripts.teacher_answers import answers_dataset

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = str(ensure_embedded_model())
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_causal_lm(teacher_dir, dtype=torch.float32)
    student_dir = work / f"student-{args.student_layers}"
    if not (student_dir / "config.json").is_file():
        make_student(teacher_dir, args.student_layers, str(student_dir))
    tag = f"n{args.train_prompts or 'all'}-h{args.heldout_prompts or 'all'}-t{args.max_new_tokens}"
    made = {"teacher": teacher_dir, "student": str(student_dir), "tokenizer": tokenizer, "teacher_model": teacher}
    timings = {}
    for split, limit in (("train", args.train_prompts), ("heldout", args.heldout_prompts)):
        start = time.perf_counter()
        data = prompts(split, limit)
        rollouts = generate_rollouts(
            teacher,
            tokenizer,
            data,
            work / f"answers-{split}-{tag}",
            temperature=0.0,
            max_new_tokens=args.max_new_tokens,
            batch_size=16,
            shard_size=64,
            use_cpu=True,
        )
        cache = cache_teacher_logits(teacher, tokenizer, rollouts, work / f"cache-{split}-{tag}-k{args.top_k}",
                                     top_k=args.top_k, batch_size=16, use_cpu=True)  # fmt: skip
        made[f"{split}_answers"] = answers_dataset(rollouts, data, tokenizer, keep_truncated=True)
        made[f"{split}_cache"] = cache
        timings[split] = time.perf_counter() - start
    made["setup_s"] = timings
    return made


# ------------------------------------------------------------------------------------------------------------ arms
def train_args(cls, args, out: Path, steps: int, **extra):
    from dataclasses import fields

    if "max_length" in {f.name for f in fields(cls)}:
        extra.setdefault("max_length", args.max_length)
    return cls(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=args.batch_size,
        learning_rate=extra.pop("learning_rate", args.learning_rate), lr_scheduler_type="cosine", warmup_steps=0.1,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], bf16=False, use_cpu=True,
        activation_checkpointing=False, gradient_checkpointing=False, seed=args.seed, data_seed=args.seed,
        disable_tqdm=True, dataloader_num_workers=0, **extra,
    )  # fmt: skip


def load_student(path):
    import torch

    from trl_edge.model_loading import load_causal_lm

    return load_causal_lm(str(path), dtype=torch.float32)


def train(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def arm_trl_sft(args, made, out):
    from trl import SFTConfig, SFTTrainer

    model = load_student(made["student"])
    config = train_args(SFTConfig, args, out, args.steps)
    trainer = SFTTrainer(model, config, train_dataset=made["train_answers"], processing_class=made["tokenizer"])
    return model, {"train_s": train(trainer)}


def _curriculum_sft(args, made, out, steps, model=None, curriculum=True):
    from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer

    model = model if model is not None else load_student(made["student"])
    order = dict(curriculum_stage_column="stage", curriculum_stages=["reasoning", "direct"],
                 curriculum_difficulty="column", curriculum_pacing="root", curriculum_replay_ratio=0.1)  # fmt: skip
    config = train_args(
        CurriculumSFTConfig, args, out, steps, **(order if curriculum else {"curriculum_pacing": "none"})
    )
    trainer = CurriculumSFTTrainer(model, config, train_dataset=made["train_answers"],
                                   processing_class=made["tokenizer"])  # fmt: skip
    return model, train(trainer)


def arm_curriculum_sft(args, made, out):
    model, seconds = _curriculum_sft(args, made, out, args.steps)
    return model, {"train_s": seconds}


def arm_trl_gkd(args, made, out):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    model = load_student(made["student"])
    rows = [{"messages": r["prompt"] + r["completion"]} for r in made["train_answers"]]
    config = train_args(GKDConfig, args, out, args.steps, lmbda=0.0, beta=args.gkd_beta, temperature=1.0,
                        max_new_tokens=args.max_new_tokens)  # fmt: skip
    trainer = GKDTrainer(model=model, teacher_model=made["teacher_model"], args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=made["tokenizer"])  # fmt: skip
    return model, {"train_s": train(trainer)}


def arm_trl_distillation(args, made, out):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    model = load_student(made["student"])
    rows = [{"prompt": r["prompt"]} for r in made["train_answers"]]
    config = train_args(DistillationConfig, args, out, args.steps, max_completion_length=args.max_new_tokens,
                        temperature=1.0)  # fmt: skip
    data = Dataset.from_list(rows)
    trainer = DistillationTrainer(model=model, teacher_model=made["teacher_model"], args=config, train_dataset=data,
                                  processing_class=made["tokenizer"])  # fmt: skip
    return model, {"train_s": train(trainer)}


def _kd(args, made, out, steps, caches, weights=None, divergence="forward_kl", model=None, kd_weight=None):
    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer

    model = model if model is not None else load_student(made["student"])
    config = train_args(
        OfflineOnPolicyKDConfig, args, out, steps, kd_weight=args.kd_weight if kd_weight is None else kd_weight,
        divergence=divergence, teacher_cache_weights=weights, temperature=args.kd_temperature,
        learning_rate=args.kd_learning_rate or args.learning_rate,
    )  # fmt: skip
    trainer = OfflineOnPolicyKDTrainer(model, config, train_dataset=caches, processing_class=made["tokenizer"])
    return model, train(trainer)


def arm_ours_offline(args, made, out):
    model, seconds = _kd(args, made, out, args.steps, [made["train_cache"]], divergence=args.offline_divergence,
                     kd_weight=args.offline_kd_weight)  # fmt: skip
    return model, {"train_s": seconds}


def _recipe(args, made, out, divergence):
    from trl_edge import cache_teacher_logits, generate_rollouts

    reused = "recipe_sft" in made
    if not reused:  # the recipe rows share one SFT warm-up (deterministic): train it once
        model, seconds = _curriculum_sft(
            args, made, out / "sft", args.sft_steps, curriculum=args.recipe_sft == "curriculum"
        )
        made["recipe_sft"] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, seconds)
    model = load_student(made["student"])
    model.load_state_dict(made["recipe_sft"][0])
    train_s = made["recipe_sft"][1]  # counted in every row that starts from it
    other_s = 0.0
    per_round = (args.steps - args.sft_steps) // args.rounds
    for r in range(1, args.rounds + 1):
        steps = per_round if r < args.rounds else args.steps - args.sft_steps - per_round * (args.rounds - 1)
        start = time.perf_counter()
        rollouts = generate_rollouts(
            model, made["tokenizer"], prompts("train", min(args.train_prompts or 10**9, args.rollout_prompts)),
            out / f"rollouts-{r}",
            num_samples=args.rollout_samples, temperature=args.rollout_temperature, top_p=args.rollout_top_p,
            max_new_tokens=args.max_new_tokens, seed=args.seed + r, round=r, batch_size=16, use_cpu=True,
        )  # fmt: skip
        cache = cache_teacher_logits(made["teacher_model"], made["tokenizer"], rollouts, out / f"cache-{r}",
                                     top_k=args.top_k, batch_size=16, use_cpu=True)  # fmt: skip
        other_s += time.perf_counter() - start
        caches, weights = [cache], None
        if args.answer_share > 0:
            caches, weights = [cache, made["train_cache"]], [1 - args.answer_share, args.answer_share]
        model, seconds = _kd(args, made, out / f"kd-{r}", steps, caches, weights, divergence, model=model)
        train_s += seconds
    shared = made["recipe_sft"][1] if reused else 0.0  # added to the wall time of the rows that reuse the warm-up
    return model, {"train_s": train_s, "rollouts_and_caching_s": other_s, "wall_shared_s": shared}


def arm_ours_recipe(args, made, out):
    return _recipe(args, made, out, "forward_kl")


def arm_ours_recipe_reverse(args, made, out):
    return _recipe(args, made, out, "reverse_kl")


def arm_ours_recipe_jsd(args, made, out):
    return _recipe(args, made, out, "jsd")


# ------------------------------------------------------------------------------------------------------------ eval
def evaluate(model, made, args, out: Path | None = None) -> dict:
    from trl_edge import evaluate_fidelity, evaluate_generation

    fidelity = evaluate_fidelity(model, made["heldout_cache"], 16, tokenizer=made["tokenizer"], chunk_size=512)
    answers = made["heldout_answers"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    generation = evaluate_generation(model, made["tokenizer"], answers, max_new_tokens=args.max_new_tokens,
                                     batch_size=16, reference_column="completion",
                                     predictions_file=None if out is None else out / "predictions.jsonl")  # fmt: skip
    with_truth = answers.filter(lambda r: bool(r["target"]))
    truth = evaluate_generation(model, made["tokenizer"], with_truth, max_new_tokens=args.max_new_tokens,
                                batch_size=16, reference_column="completion", target_column="target")  # fmt: skip
    return {
        "kl": fidelity["fidelity/kl"], "top1": fidelity["fidelity/top1_agreement"],
        "rouge_l": generation["generation/rouge_l"], "accuracy": truth["generation/exact_match"],
        "hit_max_new_tokens": generation["generation/hit_max_new_tokens"],
        "rouge_l_by_kind": {
            k.split("=", 1)[1]: v for k, v in generation.items() if k.startswith("generation/rouge_l/kind=")
        },
        "accuracy_by_kind": {
            k.split("=", 1)[1]: v for k, v in truth.items() if k.startswith("generation/exact_match/kind=")
        },
        "rouge_l_per_prompt": per_prompt_rouge(out / "predictions.jsonl") if out is not None else None,
    }  # fmt: skip


def per_prompt_rouge(path: Path) -> list[float]:
    return [json.loads(line)["rouge_l"] for line in path.read_text().splitlines() if line.strip()]


def paired_difference(row: dict, base: dict | None) -> str:
    """ROUGE-L minus the base row's, prompt by prompt: mean and 95% half-width (normal approximation)."""
    a, b = row["metrics"].get("rouge_l_per_prompt"), (base or {}).get("metrics", {}).get("rouge_l_per_prompt")
    if not a or not b or len(a) != len(b) or a is b:
        return "-"
    diffs = [x - y for x, y in zip(a, b)]
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    return f"{mean:+.3f} ± {1.96 * sd / len(diffs) ** 0.5:.3f}"


def table(results: dict) -> str:
    lines = [
        f"Teacher SmolLM2-135M-Instruct; student: its {results['config']['student_layers']}-layer pruned copy; "
        f"{results['config']['steps']} steps x {results['config']['batch_size']} sequences, lr "
        f"{results['config']['learning_rate']}; held out: {results['heldout']} prompts",
        "",
        "| row | KL to teacher (nats/token, lower is better) | top-1 agreement | ROUGE-L vs teacher | ROUGE-L minus "
        "trl_sft's, paired (95%) | accuracy vs ground truth | wall time (s) | of which training (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["rows"].items():
        m = r["metrics"]
        wall, trained = r.get("wall_s"), r.get("train_s")
        lines.append(
            f"| {name} | {m['kl']:.3f} | {m['top1']:.3f} | {m['rouge_l']:.3f} | "
            f"{paired_difference(r, results['rows'].get('trl_sft'))} | {m['accuracy']:.3f} | "
            f"{'-' if wall is None else f'{wall:.0f}'} | {'-' if trained is None else f'{trained:.0f}'} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    made = setup(args)
    log(f"setup: {made['setup_s']}")
    previous = json.loads(Path(args.output_json).read_text()) if Path(args.output_json).is_file() else {}
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("arms", "output_json", "no_reference")},
               "heldout": len(made["heldout_answers"]), "setup_s": made["setup_s"], "rows": {}}  # fmt: skip
    if previous.get("config") == results["config"]:  # same settings: keep the rows not rerun this time
        results["rows"] = previous.get("rows", {})
    for name, path in (("teacher", made["teacher"]), ("pruned student", made["student"])):
        if name not in results["rows"] and not args.no_reference:
            out = Path(args.workdir) / "runs" / name.replace(" ", "_")
            results["rows"][name] = {"metrics": evaluate(load_student(path), made, args, out)}
    for arm in args.arms:
        out = Path(args.workdir) / "runs" / arm
        shutil.rmtree(out, ignore_errors=True)
        log(f"{arm} ...")
        start = time.perf_counter()
        model, times = globals()[f"arm_{arm}"](args, made, out)
        wall = time.perf_counter() - start + times.pop("wall_shared_s", 0.0)
        results["rows"][arm] = {"metrics": evaluate(model, made, args, out), "wall_s": wall, **times}
        log(f"{arm}: {results['rows'][arm]['metrics']} in {wall:.0f} s")
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
