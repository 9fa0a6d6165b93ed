"""Does our distillation beat plain SFT and TRL's distillation trainers, on a real model, at equal optimizer steps?

    python benchmarks/quality.py --steps 48 --sft_steps 24 --rollout_prompts 64     # the default rows (~20 min)
    python benchmarks/quality.py --student_layers 22 --arms trl_sft ours_offline ours_recipe
    python benchmarks/quality.py --arms ours_recipe --recipe_sft kd --rounds 4 --row_suffix +4rounds --no_reference
    python benchmarks/quality.py --quick                       # few steps and prompts: does it run (~6 min)

benchmarks/README.md ("Quality") lists every command that made its tables. The teacher is SmolLM2-135M-Instruct
(``embedded:smollm2-135m-instruct``); the student its depth-pruned copy (``make_student``, ``--student_layers`` of
30, evenly spaced). The data is the quickstart's prompt sets (``recipes/quickstart/data``: sums, times tables,
capitals, opposites, open questions; held out: 156 prompts, 150 with a ground truth, new questions of those kinds
plus subtraction and colours, never trained on). The teacher writes the answers once (greedy, ``--max_new_tokens``
56: every one ends), so every row learns from one teacher. Every row starts from the same pruned student and takes
``--steps`` optimizer steps of ``--batch_size`` sequences at ``--learning_rate`` (cosine, 10% warm-up):

1. ``trl_sft``: TRL ``SFTTrainer`` on the teacher's answers; ``curriculum_sft``: ours;
2. ``trl_gkd_fkl`` / ``trl_gkd_jsd``: TRL ``GKDTrainer``, ``lmbda=0`` (the teacher's answers), ``beta`` 0 (forward
   KL) or 0.5 (its default JSD), the teacher live;
3. ``trl_distillation_warm``: TRL's ``DistillationTrainer`` (the student samples at every step, the teacher scores
   live) from the same warm-up as ``ours_recipe`` for the remaining steps; ``trl_distillation``: from the pruned
   student;
4. ``ours_offline``: ``OfflineOnPolicyKDTrainer`` on a cache of the teacher's answers (JSD, ``beta=0.5``);
5. ``ours_recipe`` (``--recipe_divergence``, JSD), ``ours_recipe_fkl``, ``ours_recipe_reverse``: a warm-up of
   ``--sft_steps`` (``--recipe_sft``: plain SFT, curriculum SFT, or ``kd``: ours_offline's loss), then ``--rounds``
   rounds of offline on-policy KD: the student samples ``--rollout_prompts`` training prompts, the teacher scores
   those tokens once, the student trains on that cache mixed with the teacher-answer cache (``--answer_share``).
   Levers: ``--rollout_ce_weight`` (CE on the rollouts: 0.1 is the old loss), ``--truncated_samples``,
   ``--truncated_answers``, ``--rounds`` (how often the rollouts are refreshed), ``--kd_learning_rate``,
   ``--warmup_teacher requantized`` (the warm-up's answers written by another teacher); ``--row_suffix`` names the
   row.

Measured on the held-out split, for every row and for the teacher and the untrained student:

* ``kl``: KL(teacher || student) per token on the teacher's held-out answers (top-64 + tail, cached);
* ``top1``: how often the student's most likely token is the teacher's;
* ``rouge_l``: ROUGE-L of the student's greedy answer against the teacher's;
* ``accuracy``: the student's final answer against the ground truth, on the held-out questions that have one;
* each one prompt by prompt, and the paired difference to ``trl_sft`` of the same seed (mean, 95% half-width);
* wall time (the teacher's answers, their caching, rollouts and their caching included) and training time;
* for the recipe rows, the on-policy drift at the start and end of each round.

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
ARMS = ("trl_sft", "curriculum_sft", "trl_gkd_fkl", "trl_gkd_jsd", "trl_distillation", "trl_distillation_warm",
        "ours_offline", "ours_recipe", "ours_recipe_fkl", "ours_recipe_reverse", "ours_recipe_jsd")  # fmt: skip
DEFAULT_ARMS = ("trl_sft", "trl_gkd_fkl", "trl_gkd_jsd", "trl_distillation_warm", "ours_offline", "ours_recipe")
FIGURES = ("kl", "top1", "rouge_l", "accuracy")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    p.add_argument("--row_suffix", default="", help="appended to each row's name (a lever's run, e.g. '+ce')")
    p.add_argument("--workdir", default=str(Path.home() / ".cache/trl-edge/quality"))
    p.add_argument("--student_layers", type=int, default=14)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--learning_rate", type=float, default=3e-4, help="every row (1e-4: worse KD, worse SFT top-1)")
    p.add_argument("--max_new_tokens", type=int, default=56,
                   help="teacher answers, rollouts, evaluation (every teacher answer ends within 50 tokens)")
    p.add_argument("--max_length", type=int, default=160)
    p.add_argument("--top_k", type=int, default=64)
    p.add_argument("--train_prompts", type=int, default=None, help="first N training prompts (default: all)")
    p.add_argument("--heldout_prompts", type=int, default=None)
    # ours_recipe
    p.add_argument("--sft_steps", type=int, default=40, help="warm-up steps before the KD rounds")
    p.add_argument(
        "--recipe_sft",
        choices=["plain", "curriculum", "kd"],
        default="plain",
        help="the warm-up before the KD rounds: SFT in random order, curriculum SFT, or offline KD on the teacher's "
        "answers (ours_offline's loss)",
    )
    p.add_argument("--rollout_ce_weight", type=float, default=None,
                   help="CE weight on the student's rollouts (default: none, the trainer's rule; 0.1: the old loss)")
    p.add_argument("--truncated_samples", default="keep", choices=["keep", "drop", "mask"])
    p.add_argument("--truncated_answers", default="drop", choices=["keep", "drop"],
                   help="teacher answers cut at max_new_tokens: dropped, or kept token-exact without an end-of-turn")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--rollout_temperature", type=float, default=0.7)
    p.add_argument("--rollout_top_p", type=float, default=0.9)
    p.add_argument("--rollout_samples", type=int, default=1)
    p.add_argument("--rollout_prompts", type=int, default=96, help="training prompts the student samples per round")
    p.add_argument("--answer_share", type=float, default=0.7, help="share of teacher answers in each KD round")
    p.add_argument("--recipe_divergence", default="jsd", help="divergence of ours_recipe's rounds")
    p.add_argument("--kd_weight", type=float, default=0.9, help="KD share of the loss in the recipe's KD rounds")
    p.add_argument("--offline_kd_weight", type=float, default=0.9, help="KD share of the loss in ours_offline")
    p.add_argument("--offline_divergence", default="jsd", help="divergence of ours_offline (forward_kl was worse)")
    p.add_argument("--kd_temperature", type=float, default=1.0, help="distillation temperature of our KD rows")
    p.add_argument("--kd_learning_rate", type=float, default=None, help="default: --learning_rate")
    p.add_argument("--warmup_teacher", default="same", choices=["same", "requantized"],
                   help="who writes the recipe warm-up's SFT answers (fix 3's lever): the teacher that scores the "
                   "rollouts, or another teacher: its copy with every linear weight re-quantized per row to "
                   "--requant_bits (a served int-N copy writing the data, the bf16 teacher scoring)")
    p.add_argument("--requant_bits", type=int, default=4)
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
    from trl_edge.scripts.teacher_answers import answer_lengths, answers_dataset

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    teacher_dir = str(ensure_embedded_model())
    tokenizer = load_tokenizer(teacher_dir)
    teacher = load_causal_lm(teacher_dir, dtype=torch.float32)
    student_dir = work / f"student-{args.student_layers}"
    if not (student_dir / "config.json").is_file():
        make_student(teacher_dir, args.student_layers, str(student_dir))
    tag = f"n{args.train_prompts or 'all'}-h{args.heldout_prompts or 'all'}-t{args.max_new_tokens}-{data_version()}"
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
        answered = time.perf_counter()
        if split == "train" and args.truncated_answers == "drop":  # the cache holds what SFT trains on
            keep = [i for i, r in enumerate(rollouts.to_dataset()["finish_reason"]) if r != "length"]
            scored = rollouts.to_dataset().select(keep)
            lengths = answer_lengths(rollouts, args.max_new_tokens)
            log(f"teacher answers ({split}): {lengths}")
            made["answer_lengths"] = lengths
        else:
            scored = rollouts
        cache = cache_teacher_logits(teacher, tokenizer, _scorable(scored, rollouts), work /
                                     f"cache-{split}-{tag}-k{args.top_k}-{args.truncated_answers}",
                                     top_k=args.top_k, batch_size=16, use_cpu=True)  # fmt: skip
        keep_cut = split == "heldout" or args.truncated_answers == "keep"  # held out: one row per cached answer
        made[f"{split}_answers"] = answers_dataset(rollouts, data, tokenizer, keep_truncated=keep_cut)
        made[f"{split}_cache"] = cache
        timings[f"{split}_answers"] = answered - start
        timings[f"{split}_cache"] = time.perf_counter() - answered
    made["setup_s"] = timings
    return made


def data_version() -> str:
    import hashlib

    text = b"".join((ROOT / f"recipes/quickstart/data/{s}/prompts.jsonl").read_bytes() for s in ("train", "heldout"))
    return hashlib.sha256(text).hexdigest()[:8]


def _scorable(rows, rollouts):
    """The rollout set itself, or (some answers dropped) its kept samples as the same token-exact scoring plan."""
    if rows is rollouts or len(rows) == len(rollouts):
        return rollouts
    from trl_edge.cache.plan import ScoringSource

    class Kept(ScoringSource):
        def scoring_plan(self):
            import numpy as np

            from trl_edge.cache.plan import ScoringPlan

            seqs = [np.asarray(p + c, dtype=np.int32) for p, c in zip(rows["prompt_ids"], rows["completion_ids"])]
            labs = [np.asarray([-100] * len(p) + c, dtype=np.int32)
                    for p, c in zip(rows["prompt_ids"], rows["completion_ids"])]  # fmt: skip
            offsets = np.concatenate([[0], np.cumsum([len(x) for x in seqs])])
            return ScoringPlan.from_arrays(
                np.concatenate(seqs), np.concatenate(labs), offsets, {"finish_reason": rows["finish_reason"]},
                source=rollouts.metadata.provenance(), tokenization={"rollouts": True},
            )  # fmt: skip

    return Kept()


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


def _other_teacher_answers(args, made):
    """The training prompts answered by another teacher (fix 3's lever): the teacher re-quantized per row."""
    import torch

    from trl_edge import generate_rollouts
    from trl_edge.model_loading import load_causal_lm
    from trl_edge.scripts.teacher_answers import answer_lengths, answers_dataset

    other = load_causal_lm(made["teacher"], dtype=torch.float32)
    levels = 2 ** (args.requant_bits - 1) - 1
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, torch.nn.Linear):  # symmetric per-row rounding; the tied head/embedding too
                w = module.weight
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / levels
                w.copy_((w / scale).round().clamp(-levels, levels) * scale)
    data = prompts("train", args.train_prompts)
    where = Path(args.workdir) / f"answers-train-int{args.requant_bits}-t{args.max_new_tokens}-{data_version()}"
    rollouts = generate_rollouts(other, made["tokenizer"], data, where, temperature=0.0, use_cpu=True,
                                 max_new_tokens=args.max_new_tokens, batch_size=16, shard_size=64)  # fmt: skip
    log(f"answers of the int{args.requant_bits} teacher: {answer_lengths(rollouts, args.max_new_tokens)}")
    return answers_dataset(rollouts, data, made["tokenizer"], keep_truncated=args.truncated_answers == "keep")


def _curriculum_sft(args, made, out, steps, model=None, curriculum=True, answers=None):
    from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer

    model = model if model is not None else load_student(made["student"])
    order = dict(curriculum_stage_column="stage", curriculum_stages=["reasoning", "direct"],
                 curriculum_difficulty="column", curriculum_pacing="root", curriculum_replay_ratio=0.1)  # fmt: skip
    config = train_args(
        CurriculumSFTConfig, args, out, steps, **(order if curriculum else {"curriculum_pacing": "none"})
    )
    trainer = CurriculumSFTTrainer(model, config, train_dataset=made["train_answers"] if answers is None else answers,
                                   processing_class=made["tokenizer"])  # fmt: skip
    return model, train(trainer)


def arm_curriculum_sft(args, made, out):
    model, seconds = _curriculum_sft(args, made, out, args.steps)
    return model, {"train_s": seconds}


def _trl_gkd(args, made, out, beta):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    model = load_student(made["student"])
    rows = [{"messages": r["prompt"] + r["completion"]} for r in made["train_answers"]]
    config = train_args(GKDConfig, args, out, args.steps, lmbda=0.0, beta=beta, temperature=1.0,
                        max_new_tokens=args.max_new_tokens)  # fmt: skip
    trainer = GKDTrainer(model=model, teacher_model=made["teacher_model"], args=config,
                         train_dataset=Dataset.from_list(rows), processing_class=made["tokenizer"])  # fmt: skip
    return model, {"train_s": train(trainer)}


def arm_trl_gkd_fkl(args, made, out):
    """GKD with forward KL (beta 0) on the teacher's answers (lmbda 0), the teacher live."""
    return _trl_gkd(args, made, out, 0.0)


def arm_trl_gkd_jsd(args, made, out):
    """GKD with its default JSD (beta 0.5) on the teacher's answers (lmbda 0), the teacher live."""
    return _trl_gkd(args, made, out, 0.5)


def _trl_distillation(args, made, out, model, steps):
    from datasets import Dataset
    from trl import DistillationConfig, DistillationTrainer

    rows = [{"prompt": r["prompt"]} for r in made["train_answers"]]
    config = train_args(DistillationConfig, args, out, steps, max_completion_length=args.max_new_tokens,
                        temperature=1.0)  # fmt: skip
    data = Dataset.from_list(rows)
    trainer = DistillationTrainer(model=model, teacher_model=made["teacher_model"], args=config, train_dataset=data,
                                  processing_class=made["tokenizer"])  # fmt: skip
    return model, train(trainer)


def arm_trl_distillation(args, made, out):
    """TRL's DistillationTrainer from the pruned student (it diverged there in earlier runs)."""
    model, seconds = _trl_distillation(args, made, out, load_student(made["student"]), args.steps)
    return model, {"train_s": seconds}


def arm_trl_distillation_warm(args, made, out):
    """TRL's DistillationTrainer from the same warm-up as ours_recipe, for the same remaining steps: its fair use."""
    model, warm_s, shared = _warm_up(args, made, out)
    model, seconds = _trl_distillation(args, made, out, model, args.steps - args.sft_steps)
    return model, {"train_s": warm_s + seconds, "wall_shared_s": shared}


def _kd(args, made, out, steps, caches, weights=None, divergence="forward_kl", model=None, kd_weight=None,
        ce_weights=None):  # fmt: skip
    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer

    model = model if model is not None else load_student(made["student"])
    config = train_args(
        OfflineOnPolicyKDConfig, args, out, steps, kd_weight=args.kd_weight if kd_weight is None else kd_weight,
        divergence=divergence, teacher_cache_weights=weights, temperature=args.kd_temperature,
        learning_rate=args.kd_learning_rate or args.learning_rate, teacher_cache_ce_weights=ce_weights,
        truncated_samples=args.truncated_samples,
    )  # fmt: skip
    trainer = OfflineOnPolicyKDTrainer(model, config, train_dataset=caches, processing_class=made["tokenizer"])
    return model, train(trainer)


def arm_ours_offline(args, made, out):
    model, seconds = _kd(args, made, out, args.steps, [made["train_cache"]], divergence=args.offline_divergence,
                     kd_weight=args.offline_kd_weight)  # fmt: skip
    return model, {"train_s": seconds}


def _warm_up(args, made, out):
    """The recipe's warm-up (``--recipe_sft``), trained once and shared by the rows that start from it."""
    reused = "recipe_sft" in made
    if not reused:
        if args.recipe_sft == "kd":
            model, seconds = _kd(args, made, out / "warmup", args.sft_steps, [made["train_cache"]],
                                 divergence=args.offline_divergence, kd_weight=args.offline_kd_weight)  # fmt: skip
        else:
            answers = made["train_answers"] if args.warmup_teacher == "same" else _other_teacher_answers(args, made)
            model, seconds = _curriculum_sft(args, made, out / "sft", args.sft_steps,
                                             curriculum=args.recipe_sft == "curriculum", answers=answers)  # fmt: skip
        made["recipe_sft"] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, seconds)
    model = load_student(made["student"])
    model.load_state_dict(made["recipe_sft"][0])
    # the warm-up's time counts in every row that starts from it (as wall time where it was trained by another row)
    return model, made["recipe_sft"][1], made["recipe_sft"][1] if reused else 0.0


def _recipe(args, made, out, divergence):
    from trl_edge import cache_teacher_logits, generate_rollouts

    model, train_s, shared = _warm_up(args, made, out)
    other_s = 0.0
    per_round = (args.steps - args.sft_steps) // args.rounds
    drift = []
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
        caches, weights, ce = [cache], None, None
        if args.answer_share > 0:
            caches, weights = [cache, made["train_cache"]], [1 - args.answer_share, args.answer_share]
        if args.rollout_ce_weight is not None:
            ce = [args.rollout_ce_weight] + ([1 - args.kd_weight] if args.answer_share > 0 else [])
        model, seconds = _kd(args, made, out / f"kd-{r}", steps, caches, weights, divergence, model=model,
                             ce_weights=ce)  # fmt: skip
        record = json.loads((out / f"kd-{r}" / "distillation_sources.json").read_text())
        drift.append(next(iter(record["onpolicy_drift"].values()), None))
        train_s += seconds
    return model, {"train_s": train_s, "rollouts_and_caching_s": other_s, "wall_shared_s": shared,
                   "onpolicy_drift": drift}  # fmt: skip


def arm_ours_recipe(args, made, out):
    """The recommended recipe: warm-up, then on-policy rounds (``--recipe_divergence``, default JSD)."""
    return _recipe(args, made, out, args.recipe_divergence)


def arm_ours_recipe_fkl(args, made, out):
    return _recipe(args, made, out, "forward_kl")


def arm_ours_recipe_reverse(args, made, out):
    return _recipe(args, made, out, "reverse_kl")


def arm_ours_recipe_jsd(args, made, out):
    return _recipe(args, made, out, "jsd")


# ------------------------------------------------------------------------------------------------------------ eval
def evaluate(model, made, args, out: Path) -> dict:
    """Every figure on the held-out split, and each one per prompt (for the paired intervals)."""
    from trl_edge import evaluate_fidelity, evaluate_generation

    fidelity = evaluate_fidelity(model, made["heldout_cache"], 16, tokenizer=made["tokenizer"], chunk_size=512,
                                 per_sample=True)  # fmt: skip
    each = fidelity["fidelity/per_sample"]
    out.mkdir(parents=True, exist_ok=True)
    answers = made["heldout_answers"]
    generation = evaluate_generation(model, made["tokenizer"], answers, max_new_tokens=args.max_new_tokens,
                                     batch_size=16, reference_column="completion", target_column="target",
                                     predictions_file=out / "predictions.jsonl")  # fmt: skip
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return {
        "kl": fidelity["fidelity/kl"], "top1": fidelity["fidelity/top1_agreement"],
        "rouge_l": generation["generation/rouge_l"], "accuracy": generation["generation/exact_match"],
        "hit_max_new_tokens": generation["generation/hit_max_new_tokens"],
        "accuracy_by_kind": {
            k.split("=", 1)[1]: v for k, v in generation.items() if k.startswith("generation/exact_match/kind=")
        },
        "per_prompt": {
            "kl": each["kl"], "top1": each["top1_agreement"],
            "rouge_l": [r["rouge_l"] for r in rows], "accuracy": [r["exact_match"] for r in rows],
        },
    }  # fmt: skip


def paired(row: dict, base: dict | None, figure: str) -> str:
    """The row's figure minus the base row's, prompt by prompt: mean and 95% half-width (normal approximation)."""
    a = row["metrics"].get("per_prompt", {}).get(figure)
    b = (base or {}).get("metrics", {}).get("per_prompt", {}).get(figure)
    if not a or not b or len(a) != len(b) or row is base:
        return "-"
    diffs = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    return f"{mean:+.3f} ± {1.96 * sd / len(diffs) ** 0.5:.3f}"


def table(results: dict) -> str:
    c = results["config"]
    lines = [
        f"Teacher SmolLM2-135M-Instruct; student: its {c['student_layers']}-layer pruned copy; {c['steps']} steps x "
        f"{c['batch_size']} sequences, lr {c['learning_rate']}; held out: {results['heldout']} prompts; differences "
        "against trl_sft (same seed), prompt by prompt, mean ± 95% half-width",
        "",
        "| row | KL ↓ | Δ KL | top-1 | Δ top-1 | ROUGE-L | Δ ROUGE-L | accuracy | Δ accuracy | wall (s) | "
        "training (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results["rows"].items():
        m = r["metrics"]
        seed = name.split("@s")[1] if "@s" in name else None
        base = results["rows"].get("trl_sft" + (f"@s{seed}" if seed else ""))
        wall, trained = r.get("wall_s"), r.get("train_s")
        cells = " | ".join(f"{m[f]:.3f} | {paired(r, base, f)}" for f in FIGURES)
        lines.append(f"| {name} | {cells} | {'-' if wall is None else f'{wall:.0f}'} | "
                     f"{'-' if trained is None else f'{trained:.0f}'} |")  # fmt: skip
    return "\n".join(lines)


ROW_SETTINGS = ("arms", "output_json", "no_reference", "seed", "row_suffix", "rollout_ce_weight",
                "truncated_samples", "recipe_sft", "recipe_divergence", "rounds", "answer_share", "kd_learning_rate",
                "warmup_teacher", "requant_bits")  # fmt: skip


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    made = setup(args)
    log(f"setup: {made['setup_s']}")
    previous = json.loads(Path(args.output_json).read_text()) if Path(args.output_json).is_file() else {}
    config = {k: v for k, v in vars(args).items() if k not in ROW_SETTINGS}
    results = {"config": config, "heldout": len(made["heldout_answers"]), "setup_s": made["setup_s"],
               "answer_lengths": made.get("answer_lengths"), "rows": {}}  # fmt: skip
    kept = {k: v for k, v in previous.get("config", {}).items() if k not in ROW_SETTINGS}
    if kept == config:  # same shared settings: keep the rows not rerun this time
        results["rows"] = previous.get("rows", {})
    for name, path in (("teacher", made["teacher"]), ("pruned student", made["student"])):
        if name not in results["rows"] and not args.no_reference:
            out = Path(args.workdir) / "runs" / name.replace(" ", "_")
            results["rows"][name] = {"metrics": evaluate(load_student(path), made, args, out)}
    setup_s = made["setup_s"]
    for arm in args.arms:
        name = arm + args.row_suffix + (f"@s{args.seed}" if args.seed else "")
        out = Path(args.workdir) / "runs" / name
        shutil.rmtree(out, ignore_errors=True)
        log(f"{name} ...")
        start = time.perf_counter()
        model, times = globals()[f"arm_{arm}"](args, made, out)
        # every row learns from the teacher's answers; the KD rows from their cache too
        shared = setup_s["train_answers"] + (setup_s["train_cache"] if arm.startswith("ours") else 0.0)
        wall = time.perf_counter() - start + times.pop("wall_shared_s", 0.0) + shared
        settings = {k: getattr(args, k) for k in ROW_SETTINGS[3:]}
        results["rows"][name] = {"metrics": evaluate(model, made, args, out), "wall_s": wall, "settings": settings,
                                 **times}  # fmt: skip
        log(f"{name}: { {k: v for k, v in results['rows'][name]['metrics'].items() if k != 'per_prompt'} } "
            f"in {wall:.0f} s")  # fmt: skip
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(results, indent=2))
    print(table(results))
    return results


if __name__ == "__main__":
    main()
