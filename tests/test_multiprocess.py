"""Two real processes under `accelerate launch` (gloo on CPU): one global schedule, disjoint per-rank samples."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
