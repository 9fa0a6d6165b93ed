"""Two real processes under `accelerate launch` (gloo on CPU): one global schedule, disjoint per-rank samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_ranks_draw_disjoint_samples_from_one_global_schedule(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"),
        "--main_process_port", "29531",
        str(ROOT / "tests/scripts/ddp_curriculum_order.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r, record in enumerate(ranks):
        assert (record["rank"], record["world_size"], record["process_group"], record["backend"]) == (r, 2, 2, "gloo")
    schedule = ranks[0]["schedule"]
    assert ranks[1]["schedule"] == schedule  # every rank built the same global order
    steps, batch = 6, 2
    for b in range(steps):
        for r in range(2):
            start = (2 * b + r) * batch
            assert ranks[r]["batches"][b] == schedule[start : start + batch], (r, b)
    seen = [tuple(x) for r in range(2) for batch_ in ranks[r]["batches"][:steps] for x in batch_]
    assert sorted(seen) == sorted(tuple(x) for x in schedule[: 2 * steps * batch])
    assert ranks[0]["final_weight_sum"] == ranks[1]["final_weight_sum"]  # DDP kept the replicas in sync


@pytest.mark.slow
def test_two_ranks_write_a_cache_and_distil_from_it_with_ddp(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", "29535",
        str(ROOT / "tests/scripts/ddp_kd.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["process_group"] for r in ranks] == [2, 2]
    schedule = ranks[0]["schedule"]
    for b in range(3):  # batch b of rank r is global batch 2b + r of the one schedule
        for r in range(2):
            assert ranks[r]["batches"][b] == schedule[(2 * b + r) * 2 : (2 * b + r) * 2 + 2]
    assert ranks[0]["final_weight_sum"] == ranks[1]["final_weight_sum"]  # DDP kept the replicas in sync
    assert all(r["loss"] > 0 for r in ranks)


@pytest.mark.slow
@pytest.mark.parametrize("kind, port", [("sft", 29543), ("kd", 29545)])
def test_two_ranks_make_the_update_one_rank_makes_over_the_same_global_batch(tmp_path, kind, port):
    """Token-level normalisation across ranks and accumulation steps: 2 ranks x 1 example x 2 accumulation steps
    must change the weights exactly as 1 rank x 2 examples x 2 accumulation steps does."""
    import torch
    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "tests/scripts/ddp_same_update.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one"), kind], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", str(port), script,
        str(tmp_path / "two"), kind,
    ]  # fmt: skip
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    single, double = load_file(tmp_path / "one/weights.safetensors"), load_file(tmp_path / "two/weights.safetensors")
    assert single.keys() == double.keys()
    for name, value in single.items():
        torch.testing.assert_close(double[name], value, rtol=1e-5, atol=1e-6, msg=name)
    from trl_edge.testing import build_tiny_model, build_tokenizer

    start = build_tiny_model(build_tokenizer()).state_dict()
    moved = sum(not torch.equal(start[name], value) for name, value in single.items())
    assert moved == len(single)  # every tensor took the update
    if kind == "sft":  # the reference model scored the dataset once in all, half on each rank, to the same scores
        records = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
        alone = json.loads((tmp_path / "one" / "rank0.json").read_text())
        assert [r["scored"] for r in records] == [alone["scored"] // 2] * 2
        for record in records:
            np.testing.assert_allclose(record["difficulty"], alone["difficulty"], rtol=1e-6)
