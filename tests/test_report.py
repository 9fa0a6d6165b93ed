"""The report's loss plot: the training stages on one cumulative step axis, the divergence on its own panel."""

import json

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trl_edge.pipeline.config import StageSpec  # noqa: E402
from trl_edge.pipeline.report import collect, cumulative_offsets, loss_figure, write_report  # noqa: E402
from trl_edge.pipeline.runner import PlannedStage  # noqa: E402


def _training_stage(tmp_path, index, name, kind, steps, logs):
    spec = StageSpec(index=index, name=name, base_name=name, kind=kind, settings={})
    directory = tmp_path / spec.dir_name
    (directory / "model").mkdir(parents=True)
    state = {"global_step": steps, "log_history": [{"step": s, **values} for s, values in logs]}
    (directory / "model/trainer_state.json").write_text(json.dumps(state))
    return PlannedStage(spec=spec, directory=directory, config={}, inputs=[], record={"seconds": 1.0,
                        "storage_bytes": 10})  # fmt: skip


def _stages(tmp_path):
    sft = _training_stage(tmp_path, 1, "sft", "sft", 12, [(5, {"loss": 3.0}), (10, {"loss": 2.0})])
    kd = [
        _training_stage(tmp_path, i, f"kd-r{r}", "kd", 6, [(s, {"loss": 1.0, "kd_loss": 0.1 * s, "ce_loss": 2.5})
                                                        for s in (3, 6)])  # fmt: skip
        for r, i in ((1, 4), (2, 7))
    ]
    return [sft, *kd]


def test_training_stages_follow_each_other_on_one_step_axis(tmp_path):
    data = collect(_stages(tmp_path), models={})
    # the SFT stage took 12 steps though it last logged at 10: the first round starts at 12, the second at 18
    assert data["training_steps"] == {"01-sft": 12, "04-kd-r1": 6, "07-kd-r2": 6}
    assert cumulative_offsets(data) == {"01-sft": 0, "04-kd-r1": 12, "07-kd-r2": 18}


def test_the_divergence_has_its_own_panel_and_the_rounds_come_after_sft(tmp_path):
    fig = loss_figure(plt, collect(_stages(tmp_path), models={}))
    ce_ax, kd_ax = fig.axes
    lines = {line.get_label(): line for line in ce_ax.get_lines() if not line.get_label().startswith("_")}
    assert list(lines) == ["01-sft (CE)", "04-kd-r1 (CE)", "07-kd-r2 (CE)"]
    assert list(lines["01-sft (CE)"].get_xdata()) == [5, 10]
    assert list(lines["04-kd-r1 (CE)"].get_xdata()) == [15, 18]
    assert list(lines["07-kd-r2 (CE)"].get_xdata()) == [21, 24]
    assert list(lines["07-kd-r2 (CE)"].get_ydata()) == [2.5, 2.5]  # the KD stage's CE term, not its total loss
    divergence = [line for line in kd_ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in divergence] == ["04-kd-r1 (divergence)", "07-kd-r2 (divergence)"]
    assert list(divergence[1].get_ydata()) == [0.30000000000000004, 0.6000000000000001]
    # every stage boundary is marked on both panels, and named
    boundaries = {line.get_xdata()[0] for line in ce_ax.get_lines() if line.get_label().startswith("_")}
    assert {0, 12, 18, 24} <= boundaries
    assert {t.get_text() for t in ce_ax.texts} == {"01-sft", "04-kd-r1", "07-kd-r2"}
    plt.close(fig)


def test_an_sft_only_run_has_one_panel(tmp_path):
    sft = _training_stage(tmp_path, 0, "sft", "sft", 4, [(2, {"loss": 3.0}), (4, {"loss": 2.0})])
    fig = loss_figure(plt, collect([sft], models={}))
    assert len(fig.axes) == 1
    plt.close(fig)
    data = write_report([sft], tmp_path / "report", models={})
    assert (tmp_path / "report/loss_curves.png").stat().st_size > 1000 and data["training_steps"] == {"00-sft": 4}


def _eval_stage(tmp_path, index, name, model, kl, rouge, exact):
    spec = StageSpec(index=index, name=name, base_name=name, kind="eval", settings={})
    directory = tmp_path / spec.dir_name
    (directory / "eval").mkdir(parents=True)
    metrics = {"fidelity/kl": sum(kl) / len(kl), "generation/rouge_l": sum(rouge) / len(rouge)}
    (directory / "eval/metrics.json").write_text(json.dumps(metrics))
    (directory / "eval/fidelity_per_sample.json").write_text(json.dumps({"kl": kl, "top1_agreement": kl,
                                                                         "num_positions": [3] * len(kl)}))  # fmt: skip
    (directory / "eval/generations.jsonl").write_text(
        "".join(json.dumps({"rouge_l": r, "exact_match": e}) + "\n" for r, e in zip(rouge, exact))
    )
    return PlannedStage(spec=spec, directory=directory, config={"model": model}, inputs=[], record={"seconds": 1.0,
                        "storage_bytes": 10})  # fmt: skip


def test_the_report_shows_each_rounds_gain_over_sft_with_paired_intervals(tmp_path):
    import numpy as np

    sft = _training_stage(tmp_path, 1, "sft", "sft", 4, [(2, {"loss": 3.0})])
    kd = _training_stage(tmp_path, 3, "kd-r1", "kd", 4, [(2, {"loss": 1.0, "kd_loss": 0.5, "ce_loss": 2.0})])
    rng = np.random.default_rng(0)
    kl_sft, kl_kd = rng.uniform(1, 3, 40), rng.uniform(0.5, 2.5, 40)
    rouge_sft, rouge_kd = rng.uniform(0, 1, 40), rng.uniform(0, 1, 40)
    exact_sft = [None if i % 5 == 0 else float(i % 2) for i in range(40)]  # open questions have no ground truth
    exact_kd = [None if i % 5 == 0 else float(i % 3 == 0) for i in range(40)]
    stages = [sft, _eval_stage(tmp_path, 2, "eval-sft", str(sft.directory / "model"), list(kl_sft),
                               list(rouge_sft), exact_sft),
              kd, _eval_stage(tmp_path, 4, "eval-r1", str(kd.directory / "model"), list(kl_kd), list(rouge_kd),
                              exact_kd)]  # fmt: skip
    data = write_report(stages, tmp_path / "report", models={})
    gains = data["gains_over_sft"]
    assert gains["baseline"] == "02-eval-sft" and [r["stage"] for r in gains["rows"]] == ["04-eval-r1"]
    figures = gains["rows"][0]["figures"]
    diff = kl_kd - kl_sft  # the paired interval, computed another way
    assert figures["fidelity/kl"]["mean"] == pytest.approx(diff.mean())
    assert figures["fidelity/kl"]["half_width"] == pytest.approx(1.96 * diff.std(ddof=1) / 40**0.5)
    pairs = [(a, b) for a, b in zip(exact_kd, exact_sft) if a is not None]
    assert figures["generation/exact_match"]["n"] == len(pairs) == 32
    assert figures["generation/exact_match"]["mean"] == pytest.approx(np.mean([a - b for a, b in pairs]))
    report = (tmp_path / "report/report.md").read_text()
    assert "## Gain over SFT (`02-eval-sft`)" in report and f"{diff.mean():+.4g} ±" in report
