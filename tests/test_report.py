"""The report's loss plot: the training stages on one cumulative step axis, the divergence on its own panel."""

import json

import matplotlib

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
