"""Sharded students under FSDP2: two real processes (gloo on CPU) against one, every parameter compared.

What runs here and what only on accelerators: accelerate turns a CPU launch into ``MULTI_CPU`` whatever the config
says (``DistributedType.FSDP`` is chosen only for GPU/NPU-type launches), so ``Trainer.train`` cannot prepare the
model for FSDP2 on these machines. The 2-rank script (tests/scripts/fsdp2_same_update.py) therefore builds the
trainers as a launch would, shards the student with accelerate's own ``fsdp2_prepare_model`` (the wrapping
``Accelerator.prepare`` applies under ``fsdp_version: 2``: each decoder layer, the final norm with the head, the
root) and drives the trainer's own dataloader, ``get_batch_samples`` and ``training_step`` (``compute_loss``, the
loss inside the wrapped forward, ``accelerator.backward``), stepping SGD itself. Not run here: the FSDP branches of
``Accelerator.prepare`` / ``Trainer.train`` (the optimizer and scheduler wrapping, ``accelerator.clip_grad_norm_``
on DTensors, accelerate's FSDP save/load) and the MixedPrecisionPolicy casts on a real bf16 device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trl_edge.trainer.sharded_head import ZERO3_UNTESTED, head_for_loss, run_inside_forward, sharding_of

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests/scripts/fsdp2_same_update.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _launch(out_dir, port, *args):
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", str(port), SCRIPT, str(out_dir), *args,
    ]  # fmt: skip
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("kind, port", [("kd", 29621), ("sft", 29623)])
def test_fsdp2_two_ranks_make_the_update_one_rank_makes_over_the_same_global_batch(tmp_path, kind, port):
    """2 ranks x 1 example x 2 accumulation steps on a ``fully_shard``-ed student (lm_head: half the rows on each
    rank) must change every weight as 1 unsharded rank x 2 examples x 2 accumulation steps under ``trainer.train()``
    does. Tolerance: float32 sums in another order (reduce-scatter vs one process), rtol 1e-5, atol 1e-6."""
    from safetensors.torch import load_file

    one = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), kind], env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    ranks = _launch(tmp_path / "two", port, kind)
    for r, record in enumerate(ranks):
        assert (record["rank"], record["world_size"]) == (r, 2)
        assert record["head_local_rows"] * 2 == record["head_rows"]  # the head really is sharded
        assert "error" not in record
    assert ranks[0]["order"] == ranks[1]["order"]  # one global curriculum order on every rank
    assert ranks[0]["batches"] != ranks[1]["batches"]  # and each rank its own half of every global batch
    single = load_file(tmp_path / "one/weights.safetensors")
    sharded = load_file(tmp_path / "two/weights.safetensors")
    assert single.keys() == sharded.keys()
    from trl_edge.testing import build_tiny_model, build_tokenizer

    start = build_tiny_model(build_tokenizer()).state_dict()
    for name, value in single.items():
        assert not torch.equal(start[name], value), name  # every tensor took the update
        torch.testing.assert_close(sharded[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_fsdp2_mixed_precision_gathers_the_head_in_the_param_dtype_and_computes_the_loss_in_float32(tmp_path):
    """The MixedPrecisionPolicy accelerate sets for ``mixed_precision: bf16`` (910B-class NPUs, GPUs) and ``fp16``
    (``edge_target``): the head reaches the loss gathered in bf16/fp16, the loss comes back float32, and the update
    stays near the float32 one (atol 2e-3: one SGD step of a bf16 forward). Not run here: fp16's loss scaling
    (accelerate's ShardedGradScaler on a device) and bf16/fp16 kernels of a real accelerator."""
    from safetensors.torch import load_file

    one = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "one"), "kd"], env=ENV, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    reference = load_file(tmp_path / "one/weights.safetensors")
    for precision, dtype, port in (("bf16", "torch.bfloat16", 29627), ("fp16", "torch.float16", 29629)):
        ranks = _launch(tmp_path / precision, port, "kd", precision)
        for record in ranks:
            assert "error" not in record
            assert record["loss_dtypes"] == ["torch.float32"]
            assert set(record["head_dtypes_in_forward"]) == {dtype} and len(record["head_dtypes_in_forward"]) == 4
        weights = load_file(tmp_path / precision / "weights.safetensors")
        for name, value in reference.items():
            assert weights[name].dtype == torch.float32  # the sharded master weights stay float32
            torch.testing.assert_close(weights[name], value, rtol=0, atol=2e-3, msg=f"{precision} {name}")


@pytest.mark.slow
def test_fsdp2_head_wrapped_alone_and_resharded_is_refused(tmp_path):
    ranks = _launch(tmp_path / "head", 29625, "kd", "head")
    for record in ranks:
        assert "still sharded inside the model's forward" in record["error"]


def _trainer(fsdp_version=None, zero_stage=None):
    state = SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version),
                            deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))  # fmt: skip
    return SimpleNamespace(is_fsdp_enabled=fsdp_version is not None, is_deepspeed_enabled=zero_stage is not None,
                           accelerator=SimpleNamespace(state=state))  # fmt: skip


def test_sharding_of_takes_fsdp2_and_zero2_and_refuses_fsdp1_and_zero3():
    assert sharding_of(_trainer()) == "none"
    assert sharding_of(_trainer(zero_stage=2)) == "none"
    assert sharding_of(_trainer(fsdp_version=2)) == "fsdp2"
    with pytest.raises(NotImplementedError, match="fsdp_version: 2"):
        sharding_of(_trainer(fsdp_version=1))
    with pytest.raises(NotImplementedError, match="backward fails") as error:
        sharding_of(_trainer(zero_stage=3))
    assert str(error.value) == ZERO3_UNTESTED


def test_run_inside_forward_goes_through_the_wrapper_and_restores_forward():
    calls = []

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args, **kwargs):
            calls.append("wrapper")
            return self.inner(*args, **kwargs)

    inner = torch.nn.Linear(2, 2)
    inner.register_forward_pre_hook(lambda module, args: calls.append("hook"))
    out = run_inside_forward(Wrapper(inner), inner, lambda x: calls.append("method") or x * 2, 3)
    assert out == 6 and calls == ["wrapper", "hook", "method"]
    assert "forward" not in vars(inner)  # the class's forward again
    assert inner(torch.ones(1, 2)).shape == (1, 2)


def test_head_for_loss_passes_plain_parameters():
    head = torch.nn.Linear(4, 8)
    weight, bias = head_for_loss(head)
    assert weight is head.weight and bias is head.bias


@pytest.mark.slow
def test_fsdp2_kd_killed_after_a_sharded_checkpoint_resumes_to_the_uninterrupted_weights(tmp_path):
    """Checkpoint at step 2 with accelerate's save_fsdp_model/save_fsdp_optimizer (SHARDED_STATE_DICT), every rank
    killed right after, resumed: the final weights equal those of a run never interrupted (SGD with momentum, so the
    optimizer state must come back too), and the final save is a plain transformers checkpoint."""
    from safetensors.torch import load_file

    from trl_edge.model_loading import load_causal_lm
    from trl_edge.pipeline.checkpoints import resumable_checkpoint

    script = str(ROOT / "tests/scripts/fsdp2_resume.py")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "recipes/accelerate/cpu_2proc.yaml")]  # fmt: skip

    def run(port, out, mode):
        cmd = [*launch, "--main_process_port", str(port), script, str(out), mode]
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)

    full = run(29631, tmp_path / "full", "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = run(29633, tmp_path / "cut", "kill")
    assert killed.returncode != 0 and not (tmp_path / "cut/final").exists()
    checkpoint, skipped = resumable_checkpoint(tmp_path / "cut/run")  # what the pipeline resumes from
    assert checkpoint == str(tmp_path / "cut/run/checkpoint-2") and skipped == []
    resumed = run(29635, tmp_path / "cut", "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "cut/record.json").read_text()) == {"wrote": True, "checkpoint_problem": None}
    uninterrupted = load_file(tmp_path / "full/final/model.safetensors")
    final = load_file(tmp_path / "cut/final/model.safetensors")
    assert final.keys() == uninterrupted.keys() and len(final) == 21
    for name, value in uninterrupted.items():
        torch.testing.assert_close(final[name], value, rtol=1e-6, atol=1e-7, msg=name)
    model = load_causal_lm(str(tmp_path / "cut/final"), dtype="float32")  # how the next stage and export load it
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, final[name], msg=name)


def test_an_fsdp_checkpoint_is_complete_only_with_both_dcp_metadata_files(tmp_path):
    from trl_edge.pipeline.checkpoints import checkpoint_problem

    checkpoint = tmp_path / "checkpoint-3"
    for sub in ("pytorch_model_fsdp_0", "optimizer_0"):
        (checkpoint / sub).mkdir(parents=True)
        (checkpoint / sub / "__0_0.distcp").write_bytes(b"x")
    for name in ("scheduler.pt", "rng_state_0.pth"):
        torch.save({}, checkpoint / name)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 3}')
    assert "pytorch_model_fsdp_0/ has no .metadata" in checkpoint_problem(checkpoint)
    (checkpoint / "pytorch_model_fsdp_0/.metadata").write_bytes(b"m")
    assert "optimizer_0/ has no .metadata" in checkpoint_problem(checkpoint)
    (checkpoint / "optimizer_0/.metadata").write_bytes(b"m")
    assert checkpoint_problem(checkpoint) is None
    (checkpoint / "scheduler.pt").unlink()
    assert checkpoint_problem(checkpoint) == "scheduler.pt is missing"
