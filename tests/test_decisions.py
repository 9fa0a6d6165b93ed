"""The pipeline's skip / run / rerun / resume rules, case by case (``trl_edge.pipeline.decisions.decide``)."""

from pathlib import Path

import pytest

from trl_edge.cli.pipeline import pipeline_command
from trl_edge.pipeline.decisions import Decision, StageFacts, decide, what_changed

ROOT = Path(__file__).resolve().parents[1]
NOW = {"config": {"max_steps": 4, "dataset": "d"}, "inputs": {"/p/00-student": "h1"}, "data": {},
       "accelerate_config": "a"}  # fmt: skip
OLD = {**NOW, "config": {"max_steps": 2, "dataset": "d"}}
DONE = {"key": "k", "payload": NOW}
DONE_BEFORE = {"key": "old", "payload": OLD}
OTHER_INPUT = {"key": "old", "payload": {**NOW, "inputs": {"/p/00-student": "h0"}}}

CASES = [
    # (what the planner read, expected action, words the reason must hold)
    (dict(), "run", "not run yet"),
    (dict(record=DONE, has_files=True), "skip", "unchanged"),
    (dict(record=DONE_BEFORE, has_files=True), "rerun", "max_steps: 2 -> 4"),
    (dict(record=OTHER_INPUT, has_files=True), "rerun", "input 00-student changed"),
    (dict(record=DONE, has_files=True, earlier_runs="03-sft"), "rerun", "an earlier stage (03-sft) runs"),
    (dict(earlier_runs="03-sft"), "run", "not run yet"),  # nothing to throw away
    (dict(has_files=True, started={"key": "k", "payload": NOW}), "resume", "resumes from what it left"),
    (dict(has_files=True, started={"key": "k"}, trains=True, checkpoint="/p/07-sft/model/checkpoint-18"), "resume",
     "resumes from checkpoint-18"),
    (dict(has_files=True, started={"key": "k"}, trains=True), "resume", "before a complete checkpoint"),
    (dict(has_files=True, started={"key": "old", "payload": OLD}), "rerun", "interrupted, and settings changed: max"),
    (dict(has_files=True), "rerun", "interrupted, and settings changed"),  # no started marker: cannot trust it
    (dict(has_files=True, started={"key": "k"}, earlier_runs="01-a"), "rerun", "an earlier stage (01-a) runs"),
    (dict(record=DONE, has_files=True, after_until="sft"), "later", "after --until sft"),
    (dict(after_until="sft"), "later", "not run this time"),
]  # fmt: skip


@pytest.mark.parametrize("given, action, reason", CASES)
def test_decide(given, action, reason):
    decision = decide(StageFacts(key="k", payload=NOW, **given))
    assert isinstance(decision, Decision) and decision.action == action and reason in decision.reason


def test_what_changed_names_each_difference():
    changed = what_changed({**OLD, "data": {"x": 1}, "accelerate_config": "b"}, {**NOW, "inputs": {"/q/in": "h"}})
    assert changed == ("settings changed: max_steps: 2 -> 4; input in changed; its data files changed; "
                       "its accelerate config changed")  # fmt: skip
    assert what_changed(NOW, NOW) == "settings changed"


def test_the_plan_shows_the_stages_after_until_as_later(tmp_path, capsys):
    argv = ["--config", str(ROOT / "recipes/pipeline_tiny/pipeline.yaml"), "--output_dir", str(tmp_path)]
    assert pipeline_command([*argv, "--until", "sft", "--dry_run"]) == 0
    plan = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    actions = {row[0]: row[2] for row in plan}
    assert actions["07-sft"] == "RUN" and actions["08-eval-sft"] == "LATER" and actions["17-export"] == "LATER"
    assert all(actions[name] == "RUN" for name in list(actions)[:8])
