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
    with pytest.raises(NotImplementedError, match="untested") as error:
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
