"""What warm stage start-up saves: the tiny pipeline from a clean output directory, each stage a fresh process
(``warm_start: false``) vs forked from the warm zygote (``warm_start: true``), side by side in one run.

    python benchmarks/pipeline_startup.py                      # recipes/pipeline_tiny, 17 stages, ~4 min on 1 core
    python benchmarks/pipeline_startup.py --config recipes/pipeline_tiny/pipeline.yaml --repeats 2

Prints the wall time of each run, the sum of its stages' own times (``stage.json`` ``seconds``: from the stage's
start to its exit, start-up included) and the per-stage difference, which is the start-up the zygote saves.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(config: str, output_dir: Path, warm: bool) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    argv = [sys.executable, "-m", "trl_edge.cli.main", "pipeline", "--config", config, "--output_dir", str(output_dir),
            "--warm_start", "true" if warm else "false"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    stages = {p.parent.name: json.loads(p.read_text())["seconds"] for p in sorted(output_dir.glob("*/stage.json"))}
    return {"wall_s": wall, "stages_s": sum(stages.values()), "num_stages": len(stages), "per_stage": stages}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/pipeline_tiny/pipeline.yaml")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="Write the results here")
    args = parser.parse_args(argv)
    results = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name in ("cold", "warm"):  # each from a clean output directory
                results[name].append(run_once(args.config, Path(tmp) / f"{name}-{i}", warm=name == "warm"))
    best = {name: min(runs, key=lambda r: r["wall_s"]) for name, runs in results.items()}
    n = best["cold"]["num_stages"]
    print(f"{args.config}: {n} stages, best of {args.repeats}")
    print(f"{'':<6} {'wall (s)':>9} {'sum of stages (s)':>18} {'per stage (s)':>14}")
    for name, r in best.items():
        print(f"{name:<6} {r['wall_s']:>9.1f} {r['stages_s']:>18.1f} {r['stages_s'] / n:>14.2f}")
    saved = (best["cold"]["stages_s"] - best["warm"]["stages_s"]) / n
    print(f"start-up saved per stage: {saved:.2f} s; wall time {best['warm']['wall_s'] / best['cold']['wall_s']:.0%} "
          "of cold")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
