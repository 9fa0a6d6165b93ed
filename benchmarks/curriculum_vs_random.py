#!/usr/bin/env python
"""Curriculum SFT vs random order on synthetic addition, at a fixed training budget.

A measurement, not a test: every arm trains the same tiny Llama (same initial weights for a given seed) on the
same training set, for the same number of optimizer steps, with the same batch size, learning rate and LR
schedule. Only the order in which examples are drawn differs:

* ``random``      plain ``trl.SFTTrainer`` (its default random order, reshuffled every epoch);
* ``curriculum``  ``CurriculumSFTTrainer``, one stage, easy to hard by the ``difficulty`` column (digits), root pacing;
* ``anti``        the same, hard to easy (``curriculum_pacing='anti'``: linear pacing over the reversed order);
* ``two_stage``   reasoning examples first, then direct answers (``curriculum_stage_column='stage'``), easy to
                  hard with the same root pacing inside each stage;
* ``uniform``     (not run by default) ``CurriculumSFTTrainer`` with ``curriculum_pacing='none'``: a control
                  that should match ``random`` in distribution; it checks that the trainer changes nothing but order.

Each seed sets the initial weights and the data order (``args.seed``, which the curriculum sampler also uses);
the training and test sets are fixed (``--data_seed``). After training, every model is scored on a held-out
set of addition problems of every difficulty: mean completion-token loss (the tokens SFT trains on), overall,
per number of digits and per answer style, and greedy exact match of the final ``Answer: N``.

Run from the repository root (offline, CPU):

    python benchmarks/curriculum_vs_random.py            # default: about 4 minutes on 2 idle CPU cores
    python benchmarks/curriculum_vs_random.py --quick    # reduced setting: about 80 seconds

At the default budget (250 steps x 16 = 4000 samples = one epoch of the 4000 training problems) every arm trains on
each training example exactly once: the arms differ in order only. See benchmarks/README.md for how to read the output.

It prints markdown tables and writes every number, per run and summarised, to ``--output_json``.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ARMS = ("random", "curriculum", "anti", "two_stage", "uniform")
DEFAULT_ARMS = ("random", "curriculum", "anti", "two_stage")
BASELINE = "random"
TEST_SEED_OFFSET = 1_000_003  # the test set's generator seed is data_seed + this: disjoint from the training draw
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "curriculum_vs_random.json"
QUICK = dict(steps=50, train_size=800, test_size=200)  # one epoch, like the default

# Two-sided 95% Student-t quantiles by degrees of freedom (no scipy dependency).
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


# ---------------------------------------------------------------------------------------------------- arguments
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=250, help="optimizer steps per run, identical for every arm (250)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="seeds; each sets the initial weights and the data order of every arm (0 1 2)",
    )
    p.add_argument("--train_size", type=int, default=4000, help="training examples, the same for every arm (4000)")
    p.add_argument("--test_size", type=int, default=400, help="held-out examples, all difficulties (400)")
    p.add_argument(
        "--quick", action="store_true", help=f"reduced setting: {QUICK} unless those flags are given explicitly"
    )
    p.add_argument(
        "--arms",
        nargs="+",
        default=list(DEFAULT_ARMS),
        choices=ARMS,
        help=f"arms to run ({' '.join(DEFAULT_ARMS)}); 'uniform' is an extra control",
    )
    p.add_argument("--batch_size", type=int, default=16, help="per-step batch size (16)")
    p.add_argument("--learning_rate", type=float, default=3e-3, help="peak LR, cosine decay, 5%% warmup (3e-3)")
    p.add_argument("--warmup", type=float, default=0.05, help="warmup, as a fraction of the steps (0.05)")
    p.add_argument("--hidden_size", type=int, default=64, help="tiny Llama width (64)")
    p.add_argument("--num_layers", type=int, default=2, help="tiny Llama depth (2)")
    p.add_argument("--max_digits", type=int, default=4, help="hardest problems: this many digits per operand (4)")
    p.add_argument("--data_seed", type=int, default=0, help="seed of the training/test problems, fixed across runs")
    p.add_argument("--pacing", default="root", help="pacing of the curriculum and two_stage arms (root)")
    p.add_argument("--c0", type=float, default=0.1, help="initial competence of the curricula (0.1)")
    p.add_argument(
        "--duration",
        type=float,
        default=0.8,
        help="fraction of training (of each stage) after which all data is open (0.8)",
    )
    p.add_argument("--no_generate", action="store_true", help="skip greedy exact-match evaluation")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1). A model this small gains little from more; one thread is the fastest\n"
        "on a shared machine, and a fixed count keeps the numbers reproducible across machines",
    )
    p.add_argument("--output_json", default=str(DEFAULT_JSON), help=f"where to write results ({DEFAULT_JSON.name})")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]) if a.startswith("--")}
        for key, value in QUICK.items():
            if f"--{key}" not in given:
                setattr(args, key, value)
    if len(set(args.seeds)) != len(args.seeds):
        p.error("--seeds has duplicates")
    if args.steps < 1 or args.train_size < 1 or args.test_size < 1:
        p.error("--steps, --train_size and --test_size must be positive")
    return args


# ---------------------------------------------------------------------------------------------------- data
_QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
_ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def prepare_datasets(tokenizer, args, workdir: str):
    """Tokenize train and test sets once, with SFTTrainer's own pipeline, so every arm gets identical inputs.

    The prepared datasets keep ``stage`` and ``difficulty`` next to ``input_ids``/``labels`` (prompt tokens are
    -100); SFTTrainer skips tokenization for data that already has ``input_ids``.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from trl_edge.testing import arithmetic_examples, build_tiny_model

    train = Dataset.from_list(arithmetic_examples(args.train_size, seed=args.data_seed, max_digits=args.max_digits))
    test = Dataset.from_list(
        arithmetic_examples(args.test_size, seed=args.data_seed + TEST_SEED_OFFSET, max_digits=args.max_digits)
    )
    config = SFTConfig(**common_config_kwargs(args, seed=0, output_dir=os.path.join(workdir, "prepare")))
    trainer = SFTTrainer(
        model=build_tiny_model(tokenizer, hidden_size=8, num_layers=1),
        args=config,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
    )
    train, test = trainer.train_dataset, trainer.eval_dataset
    if len(train) != args.train_size or len(test) != args.test_size:
        raise RuntimeError("SFT preparation dropped examples; raise max_length.")
    return train, test


def sequence_key(input_ids) -> tuple:
    return tuple(int(t) for t in input_ids)


# ---------------------------------------------------------------------------------------------------- trainers
def common_config_kwargs(args, seed: int, output_dir: str) -> dict:
    """Everything but the curriculum: identical for every arm."""
    return dict(
        output_dir=output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=args.warmup,
        weight_decay=0.0,
        max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 10),
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        dataloader_drop_last=False,
        disable_tqdm=True,
        max_length=128,
        packing=False,
    )


def curriculum_kwargs(arm: str, args) -> dict:
    pacing = dict(curriculum_c0=args.c0, curriculum_duration=args.duration)
    if arm == "curriculum":
        return dict(curriculum_pacing=args.pacing, curriculum_difficulty="column", **pacing)
    if arm == "anti":
        return dict(curriculum_pacing="anti", curriculum_difficulty="column", **pacing)
    if arm == "two_stage":
        return dict(
            curriculum_pacing=args.pacing,
            curriculum_difficulty="column",
            curriculum_stage_column="stage",
            curriculum_stages=["reasoning", "direct"],
            **pacing,
        )
    if arm == "uniform":
        return dict(curriculum_pacing="none", curriculum_difficulty="none")
    raise ValueError(arm)


def build_trainer(arm: str, seed: int, tokenizer, train, args, workdir: str):
    from trl import SFTConfig, SFTTrainer

    from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer
    from trl_edge.testing import build_tiny_model

    model = build_tiny_model(
        tokenizer, arch="llama", hidden_size=args.hidden_size, num_layers=args.num_layers, seed=seed
    )
    common = common_config_kwargs(args, seed, output_dir=os.path.join(workdir, f"{arm}-{seed}"))
    if arm == BASELINE:
        return SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=train, processing_class=tokenizer)
    config = CurriculumSFTConfig(**common, **curriculum_kwargs(arm, args))
    return CurriculumSFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer)


class RecordingCollator:
    """Wraps the trainer's collator and records, in order, every training example the model actually sees."""

    def __init__(self, collator, row_of: dict):
        self.collator, self.row_of, self.rows = collator, row_of, []

    def __call__(self, features):
        self.rows.extend(self.row_of[sequence_key(f["input_ids"])] for f in features)
        return self.collator(features)


# ---------------------------------------------------------------------------------------------------- evaluation
def _torch():
    import torch

    return torch


def completion_nll(model, dataset, pad_id: int, batch_size: int = 64):
    """Per example: summed NLL (nats) and count of its completion tokens (labels != -100), teacher-forced."""
    from trl_edge.curriculum.scorers import sequence_nll

    return sequence_nll(model, dataset["input_ids"], dataset["labels"], batch_size, pad_id)


def greedy_answers(model, tokenizer, dataset, max_new_tokens: int, batch_size: int = 200):
    """Greedy completions of the test prompts: (correct final answer?, answered in the direct style?) per example."""
    torch = _torch()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p in dataset["prompt"]]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    correct, direct = np.zeros(len(prompts), bool), np.zeros(len(prompts), bool)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            width = max(len(p) for p in chunk)
            x = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])  # left padding
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            out = model.generate(
                input_ids=x,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
            for j, text in enumerate(texts):
                i = start + j
                a, b = map(int, _QUESTION.search(dataset[i]["prompt"][0]["content"]).groups())
                m = _ANSWER.search(text)
                correct[i] = m is not None and int(m.group(1)) == a + b
                direct[i] = text.lstrip().startswith("Answer")
    return correct, direct


def evaluate(model, tokenizer, test, args) -> dict:
    nll_sum, n_tok = completion_nll(model, test, tokenizer.pad_token_id)
    difficulty, stage = np.asarray(test["difficulty"]), np.asarray(test["stage"])
    metrics = {"eval_loss": float(nll_sum.sum() / n_tok.sum())}
    for d in range(1, args.max_digits + 1):
        sel = difficulty == d
        metrics[f"eval_loss_d{d}"] = float(nll_sum[sel].sum() / n_tok[sel].sum()) if sel.any() else float("nan")
    for s in ("reasoning", "direct"):
        sel = stage == s
        metrics[f"eval_loss_{s}"] = float(nll_sum[sel].sum() / n_tok[sel].sum()) if sel.any() else float("nan")
    if not args.no_generate:
        max_new = int(max(np.count_nonzero(np.asarray(lab) != -100) for lab in test["labels"])) + 4
        correct, direct = greedy_answers(model, tokenizer, test, max_new)
        metrics["exact_match"] = float(correct.mean())
        for d in range(1, args.max_digits + 1):
            sel = difficulty == d
            metrics[f"exact_match_d{d}"] = float(correct[sel].mean()) if sel.any() else float("nan")
        metrics["direct_style"] = float(direct.mean())
    return metrics


# ---------------------------------------------------------------------------------------------------- one run
def run_one(arm: str, seed: int, tokenizer, train, test, row_of, args, workdir: str) -> dict:
    t0 = time.perf_counter()
    trainer = build_trainer(arm, seed, tokenizer, train, args, workdir)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # keep stdout for the tables; the losses go to the JSON
    recorder = RecordingCollator(trainer.data_collator, row_of)
    trainer.data_collator = recorder
    result = trainer.train()
    train_time = time.perf_counter() - t0
    if trainer.state.global_step != args.steps:
        raise RuntimeError(f"{arm}/{seed}: trained {trainer.state.global_step} steps, expected {args.steps}")
    metrics = evaluate(trainer.model, tokenizer, test, args)

    # What the model actually trained on, by quarter of training (recorded at the collator).
    seen = np.asarray(recorder.rows)
    difficulty, stage = np.asarray(train["difficulty"]), np.asarray(train["stage"])
    quarters = np.array_split(seen, 4)
    seen_stats = {
        "num_samples": int(seen.size),
        "unique_examples": int(np.unique(seen).size),
        "mean_difficulty_by_quarter": [float(difficulty[q].mean()) for q in quarters],
        "direct_share_by_quarter": [float((stage[q] == "direct").mean()) for q in quarters],
        "hardest_share": float((difficulty[seen] == args.max_digits).mean()),
    }
    history = [
        {"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h and "step" in h
    ]
    record = {
        "arm": arm,
        "seed": seed,
        "steps": trainer.state.global_step,
        "train_loss": float(result.training_loss),
        "train_seconds": round(train_time, 2),
        "metrics": metrics,
        "seen": seen_stats,
        "loss_history": history,
    }
    del trainer
    return record


# ---------------------------------------------------------------------------------------------------- statistics
def mean_std(values):
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def t95(df: int) -> float:
    if df < 1:
        return float("nan")
    keys = [k for k in sorted(_T95) if k <= df]
    return _T95[keys[-1]] if df <= 30 else 1.96


def summarise(records, arms, metric_names) -> dict:
    by = {(r["arm"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    summary = {"arms": {}, "vs_random": {}}
    for arm in arms:
        summary["arms"][arm] = {}
        for m in metric_names:
            mean, std = mean_std([by[(arm, s)]["metrics"][m] for s in seeds])
            summary["arms"][arm][m] = {"mean": mean, "std": std, "n": len(seeds)}
    if BASELINE in arms:
        for arm in arms:
            if arm == BASELINE:
                continue
            summary["vs_random"][arm] = {}
            for m in metric_names:
                diffs = [by[(arm, s)]["metrics"][m] - by[(BASELINE, s)]["metrics"][m] for s in seeds]
                mean, std = mean_std(diffs)
                half = t95(len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
                summary["vs_random"][arm][m] = {
                    "mean": mean,
                    "std": std,
                    "n": len(diffs),
                    "ci95": [mean - half, mean + half],
                    "per_seed": diffs,
                }
    return summary


# ---------------------------------------------------------------------------------------------------- tables
def _pm(stat, digits=3, scale=1.0, signed=False):
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f"{fmt.format(stat['mean'] * scale)} ± {stat['std'] * scale:.{digits}f}"


def tables(summary, records, arms, args, n_distinct: int) -> str:
    d = range(1, args.max_digits + 1)
    n = len({r["seed"] for r in records})
    out = []
    cols = ["eval_loss"] + [f"eval_loss_d{i}" for i in d] + ["eval_loss_reasoning", "eval_loss_direct"]
    head = ["all"] + [f"{i}-digit" for i in d] + ["reasoning", "direct"]
    out.append(f"Held-out completion-token loss (nats/token; mean ± std over {n} seeds; lower is better)\n")
    out.append("| arm | " + " | ".join(head) + " |")
    out.append("|---|" + "---|" * len(head))
    for arm in arms:
        out.append(f"| {arm} | " + " | ".join(_pm(summary["arms"][arm][c]) for c in cols) + " |")

    if not args.no_generate:
        acc = ["exact_match"] + [f"exact_match_d{i}" for i in d] + ["direct_style"]
        head = ["all"] + [f"{i}-digit" for i in d] + ["answers directly"]
        out.append(f"\nGreedy exact match of the final answer, % (mean ± std over {n} seeds; higher is better)\n")
        out.append("| arm | " + " | ".join(head) + " |")
        out.append("|---|" + "---|" * len(head))
        for arm in arms:
            out.append(f"| {arm} | " + " | ".join(_pm(summary["arms"][arm][c], 1, 100) for c in acc) + " |")

    if summary["vs_random"]:
        dcols = ["eval_loss"] + [f"eval_loss_d{i}" for i in d]
        head = ["Δ loss all"] + [f"Δ loss {i}-digit" for i in d]
        if not args.no_generate:
            dcols.append("exact_match")
            head.append("Δ exact match (pts)")
        out.append(
            f"\nDifference arm − random, paired by seed (same initial weights); mean ± std over {n} seeds, "
            "[95% t-interval] (negative loss / positive accuracy favours the arm)\n"
        )
        out.append("| arm | " + " | ".join(head) + " |")
        out.append("|---|" + "---|" * len(head))
        for arm, stats in summary["vs_random"].items():
            cells = []
            for c in dcols:
                scale = 100 if c == "exact_match" else 1
                digits = 1 if c == "exact_match" else 3
                lo, hi = (x * scale for x in stats[c]["ci95"])
                ci = f" [{lo:+.{digits}f}, {hi:+.{digits}f}]" if stats[c]["n"] > 1 else ""
                cells.append(f"{_pm(stats[c], digits, scale, signed=True)}{ci}")
            out.append(f"| {arm} | " + " | ".join(cells) + " |")

    out.append(
        "\nWhat each arm trained on (recorded at the collator; mean over seeds): mean digits of the examples "
        "by quarter of training, share of direct-answer examples by quarter, distinct training sequences seen\n"
    )
    out.append("| arm | mean digits Q1 / Q2 / Q3 / Q4 | direct share Q1 / Q2 / Q3 / Q4 | distinct sequences seen |")
    out.append("|---|---|---|---|")
    for arm in arms:
        rs = [r["seen"] for r in records if r["arm"] == arm]
        digits = np.mean([r["mean_difficulty_by_quarter"] for r in rs], axis=0)
        direct = np.mean([r["direct_share_by_quarter"] for r in rs], axis=0)
        uniq = np.mean([r["unique_examples"] for r in rs])
        out.append(
            f"| {arm} | {' / '.join(f'{x:.2f}' for x in digits)} | {' / '.join(f'{x:.2f}' for x in direct)} | "
            f"{uniq:.0f} of {n_distinct} |"
        )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- main
def quiet():
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    import logging

    for name in ("trl", "transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> dict:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    quiet()
    torch = _torch()
    torch.set_num_threads(args.threads)
    import datasets
    import transformers
    import trl

    from trl_edge.testing import build_tokenizer

    tokenizer = build_tokenizer()
    metric_names = (
        ["eval_loss"]
        + [f"eval_loss_d{i}" for i in range(1, args.max_digits + 1)]
        + ["eval_loss_reasoning", "eval_loss_direct"]
    )
    if not args.no_generate:
        metric_names += ["exact_match"] + [f"exact_match_d{i}" for i in range(1, args.max_digits + 1)]
        metric_names += ["direct_style"]

    records = []
    with tempfile.TemporaryDirectory(prefix="curriculum_vs_random_") as workdir:
        train, test = prepare_datasets(tokenizer, args, workdir)
        row_of = {sequence_key(ids): i for i, ids in enumerate(train["input_ids"])}
        in_train = np.array([sequence_key(ids) in row_of for ids in test["input_ids"]])
        test_difficulty = np.asarray(test["difficulty"])
        overlap = {"all": float(in_train.mean())}
        for d in range(1, args.max_digits + 1):
            if (test_difficulty == d).any():
                overlap[f"d{d}"] = float(in_train[test_difficulty == d].mean())
        samples = args.steps * args.batch_size
        print(
            f"# curriculum vs random: {len(args.arms)} arms x {len(args.seeds)} seeds, {args.steps} steps x batch "
            f"{args.batch_size} = {samples} samples ({samples / args.train_size:.2f} epochs of {args.train_size}); "
            f"test {args.test_size}",
            file=sys.stderr,
            flush=True,
        )
        for seed in args.seeds:
            for arm in args.arms:
                rec = run_one(arm, seed, tokenizer, train, test, row_of, args, workdir)
                records.append(rec)
                m = rec["metrics"]
                em = f", exact match {m['exact_match'] * 100:.1f}%" if "exact_match" in m else ""
                print(
                    f"  {arm:>10} seed {seed}: eval_loss {m['eval_loss']:.4f}{em}  ({rec['train_seconds']:.1f}s)",
                    file=sys.stderr,
                    flush=True,
                )

    summary = summarise(records, args.arms, metric_names)
    wall = time.perf_counter() - wall0
    table = tables(summary, records, args.arms, args, n_distinct=len(row_of))
    command = "python benchmarks/curriculum_vs_random.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"**Curriculum vs random order**: {args.steps} steps x batch {args.batch_size}, seeds {args.seeds}\n")
    print(table)
    by_d = ", ".join(f"{k[1:]}-digit {v * 100:.0f}%" for k, v in overlap.items() if k != "all")
    print(
        f"\nHeld-out problems that also occur in the training set: {overlap['all'] * 100:.0f}% ({by_d}). "
        f"Wall time {wall:.0f}s."
    )

    out = {
        "command": command.strip(),
        "config": {k: v for k, v in vars(args).items() if k != "output_json"},
        "setup": {
            "model": f"tiny Llama, hidden {args.hidden_size}, {args.num_layers} layers (trl_edge.testing)",
            "samples_per_run": samples,
            "epochs": samples / args.train_size,
            "lr_schedule": f"cosine, peak {args.learning_rate}, warmup {args.warmup} of the steps",
            "test_seed": args.data_seed + TEST_SEED_OFFSET,
            "test_train_overlap": overlap,
            "eval_loss": "mean NLL per completion token (labels != -100), token-weighted over the test set",
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
            "datasets": datasets.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },
        "wall_seconds": round(wall, 1),
        "summary": summary,
        "runs": records,
        "table_markdown": table,
    }
    path = Path(args.output_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"Results written to {path}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()
