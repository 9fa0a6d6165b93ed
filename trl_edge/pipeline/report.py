"""The pipeline's report: ``report.md``, ``metrics.json`` and PNG plots in its output directory.

It reads what the stages left: their records (time, storage), their trainers' logs (``trainer_state.json``: the
loss curves) and their evaluations (``eval/metrics.json``), and puts each metric after each stage next to the
teacher's (an ``eval`` stage of the teacher is the reference line).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..sealed_files import atomic_write
from .runner import PlannedStage

HEADLINE = ("fidelity/kl", "fidelity/top1_agreement", "generation/rouge_l", "generation/exact_match")


def _loss_curves(stage: PlannedStage) -> dict[str, list]:
    state = stage.directory / "model" / "trainer_state.json"
    if not state.is_file():
        return {}
    history = json.loads(state.read_text()).get("log_history", [])
    curves: dict[str, list] = {}
    for entry in history:
        for key in ("loss", "kd_loss", "ce_loss", "eval_loss"):
            if key in entry and "step" in entry:
                curves.setdefault(key, []).append((entry["step"], entry[key]))
    return curves


def _training_steps(stage: PlannedStage) -> int | None:
    """How many optimizer steps a training stage took (its trainer's ``global_step``): its width on the report's
    cumulative step axis."""
    state = stage.directory / "model" / "trainer_state.json"
    if not state.is_file():
        return None
    return json.loads(state.read_text()).get("global_step")


def _evaluation(stage: PlannedStage) -> dict | None:
    path = stage.directory / "eval" / "metrics.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if isinstance(v, int | float)}


GAIN_FIGURES = {  # figure -> where its per-prompt values are, and whether lower is better
    "fidelity/kl": ("fidelity_per_sample.json", "kl"),
    "fidelity/top1_agreement": ("fidelity_per_sample.json", "top1_agreement"),
    "generation/rouge_l": ("generations.jsonl", "rouge_l"),
    "generation/exact_match": ("generations.jsonl", "exact_match"),
}


def _per_prompt(stage: PlannedStage) -> dict[str, list]:
    """Each headline figure prompt by prompt (the eval stage's per-sample files), for paired comparisons."""
    directory, out = stage.directory / "eval", {}
    fidelity, generations = directory / "fidelity_per_sample.json", directory / "generations.jsonl"
    per_sample = json.loads(fidelity.read_text()) if fidelity.is_file() else {}
    rows = [json.loads(x) for x in generations.read_text().splitlines() if x.strip()] if generations.is_file() else []
    for figure, (file, key) in GAIN_FIGURES.items():
        values = per_sample.get(key) if file.endswith(".json") else [r.get(key) for r in rows] if rows else None
        if values:
            out[figure] = values
    return out


def paired_gain(after: list, before: list) -> dict | None:
    """Mean of ``after - before`` over the prompts both have a value for, with a 95% half-width (normal
    approximation): the gain of one model over another on the same prompts."""
    if len(after) != len(before):
        return None
    diffs = [a - b for a, b in zip(after, before) if a is not None and b is not None and a == a and b == b]
    if len(diffs) < 2:
        return None
    mean = sum(diffs) / len(diffs)
    sd = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
    return {"mean": mean, "half_width": 1.96 * sd / len(diffs) ** 0.5, "n": len(diffs)}


def _gains_over_sft(stages: list[PlannedStage], evaluations: list[dict]) -> dict:
    """Every student evaluation after the first one of an SFT stage's model, against it, figure by figure."""
    kinds = {s.spec.name: s.spec.kind for s in stages}
    by_dir = {s.spec.dir_name: s for s in stages}
    base = next((e for e in evaluations if kinds.get(e["model"]) == "sft"), None)
    if base is None:
        return {}
    before = _per_prompt(by_dir[base["stage"]])
    gains = {"baseline": base["stage"], "rows": []}
    started = False
    for e in evaluations:
        started = started or e is base
        if not started or e is base or e["model"] == "teacher":
            continue
        after = _per_prompt(by_dir[e["stage"]])
        figures = {f: paired_gain(after[f], before[f]) for f in GAIN_FIGURES if f in after and f in before}
        gains["rows"].append({"stage": e["stage"], "model": e["model"], "figures": figures})
    return gains


def _side_records(stages: list[PlannedStage]) -> tuple[dict, dict]:
    """What the teacher-answer stages measured (answer lengths, the teacher) and what each KD stage learned from
    (its caches, who wrote them, their CE weights, the on-policy drift)."""
    answers, kd = {}, {}
    for stage in stages:
        if stage.spec.kind == "teacher_answers":
            path = stage.directory / "answers" / "teacher_answers.json"
            if path.is_file():
                answers[stage.spec.dir_name] = json.loads(path.read_text())
        if stage.spec.kind == "kd":
            path = stage.directory / "model" / "distillation_sources.json"
            if path.is_file():
                kd[stage.spec.dir_name] = json.loads(path.read_text())
    return answers, kd


def _model_label(stage: PlannedStage, stages: list[PlannedStage], models: dict) -> str:
    """What an eval stage evaluated: a model of `models` by name, or the stage whose output it is."""
    model = str(stage.config.get("model", ""))
    for name, value in models.items():
        if model == str(value):
            return name
    for other in stages:
        if model.startswith(str(other.directory)):
            return other.spec.name
    return model


def collect(stages: list[PlannedStage], models: dict) -> dict:
    """Everything the report shows, as one JSON-ready dict."""
    out = {"stages": [], "evaluations": [], "loss_curves": {}, "training_steps": {}}
    for stage in stages:
        record = stage.record or {}
        out["stages"].append({
            "stage": stage.spec.dir_name, "kind": stage.spec.kind, "round": stage.spec.round,
            "status": "done" if stage.record else "not done", "seconds": record.get("seconds"),
            "storage_bytes": record.get("storage_bytes"), "artifact_hash": record.get("artifact_hash"),
        })  # fmt: skip
        curves = _loss_curves(stage)
        if curves:
            out["loss_curves"][stage.spec.dir_name] = curves
            out["training_steps"][stage.spec.dir_name] = _training_steps(stage) or max(
                step for points in curves.values() for step, _ in points
            )
        metrics = _evaluation(stage)
        if metrics is not None:
            label = _model_label(stage, stages, models)
            out["evaluations"].append({"stage": stage.spec.dir_name, "model": label, "metrics": metrics})
    teacher = [e for e in out["evaluations"] if e["model"] == "teacher"]
    out["teacher"] = teacher[-1]["metrics"] if teacher else None
    out["gains_over_sft"] = _gains_over_sft(stages, out["evaluations"])
    out["teacher_answers"], out["kd_sources"] = _side_records(stages)
    return out


def _plots(data: dict, output_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if data["loss_curves"]:
        fig = loss_figure(plt, data)
        fig.savefig(output_dir / "loss_curves.png", dpi=110)
        plt.close(fig)
        written.append("loss_curves.png")
    students = [e for e in data["evaluations"] if e["model"] != "teacher"]
    names = [m for m in HEADLINE if any(m in e["metrics"] for e in data["evaluations"])]
    if students and names:
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.8), squeeze=False)
        for ax, metric in zip(axes[0], names):
            points = [(e["stage"], e["metrics"][metric]) for e in students if metric in e["metrics"]]
            ax.plot(range(len(points)), [v for _, v in points], marker="o", label="student")
            ax.set_xticks(range(len(points)), [s for s, _ in points], rotation=40, ha="right", fontsize=7)
            if data["teacher"] and metric in data["teacher"]:
                ax.axhline(data["teacher"][metric], color="gray", linestyle="--", label="teacher")
            ax.set_title(metric, fontsize=9)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / "metrics.png", dpi=110)
        plt.close(fig)
        written.append("metrics.png")
    done = [s for s in data["stages"] if s["seconds"] is not None]
    if done:
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.35 * len(done) + 1.5))
        labels = [s["stage"] for s in done]
        left.barh(labels, [s["seconds"] for s in done])
        left.set(xlabel="seconds", title="Time per stage")
        right.barh(labels, [s["storage_bytes"] / 1e6 for s in done])
        right.set(xlabel="MB", title="Storage per stage")
        for ax in (left, right):
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(output_dir / "resources.png", dpi=110)
        plt.close(fig)
        written.append("resources.png")
    return written


def cumulative_offsets(data: dict) -> dict[str, int]:
    """The step at which each training stage starts on one axis for the whole run: the stages one after another, in
    pipeline order, each as wide as the optimizer steps it took."""
    offsets, total = {}, 0
    for stage in data["loss_curves"]:
        offsets[stage] = total
        total += int(data["training_steps"].get(stage) or 0)
    return offsets


def loss_figure(plt, data: dict):
    """Cross-entropy (SFT's loss, KD's CE term) above, the KD divergence below, each stage at its place on one
    cumulative step axis with its boundaries marked and named: the curves read as one training run."""
    curves, offsets = data["loss_curves"], cumulative_offsets(data)
    has_divergence = any("kd_loss" in c for c in curves.values())
    rows = 2 if has_divergence else 1
    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows + 0.6), sharex=True, squeeze=False)
    ce_ax, kd_ax = axes[0][0], axes[-1][0] if has_divergence else None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    end = 0
    for i, (stage, stage_curves) in enumerate(curves.items()):
        color, start = colors[i % len(colors)], offsets[stage]
        end = start + int(data["training_steps"].get(stage) or 0)
        panels = [("ce_loss", ce_ax, "CE"), ("kd_loss", kd_ax, "divergence")] if "kd_loss" in stage_curves else []
        panels = panels or [("loss", ce_ax, "CE")]  # an SFT stage: its loss is the cross-entropy
        for key, ax, label, style in [(*p, "-") for p in panels] + [("eval_loss", ce_ax, "eval", ":")]:
            if key in stage_curves:
                steps, values = zip(*stage_curves[key])
                ax.plot([start + x for x in steps], values, style, marker=".", color=color, label=f"{stage} ({label})")
        for ax in axes[:, 0]:
            ax.axvline(start, color="gray", linewidth=0.6, linestyle="--")
            ax.axvspan(start, end, color=color, alpha=0.05)
        ce_ax.annotate(stage, xy=(start, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                       textcoords="offset points", ha="left", va="top", fontsize=7, rotation=90, color="dimgray")
    for ax in axes[:, 0]:
        ax.axvline(end, color="gray", linewidth=0.6, linestyle="--")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
    ce_ax.set(ylabel="cross-entropy (nats/token)", title="Training loss per stage, on the run's cumulative steps")
    if kd_ax is not None:
        kd_ax.set(ylabel="KD divergence")
    axes[-1][0].set(xlabel="optimizer step (cumulative over the pipeline's training stages)")
    fig.tight_layout()
    return fig


def _markdown(data: dict, plots: list[str], source: str | None) -> str:
    lines = [f"# Pipeline report{f': `{source}`' if source else ''}", ""]
    lines += [
        "## Stages",
        "",
        "| stage | kind | status | time (s) | storage (MB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in data["stages"]:
        seconds = f"{s['seconds']:.1f}" if s["seconds"] is not None else "-"
        storage = f"{s['storage_bytes'] / 1e6:.1f}" if s["storage_bytes"] is not None else "-"
        lines.append(f"| {s['stage']} | {s['kind']} | {s['status']} | {seconds} | {storage} |")
    total = sum(s["seconds"] or 0 for s in data["stages"])
    lines += ["", f"Total time of the stages: {total:.1f} s.", ""]
    if data["evaluations"]:
        overall = sorted({m for e in data["evaluations"] for m in e["metrics"] if "/kind=" not in m} - _BOOKKEEPING)
        metrics = [m for m in HEADLINE if m in overall] + [m for m in overall if m not in HEADLINE]
        lines += ["## Evaluations", "", "Each row is one `eval` stage; `teacher` rows are the reference.", ""]
        lines += _table(data["evaluations"], metrics)
        for metric in ("generation/exact_match", "generation/rouge_l"):
            kinds = sorted({m.split("/kind=", 1)[1] for e in data["evaluations"] for m in e["metrics"]
                            if m.startswith(f"{metric}/kind=")})  # fmt: skip
            if kinds:
                lines += [f"### `{metric}` by kind of prompt", ""]
                lines += _table(data["evaluations"], [f"{metric}/kind={k}" for k in kinds], [f"`{k}`" for k in kinds])
    lines += _gains_markdown(data.get("gains_over_sft") or {})
    lines += _sources_markdown(data.get("teacher_answers") or {}, data.get("kd_sources") or {})
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def _gains_markdown(gains: dict) -> list[str]:
    if not gains.get("rows"):
        return []
    names = {"fidelity/kl": "KL (lower is better)", "fidelity/top1_agreement": "top-1 agreement",
             "generation/rouge_l": "ROUGE-L", "generation/exact_match": "accuracy"}  # fmt: skip
    lines = [f"## Gain over SFT (`{gains['baseline']}`)", "",
             "Each figure minus the SFT student's, prompt by prompt on the same held-out prompts: mean ± 95% "
             "half-width (normal approximation; an interval that excludes 0 is a gain or a loss).", "",
             "| stage | model | " + " | ".join(names.values()) + " |",
             "| --- | --- |" + " --- |" * len(names)]  # fmt: skip
    for row in gains["rows"]:
        cells = []
        for figure in names:
            g = row["figures"].get(figure)
            cells.append("-" if g is None else f"{g['mean']:+.4g} ± {g['half_width']:.2g}")
        lines.append(f"| {row['stage']} | {row['model']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _sources_markdown(answers: dict, kd: dict) -> list[str]:
    lines = []
    if answers:
        lines += ["## Teacher answers", "", "| stage | answers | tokens p50 / p95 / max | cut at max_new_tokens |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for stage, record in answers.items():
            n = record.get("lengths", {})
            lines.append(f"| {stage} | {n.get('answers')} | {n.get('p50', 0):.0f} / {n.get('p95', 0):.0f} / "
                         f"{n.get('max')} | {n.get('cut_share', 0):.1%} of {n.get('max_new_tokens')} |")  # fmt: skip
        lines.append("")
    if kd:
        lines += ["## What each KD stage learned from", "",
                  "Per cache: who wrote its tokens, its share, its loss weights; the on-policy drift is the mean "
                  "log-prob drift (nats/token) of the student from the policy that sampled the rollouts, at the "
                  "start and the end of the stage.", "",
                  "| stage | cache | written by | share | divergence weight | CE weight | drift start → end |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for stage, record in kd.items():
            drift = record.get("onpolicy_drift", {})
            for source in record.get("sources", []):
                d = drift.get(source["path"])
                nan = float("nan")
                moved = f"{d.get('drift_start', nan):.4f} → {d.get('drift_end', nan):.4f}" if d else "-"
                share = "-" if source.get("share") is None else f"{source['share']:.0%}"
                lines.append(f"| {stage} | {Path(source['path']).parent.name} | {source['written_by']} | {share} | "
                             f"{source['kd_weight']:g} | {source['ce_weight']:g} | {moved} |")  # fmt: skip
        lines.append("")
    return lines


_BOOKKEEPING = {"fidelity/num_positions", "fidelity/num_samples", "generation/num_examples"}


def _table(evaluations: list[dict], metrics: list[str], headers: list[str] | None = None) -> list[str]:
    lines = ["| stage | model | " + " | ".join(headers or metrics) + " |", "| --- | --- |" + " --- |" * len(metrics)]
    for e in evaluations:
        cells = [_fmt(e["metrics"].get(m)) for m in metrics]
        lines.append(f"| {e['stage']} | {e['model']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):  # missing, or NaN (nothing to measure)
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(stages: list[PlannedStage], output_dir: Path, models: dict, source: str | None = None) -> dict:
    """Write ``report.md``, ``metrics.json`` and the plots; returns what ``metrics.json`` holds."""
    output_dir.mkdir(parents=True, exist_ok=True)
    data = collect(stages, models)
    plots = _plots(data, output_dir)
    data["plots"] = plots
    atomic_write(output_dir / "metrics.json", json.dumps(data, indent=2).encode())
    atomic_write(output_dir / "report.md", _markdown(data, plots, source).encode())
    return data
