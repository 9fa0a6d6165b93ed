"""The `trl-edge` console script and the recipe launcher, end to end and offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from trl_edge.scripts.sft import make_parser, run

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "recipes/curriculum_sft/tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def trl_edge(*args, env=ENV, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "trl_edge.cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_the_subcommands():
    result = trl_edge("--help")
    assert result.returncode == 0
    for command in ("sft", "rollout", "cache", "kd", "eval", "export", "make-student", "env"):
        assert command in result.stdout


@pytest.fixture(scope="module")
def exploding_torch_npu(tmp_path_factory):
    """A torch_npu that raises on import: stands in for torch-npu installed on a host without CANN."""
    root = tmp_path_factory.mktemp("fake_npu")
    (root / "torch_npu").mkdir()
    (root / "torch_npu" / "__init__.py").write_text("raise ImportError('torch_npu was imported')\n")
    return {**ENV, "PYTHONPATH": f"{root}{os.pathsep}{ENV.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize(
    "command, flags",
    [
        ("sft", ("--curriculum_pacing", "--curriculum_stage_column", "--use_peft", "--lora_r", "--dataset_name")),
        ("kd", ("--teacher_cache", "--kd_weight", "--divergence", "--tail", "--use_peft", "--edge_target")),
        (
            "cache",
            ("--teacher", "--dataset", "--top_k", "--encoding", "--shard_size", "--backend", "--trust_remote_code"),
        ),
        (
            "rollout",
            ("--model_name_or_path", "--num_samples", "--temperature", "--top_p", "--max_new_tokens", "--round"),
        ),
        ("export", ("--output_dir", "--seq_len", "--no_onnx")),
    ],
)
def test_subcommand_help_shows_its_flags_and_never_imports_torch_npu(command, flags, exploding_torch_npu):
    result = trl_edge(command, "--help", env=exploding_torch_npu)
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in flags:
        assert flag in result.stdout


def test_env_reports_versions_and_variables():
    result = trl_edge("env", env={**ENV, "ASCEND_RT_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 0
    assert "trl-edge version" in result.stdout and "trl version: 1." in result.stdout
    assert "ASCEND_RT_VISIBLE_DEVICES: 0,1" in result.stdout


def test_import_and_cli_never_import_torch_npu(exploding_torch_npu):
    code = (
        "import sys, trl_edge; from trl_edge.curriculum import CurriculumSampler; "
        "assert sys.modules.get('torch_npu') is None"
    )
    result = subprocess.run([sys.executable, "-c", code], env=exploding_torch_npu, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    for args in (("--help",), ("env",), ("cache", "verify", "--help")):
        result = trl_edge(*args, env=exploding_torch_npu)
        assert result.returncode == 0, result.stderr[-2000:]


def test_yaml_gives_defaults_and_flags_override():
    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        ["--config", str(TINY_RECIPE), "--learning_rate", "1e-5", "--curriculum_pacing", "linear"]
    )
    assert training_args.learning_rate == 1e-5
    assert training_args.curriculum_pacing == "linear"  # flag beats the YAML's root
    assert training_args.curriculum_stages == ["reasoning", "direct"]  # from the YAML
    assert training_args.curriculum_stage_shares == [0.75, 0.25]
    assert script_args.dataset_name == "recipes/curriculum_sft/data"
    assert model_args.model_name_or_path == "recipes/assets/tiny-llama"


def test_unknown_yaml_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RECIPE.read_text() + "\ncurriculum_pase: linear\n")
    with pytest.raises(ValueError, match="curriculum_pase"):
        make_parser().parse_args_and_config(["--config", str(bad)], fail_with_unknown_args=True)


@pytest.mark.slow
def test_trl_edge_sft_runs_the_tiny_recipe_offline_and_says_where_it_saved(tmp_path):
    out = tmp_path / "tiny-sft"
    result = trl_edge("sft", "--config", str(TINY_RECIPE), "--max_steps", "3", "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Model saved to {out}" in result.stdout
    trained = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(ROOT / "recipes/assets/tiny-llama")
    assert not torch.equal(trained.lm_head.weight, initial.lm_head.weight)
    # No warning caused by our code: accelerate's launch defaults, transformers' deprecated checkpointing name
    for noise in ("were not passed to `accelerate launch`", "FutureWarning", "is deprecated"):
        assert noise not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("command", ["sft", "rollout"])
def test_a_mistyped_flag_gets_one_clear_line(command):
    flag = {"sft": "--lerning_rate", "kd": "--kd_wieght", "cache": "--top_kk", "rollout": "--temprature"}[command]
    config = {"sft": TINY_RECIPE, "kd": "offline_kd/kd_tiny.yaml", "cache": "offline_kd/cache_tiny.yaml",
              "rollout": "offline_kd/rollout_tiny.yaml"}[command]  # fmt: skip
    args = [command, "--config", str(ROOT / "recipes" / config), flag, "1"]
    result = trl_edge(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = {"--lerning_rate": "--learning_rate", "--kd_wieght": "--kd_weight", "--top_kk": "--top_k",
                "--temprature": "--temperature"}[flag]  # fmt: skip
    assert lines[-1] == f"trl-edge {command}: error: unknown argument {flag}; did you mean {expected}?", lines[-5:]
    assert len(lines) <= 3, result.stderr  # not accelerate's 100-line usage


def test_a_config_that_fails_its_checks_gets_one_clear_line():
    result = trl_edge("cache", "--top_k", "4")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "trl-edge cache: error: `trl-edge cache` needs --teacher, --dataset, --output_dir."
    )


def test_lora_flags_train_an_adapter(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "lora"
    trainer = run(
        [
            "--config", str(TINY_RECIPE), "--max_steps", "2", "--output_dir", str(out), "--disable_tqdm", "true",
            "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        ]
    )  # fmt: skip
    assert (out / "adapter_config.json").is_file()
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


RECIPES = sorted((ROOT / "recipes/curriculum_sft").glob("*.yaml"))
CACHE_RECIPES = sorted((ROOT / "recipes/offline_kd").glob("cache*.yaml"))
ACCELERATE_CONFIGS = sorted((ROOT / "recipes/accelerate").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recipe_parses(recipe):
    _, training_args, _, _ = make_parser().parse_args_and_config(
        ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"]
    )
    assert training_args.curriculum_stages == ["reasoning", "direct"]


@pytest.mark.parametrize("recipe", CACHE_RECIPES, ids=lambda p: p.name)
def test_every_cache_recipe_parses(recipe):
    from trl_edge.scripts.cache import make_parser as make_cache_parser

    (args,) = make_cache_parser().parse_args_and_config(["--config", str(recipe)])
    assert args.teacher and args.dataset and args.output_dir and args.top_k >= 1


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_every_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(config))
    assert loaded.num_processes >= 1 and loaded.mixed_precision is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, extra, model",
    [
        ("examples/curriculum_sft.py", [], "."),
        ("examples/gkd_to_offline_kd.py", ["--num_prompts", "8"], "round2/student"),  # 2 rounds: the last student
    ],
)
def test_the_examples_run(tmp_path, script, extra, model):
    out = tmp_path / "example"
    result = subprocess.run(
        [sys.executable, script, "--max_steps", "2", "--output_dir", str(out), *extra],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / model / "model.safetensors").is_file()


def test_kd_recipes_parse_and_the_tiny_one_trains(tmp_path, monkeypatch):
    from trl_edge.cache.writer import cache_teacher_logits
    from trl_edge.scripts.cache import make_parser as make_cache_parser
    from trl_edge.scripts.kd import make_parser as make_kd_parser
    from trl_edge.scripts.kd import run as run_kd

    for recipe in sorted((ROOT / "recipes/offline_kd").glob("kd*.yaml")):
        training_args, _ = make_kd_parser().parse_args_and_config(
            ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"]
        )
        assert training_args.teacher_cache and 0 < training_args.kd_weight <= 1
    monkeypatch.chdir(ROOT)
    (cache_args,) = make_cache_parser().parse_args_and_config(["--config", "recipes/offline_kd/cache_tiny.yaml"])
    from datasets import load_dataset
    from transformers import AutoTokenizer

    data = load_dataset(cache_args.dataset)["train"].select(range(16))
    tokenizer = AutoTokenizer.from_pretrained(cache_args.teacher)
    cache_teacher_logits(cache_args.teacher, tokenizer, data, tmp_path / "cache", top_k=cache_args.top_k)
    out = tmp_path / "kd"
    trainer = run_kd(
        ["--config", "recipes/offline_kd/kd_tiny.yaml", "--teacher_cache", str(tmp_path / "cache"),
         "--output_dir", str(out), "--max_steps", "2", "--disable_tqdm", "true"]
    )  # fmt: skip
    assert (out / "model.safetensors").is_file() and trainer.state.global_step == 2


@pytest.mark.parametrize("config", ["cpu.yaml", "cpu_2proc.yaml", "npu_single.yaml"])
def test_launching_with_an_accelerate_config_says_the_cpu_threads_so_accelerate_does_not_warn(config, monkeypatch):
    """accelerate warns on every CPU launch without OMP_NUM_THREADS that it picked the threads; we pass its choice."""
    import logging

    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from trl_edge.cli.launch import cpu_threads_flag

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    path = str(ROOT / "recipes/accelerate" / config)

    def warnings_for(extra):
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logger = logging.getLogger("accelerate.commands.launch")
        logger.addHandler(handler)
        try:
            _validate_launch_command(launch_command_parser().parse_args(["--config_file", path, *extra, "x.py"]))
        finally:
            logger.removeHandler(handler)
        return [r.getMessage() for r in records if "defaults used instead" in r.getMessage()]

    flag = cpu_threads_flag(path)
    assert warnings_for(flag) == []
    if flag:  # the warning this flag removes is real, and the value is accelerate's own choice
        assert f"was set to `{flag[1]}`" in warnings_for([])[0]
