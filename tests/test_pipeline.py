"""The pipeline: the file format, references and rounds, the plan, and a real 2-round run that resumes and reports."""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trl_edge.pipeline import PipelineConfig, PipelineError, PipelineRunner

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
CPU = str(ROOT / "recipes/accelerate/cpu.yaml")
TRAIN = dict(max_steps=4, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, save_strategy="steps",
             save_steps=2, report_to="none", bf16=False, use_cpu=True, activation_checkpointing=False,
             disable_tqdm=True, seed=0, max_length=96)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from trl_edge.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {
        "teacher": save_tiny_checkpoint(str(root / "teacher"), arch="qwen2", hidden_size=64),
        "student": save_tiny_checkpoint(str(root / "student"), hidden_size=32),
    }


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    from trl_edge.testing import arithmetic_examples

    path = tmp_path_factory.mktemp("prompts") / "train.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "stage": r["stage"]}) + "\n"
                            for r in arithmetic_examples(12, seed=2)))  # fmt: skip
    return str(path.parent)


def two_rounds(output_dir, models, prompts, kd_learning_rate=3e-3):
    return {
        "output_dir": str(output_dir),
        "models": models,
        "defaults": {
            "accelerate_config": CPU,
            "teacher_answers": {"max_new_tokens": 8, "truncated_answers": "keep", "use_cpu": True, "shard_size": 6},
            "rollout": {"max_new_tokens": 8, "num_samples": 2, "use_cpu": True, "shard_size": 6},
            "cache": {"top_k": 8, "shard_size": 8, "use_cpu": True},
            "sft": TRAIN,
            "kd": {**TRAIN, "kd_weight": 0.9},
        },
        "stages": [
            {"name": "answers", "kind": "teacher_answers", "model": "@teacher", "dataset": prompts},
            {"name": "sft", "kind": "sft", "model": "@student", "dataset": "@answers"},
            {
                "repeat": 2,
                "stages": [
                    {"name": "rollout", "kind": "rollout", "model": "@model", "dataset": prompts},
                    {"name": "cache", "kind": "cache", "teacher": "@teacher", "dataset": "@rollout"},
                    {
                        "name": "kd",
                        "kind": "kd",
                        "model": "@model",
                        "teacher_cache": ["@cache", "@cache[-1]"],
                        "teacher_cache_weights": [0.7, 0.3],
                        "learning_rate": kd_learning_rate,
                    },
                ],
            },  # fmt: skip
            {
                "name": "eval",
                "kind": "eval",
                "model": "@model",
                "teacher_cache": "@cache-r2",
                "generation_dataset": "@answers",
                "max_new_tokens": 8,
            },  # fmt: skip
        ],
    }


def write(tmp_path, raw, name="pipeline.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def run(config_path, *extra, warm_start=True):
    extra = (*extra, "--warm_start", "true" if warm_start else "false")
    result = subprocess.run([sys.executable, "-m", "trl_edge.cli.main", "pipeline", "--config", config_path, *extra],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return result.stdout


def plan_lines(stdout):
    return {line.split()[0]: line.split()[2] for line in stdout.splitlines() if line.startswith("  ")}


def records(output_dir):
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(output_dir).glob("*/stage.json"))}


# ---------------------------------------------------------------- the file and the plan


def test_rounds_expand_and_references_resolve(tmp_path, models, prompts):
    runner = PipelineRunner(PipelineConfig.from_dict(two_rounds(tmp_path / "p", models, prompts)))
    names = [s.spec.dir_name for s in runner.stages]
    assert names == ["00-answers", "01-sft", "02-rollout-r1", "03-cache-r1", "04-kd-r1", "05-rollout-r2",
                     "06-cache-r2", "07-kd-r2", "08-eval"]  # fmt: skip
    by_name = {s.spec.name: s for s in runner.stages}
    out = tmp_path / "p"
    assert by_name["sft"].config["model_name_or_path"] == models["student"]
    assert by_name["sft"].config["dataset_name"] == str(out / "00-answers/answers")
    assert by_name["rollout-r1"].config["model_name_or_path"] == str(out / "01-sft/model")  # @model: the latest
    assert by_name["rollout-r2"].config["model_name_or_path"] == str(out / "04-kd-r1/model")
    assert (by_name["rollout-r1"].config["round"], by_name["rollout-r2"].config["seed"]) == (1, 2)  # a fresh draw
    assert by_name["kd-r1"].config["teacher_cache"] == [str(out / "03-cache-r1/cache")]  # no round 0: dropped
    assert by_name["kd-r1"].config["teacher_cache_weights"] == [0.7]
    assert by_name["kd-r2"].config["teacher_cache"] == [str(out / "06-cache-r2/cache"), str(out / "03-cache-r1/cache")]
    assert by_name["eval"].config["teacher_cache"] == str(out / "06-cache-r2/cache")
    assert by_name["answers"].config["rollouts_dir"] == str(out / "00-answers/rollouts")


def test_the_papers_variants_are_expressible(tmp_path, models, prompts):
    """SFT(reasoning) -> SFT(fast) -> KD(fast); and SFT and KD alternating."""
    staged = {"output_dir": str(tmp_path), "models": models, "stages": [
        {"name": "sft-reasoning", "kind": "sft", "model": "@student", "dataset": prompts},
        {"name": "sft-fast", "kind": "sft", "model": "@model", "dataset": prompts},
        {"name": "cache", "kind": "cache", "teacher": "@teacher", "dataset": prompts},
        {"name": "kd-fast", "kind": "kd", "model": "@model", "teacher_cache": "@cache"},
    ]}  # fmt: skip
    runner = PipelineRunner(PipelineConfig.from_dict(staged))
    assert runner.stages[1].config["model_name_or_path"] == str(tmp_path / "00-sft-reasoning/model")
    assert runner.stages[3].config["model_name_or_path"] == str(tmp_path / "01-sft-fast/model")
    alternating = {"output_dir": str(tmp_path), "models": models, "stages": [
        {"name": "cache", "kind": "cache", "teacher": "@teacher", "dataset": prompts},
        {"repeat": 2, "stages": [
            {"name": "sft", "kind": "sft", "model": "@model", "dataset": prompts},
            {"name": "kd", "kind": "kd", "model": "@model", "teacher_cache": "@cache"},
        ]},
    ]}  # fmt: skip
    stages = PipelineRunner(PipelineConfig.from_dict(alternating)).stages
    assert [s.config["model_name_or_path"] for s in stages[1:]] == [
        models["student"], str(tmp_path / "01-sft-r1/model"), str(tmp_path / "02-kd-r1/model"),
        str(tmp_path / "03-sft-r2/model"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda raw: raw["stages"][1].update(kind="train"), "kind 'train'"),
        (lambda raw: raw["stages"][1].update(dataset="@nowhere"), "'@nowhere' names no stage before it"),
        (lambda raw: raw["stages"][1].update(lerning_rate=1.0), "'lerning_rate' is not a setting.*'learning_rate'"),
        (lambda raw: raw["stages"].append(dict(raw["stages"][1])), "names must be unique"),
        (lambda raw: raw["stages"][2].update(repeat=0), "positive integer"),
        (lambda raw: raw.update(stagez=[]), "unknown top-level key"),
        (lambda raw: raw["stages"][1].update(accelerate_config="nope.yaml"), "is not a file"),
    ],
)
def test_a_bad_pipeline_fails_before_anything_runs(tmp_path, models, prompts, change, message):
    raw = two_rounds(tmp_path / "p", models, prompts)
    change(raw)
    with pytest.raises(PipelineError, match=message):
        PipelineRunner(PipelineConfig.from_dict(raw))
    assert not (tmp_path / "p").exists()


def test_every_recipe_yaml_parses_into_its_configs():
    """Every recipe file builds its script's dataclasses (training ones with `use_cpu`: this host has no GPU)."""
    from trl_edge.pipeline.stages import parse_script_config

    def parse(kind, config):
        on_cpu = {"use_cpu": True} if kind in ("sft", "kd") else {}
        if kind in ("make_student", "export"):
            return
        parse_script_config(kind, {**config, **on_cpu})

    kinds = {"curriculum_sft": "sft", "eval": "eval"}
    checked = 0
    for path in sorted((ROOT / "recipes").glob("*/*.yaml")):
        if path.parent.name == "accelerate":
            continue
        if path.name == "pipeline.yaml":
            for stage in PipelineRunner(PipelineConfig.from_yaml(path)).stages:  # resolves every reference
                parse(stage.spec.kind, stage.config)
        else:
            kind = kinds.get(path.parent.name) or next(k for k in ("cache", "rollout", "kd", "sft") if k in path.stem)
            parse(kind, yaml.safe_load(path.read_text()))
        checked += 1
    assert checked >= 10


def test_every_stage_names_its_model_model(tmp_path, models, prompts):
    """`model:` is the model of any stage (a cache's teacher, a student's teacher too), mapped to its script's own
    name; the script's name works as before, and giving both is refused."""
    raw = {"output_dir": str(tmp_path), "models": models, "stages": [
        {"name": "a", "kind": "cache", "model": "@teacher", "dataset": prompts},
        {"name": "b", "kind": "cache", "teacher": "@teacher", "dataset": prompts},
        {"name": "s", "kind": "make_student", "model": "@teacher", "num_layers": 1},
    ]}  # fmt: skip
    a, b, student = PipelineRunner(PipelineConfig.from_dict(raw)).stages
    assert a.config["teacher"] == b.config["teacher"] == student.config["teacher"] == models["teacher"]
    assert "model" not in a.config and set(a.config) == set(b.config)
    raw["stages"][0]["teacher"] = "@teacher"
    with pytest.raises(PipelineError, match="as `model` or as `teacher`, not both"):
        PipelineRunner(PipelineConfig.from_dict(raw))


def test_the_stage_kinds_are_one_table():
    """The pipeline file's kinds, the ``trl-edge`` subcommands, the script modules and the files left out of an
    artifact's hash all come from ``KINDS``: one name per kind, its command and module derived by one rule."""
    import importlib

    import transformers.trainer

    from trl_edge.cache.format import METADATA_FILE as CACHE_METADATA
    from trl_edge.cli.main import build_parser
    from trl_edge.export import REPORT_NAME
    from trl_edge.pipeline import KINDS, STAGE_KINDS
    from trl_edge.pipeline.runner import RECORD, STARTED, VOLATILE_FILES
    from trl_edge.rollout import METADATA_FILE as ROLLOUT_METADATA
    from trl_edge.student import PROVENANCE_FILE
    from trl_edge.trainer.offline_kd_trainer import SOURCES_FILE as KD_SOURCES

    assert STAGE_KINDS == tuple(KINDS) == ("make_student", "teacher_answers", "sft", "rollout", "cache", "kd", "eval",
                                           "export")  # fmt: skip
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {kind.command for kind in KINDS.values()} | {"pipeline", "env"}
    for name, kind in KINDS.items():
        assert kind.name == name and kind.command == name.replace("_", "-")
        if kind.script:
            module = importlib.import_module(kind.script_module)
            assert module.__name__ == f"trl_edge.scripts.{name}" and callable(module.run)
            assert module.make_parser().dataclass_types == list(kind.dataclass_types())
        else:
            assert kind.dataclass_types() is None and not kind.launched
    assert [k for k, kind in KINDS.items() if kind.makes_model] == ["make_student", "sft", "kd"]
    owners = {
        "make_student": {PROVENANCE_FILE},
        "sft": {transformers.trainer.TRAINING_ARGS_NAME, transformers.trainer.TRAINER_STATE_NAME, "README.md"},
        "kd": {transformers.trainer.TRAINING_ARGS_NAME, transformers.trainer.TRAINER_STATE_NAME, "README.md",
               KD_SOURCES},  # names the caches' paths
        "rollout": {ROLLOUT_METADATA},
        "cache": {CACHE_METADATA},
        "export": {REPORT_NAME},
    }
    assert {k: set(kind.volatile_files) for k, kind in KINDS.items() if kind.volatile_files} == owners
    assert VOLATILE_FILES == {"training_args.bin", "trainer_state.json", "log.txt", "README.md", "config.yaml", RECORD,
                              STARTED, "metadata.json", "rollouts.json", "student_provenance.json",
                              "export_report.json", KD_SOURCES}  # fmt: skip


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
@pytest.mark.parametrize("warm_start", [True, False], ids=["warm", "cold"])
def test_two_rounds_run_resume_rerun_and_report(tmp_path, models, prompts, warm_start):
    """The same behaviour whether single-process stages fork from the warm zygote or start afresh."""
    pipeline = functools.partial(run, warm_start=warm_start)
    # 1. An uninterrupted run, then the same file again: nothing reruns.
    full = write(tmp_path, two_rounds(tmp_path / "full", models, prompts), "full.yaml")
    pipeline(full)
    done = records(tmp_path / "full")
    assert len(done) == 9
    assert set(plan_lines(pipeline(full)).values()) == {"SKIP"}
    report = (tmp_path / "full/report.md").read_text()
    metrics = json.loads((tmp_path / "full/metrics.json").read_text())
    for plot in ("loss_curves.png", "metrics.png", "resources.png"):
        assert (tmp_path / "full" / plot).stat().st_size > 1000
    kl = metrics["evaluations"][0]["metrics"]["fidelity/kl"]
    assert kl > 0 and f"{kl:.4g}" in report and "07-kd-r2" in report
    assert all(s["seconds"] > 0 and s["storage_bytes"] > 0 for s in metrics["stages"])
    assert set(metrics["loss_curves"]) == {"01-sft", "04-kd-r1", "07-kd-r2"}
    # what each round learned from: the student's rollouts, no CE on them; how far it moved from their policy
    assert "## What each KD stage learned from" in report and "## Teacher answers" in report
    sources = metrics["kd_sources"]["07-kd-r2"]
    assert [s["written_by"] for s in sources["sources"]] == ["student", "student"]
    assert all(s["ce_weight"] == 0 for s in sources["sources"])
    assert sources["onpolicy_drift"] and metrics["teacher_answers"]["00-answers"]["lengths"]["answers"] == 12

    # 2. Killed in round 2 while caching, as a kill leaves the disk: the cache half written, KD not started (its
    #    directory never made), no record for either. Rerun, it redoes no finished stage, resumes the cache from its
    #    sealed shards, and ends with the same artifacts as the uninterrupted run.
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    part_raw = two_rounds(tmp_path / "part", models, prompts)
    cache_dir = tmp_path / "part/06-cache-r2"
    for name in ("stage.json", "cache/shard-00001.safetensors", "cache/shard-00001.json"):
        (cache_dir / name).unlink()
    for later in ("07-kd-r2", "08-eval"):
        shutil.rmtree(tmp_path / "part" / later)
    before = records(tmp_path / "part")
    plan = plan_lines(pipeline(write(tmp_path, part_raw, "part.yaml")))
    assert plan["06-cache-r2"] == "RESUME" and all(plan[s] == "SKIP" for s in before)
    assert plan["07-kd-r2"] == plan["08-eval"] == "RUN"
    after = records(tmp_path / "part")
    assert all(after[s]["finished_at"] == before[s]["finished_at"] for s in before)  # redone: none
    assert {s: r["artifact_hash"] for s, r in after.items()} == {s: r["artifact_hash"] for s, r in done.items()}

    # 3. Killed while training in round 2, after its first checkpoint: it resumes from that checkpoint.
    kd_dir = tmp_path / "part/07-kd-r2"
    (kd_dir / "stage.json").unlink()
    shutil.rmtree(kd_dir / "model/checkpoint-4")
    for weights in (kd_dir / "model").glob("*.safetensors"):
        weights.unlink()
    shutil.rmtree(tmp_path / "part/08-eval")
    out = pipeline(write(tmp_path, part_raw, "part.yaml"))
    assert plan_lines(out)["07-kd-r2"] == "RESUME" and "resuming from" in out and "checkpoint-2" in out
    assert records(tmp_path / "part")["07-kd-r2"]["artifact_hash"] == done["07-kd-r2"]["artifact_hash"]

    # 4. One stage's settings change: that stage and the ones after it rerun, nothing before.
    changed = write(tmp_path, two_rounds(tmp_path / "full", models, prompts, kd_learning_rate=1e-3), "changed.yaml")
    out = pipeline(changed, "--dry_run")
    plan = plan_lines(out)
    assert [s for s, action in plan.items() if action != "SKIP"] == ["04-kd-r1", "05-rollout-r2", "06-cache-r2",
                                                                     "07-kd-r2", "08-eval"]  # fmt: skip
    assert "learning_rate: 0.003 -> 0.001" in out


def test_the_plan_warns_when_the_sft_data_and_the_caches_come_from_two_teachers(tmp_path, models, prompts):
    def plan_output(raw):
        lines = []
        runner = PipelineRunner(PipelineConfig.from_dict(raw), echo=lines.append)
        runner.plan()
        runner.print_plan()
        return [line for line in lines if line.startswith("Warning")]

    raw = two_rounds(tmp_path / "same", models, prompts)
    assert plan_output(raw) == []
    raw = two_rounds(tmp_path / "other", models, prompts)
    raw["stages"][2]["stages"][1]["teacher"] = "@student"  # the rounds' caches scored by another model
    (warning, *rest) = plan_output(raw)
    assert len(rest) == 1  # one per round
    assert "'sft' trains on answers written by" in warning and "'cache-r1' scores with" in warning
    assert models["student"] in warning and models["teacher"] in warning


def test_a_warm_stage_sees_what_accelerate_launch_gives_a_fresh_one():
    """A zygote child gets the accelerate launcher's environment, threads and argv; its exit code comes back."""
    from trl_edge.pipeline.warm import run_warm, single_process

    assert single_process(CPU) and single_process(None)
    assert not single_process(str(ROOT / "recipes/accelerate/cpu_multi.yaml"))
    env = {k: v for k, v in ENV.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), ENV.get("PYTHONPATH", "")])
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU, "--num_cpu_threads_per_process",
            "2", "-m", "scripts.stage_env", "--config", "x.yaml"]  # fmt: skip
    cold = subprocess.run(argv, cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True)
    lines = []
    code = run_warm(argv, {**env, "PYTHONUNBUFFERED": "1"}, lines.append)
    assert cold.returncode == code == 0, cold.stderr
    assert json.loads(lines[-1]) == json.loads(cold.stdout.splitlines()[-1])
    assert json.loads(lines[-1])["threads"] == 2
    failing = [sys.executable, "-m", "trl_edge.cli.main", "make-student", "nowhere", "--output_dir", "x"]
    assert run_warm(failing, env, lines.append) != 0
