"""Device detection, the precision policy, the launch guard and the fp16-range watch, on a machine with no NPU."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trl_edge import devices

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def config(**overrides):
    base = dict(bf16=None, fp16=False, use_cpu=False, edge_target=None)
    base.update(overrides)
    return SimpleNamespace(**base)


@pytest.fixture
def fake_npu(monkeypatch):
    """An NPU that is available, with bf16 support set by the test."""
    npu = SimpleNamespace(is_available=lambda: True, is_bf16_supported=lambda: True)
    monkeypatch.setattr(torch, "npu", npu, raising=False)
    monkeypatch.setitem(sys.modules, "torch_npu", SimpleNamespace())
    return npu


def test_detects_the_npu_first_and_reads_its_bf16_support(fake_npu):
    assert devices.detect_device() == "npu"
    assert devices.bf16_supported("npu") is True
    fake_npu.is_bf16_supported = lambda: False
    assert devices.bf16_supported("npu") is False


def test_precision_policy_with_an_npu(fake_npu):
    c = config()
    devices.apply_precision_policy(c)
    assert c.bf16 is None and not c.fp16  # bf16 supported: TRL's default (bf16) applies
    fake_npu.is_bf16_supported = lambda: False  # e.g. an inference part used for a smoke test
    c = config()
    devices.apply_precision_policy(c)
    assert (c.bf16, c.fp16) == (False, True)
    explicit = config(bf16=True)
    devices.apply_precision_policy(explicit)
    assert explicit.bf16 is True  # an explicit choice is left to transformers to validate


def test_edge_target_means_no_bf16(fake_npu):
    c = config(edge_target="atlas-200i-a2")
    devices.apply_precision_policy(c)
    assert (c.bf16, c.fp16) == (False, True)
    on_cpu = config(edge_target="atlas-310b", use_cpu=True)
    devices.apply_precision_policy(on_cpu)
    assert (on_cpu.bf16, on_cpu.fp16) == (False, False)  # fp32 on a CPU: still within fp16's range
    with pytest.raises(ValueError, match="has no bf16, but `bf16=True` was set"):
        devices.apply_precision_policy(config(edge_target="atlas-200i-a2", bf16=True))
    with pytest.raises(ValueError, match="Unknown `edge_target` 'jetson'"):
        devices.apply_precision_policy(config(edge_target="jetson"))


def test_a_real_config_with_an_edge_target(tmp_path):
    from trl_edge import CurriculumSFTConfig

    args = CurriculumSFTConfig(str(tmp_path), use_cpu=True, edge_target="atlas-200i-a2")
    assert args.bf16 is False and args.fp16 is False


def test_without_cann_torch_npu_is_never_imported(tmp_path):
    """torch_npu installed but CANN not sourced: detection says cpu and nothing imports it."""
    fake = tmp_path / "torch_npu"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('torch_npu was imported')\n")
    code = (
        "import sys, trl_edge; from trl_edge import CurriculumSFTTrainer, OfflineOnPolicyKDTrainer; "
        "from trl_edge.devices import detect_device; assert detect_device() == 'cpu'; "
        "assert sys.modules.get('torch_npu') is None"
    )
    env = {k: v for k, v in ENV.items() if k not in devices.CANN_VARIABLES}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_launch_guard_stops_processes_without_a_process_group(tmp_path):
    """A 2-process launch on a CPU-only host without `use_cpu`: accelerate gives each process no group."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", "29537",
        str(ROOT / "tests/scripts/ddp_curriculum_order.py"), str(tmp_path), "--no-use-cpu",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "2 processes were launched, but they are not in a process group" in result.stderr
    assert not list(tmp_path.glob("rank*.json"))  # nothing trained


def test_fp16_range_is_watched_for_an_edge_target(tmp_path, tokenizer):
    from conftest import make_dataset, training_args

    from trl_edge import CurriculumSFTTrainer
    from trl_edge.testing import build_tiny_model

    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(2e7)  # activations far beyond fp16's 65504
    trainer = CurriculumSFTTrainer(
        model,
        training_args(tmp_path, max_steps=2, edge_target="atlas-200i-a2"),
        train_dataset=make_dataset(8),
        processing_class=tokenizer,
    )
    with pytest.warns(UserWarning, match="of the fp16 range"):
        trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all(e["edge/max_activation"] > devices.FP16_MAX for e in logs)
    assert np.isfinite(logs[-1]["edge/fp16_range_used"])


def test_the_fp16_range_watch_never_reads_the_device_inside_a_forward(tokenizer, monkeypatch):
    from trl_edge.testing import build_tiny_model
    from trl_edge.trainer.fp16_range_callback import Fp16RangeCallback

    model = build_tiny_model(tokenizer)
    callback = Fp16RangeCallback()
    callback.on_train_begin(None, None, None, model=model)
    assert len(callback._handles) >= 3  # decoder layers and the final norm
    host_reads = []
    for name in ("item", "tolist", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor, name, lambda self, *a, _o=original, _n=name: host_reads.append(_n) or _o(self, *a)
        )
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
        model(input_ids=torch.tensor([[9, 10, 11]]))
    assert host_reads == []  # a host sync per layer per forward is what this guards against
    monkeypatch.undo()
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([[5, 6, 7, 8]])).last_hidden_state
    max_abs, worst = callback.window_max()
    assert max_abs >= float(hidden.abs().max()) and worst
    logs = {}
    callback.add_to_logs(logs, "atlas-200i-a2")
    assert logs["edge/max_activation"] == max_abs and callback.window_max() == (0.0, "")


def test_the_kd_trainer_watches_the_fp16_range_too(tmp_path, tokenizer):
    from conftest import make_dataset, training_args

    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer, cache_teacher_logits
    from trl_edge.testing import build_tiny_model

    cache = cache_teacher_logits(
        build_tiny_model(tokenizer, seed=1), tokenizer, make_dataset(8), tmp_path / "c", top_k=8
    )
    args = training_args(tmp_path, OfflineOnPolicyKDConfig, max_steps=2, edge_target="atlas-200i-a2")
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer), args, train_dataset=cache, processing_class=tokenizer
    )
    trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert logs and all(0 < e["edge/max_activation"] < devices.FP16_MAX for e in logs)
