"""What it costs an offline-KD run to start on a million-sample teacher cache, before its first step.

    python benchmarks/kd_startup.py                     # 1M samples: writing the cache ~2 min, the measurements ~1 min
    python benchmarks/kd_startup.py --num_samples 100000

Start-up is what every rank does before training: open the cache (read each shard's small index arrays), build the
train dataset the trainer samples from (``TeacherLogitCache.to_dataset``: from the shards' offsets, never from the
tokens), and, for a curriculum, read each sample's difficulty (``teacher_nll`` reads only the teacher's token
log-probs; nothing is decoded). The script writes a synthetic cache (random sequences of ``--seq_len`` tokens with
``--positions`` scored each, lossless top-``--top_k``; the contents do not change the costs) and times each step,
then the whole ``OfflineOnPolicyKDTrainer`` construction with a tiny student, once in random order and once with the
``teacher_nll`` curriculum. For comparison it times the old way of building the train dataset (a Python list per
sample of every token, ``Dataset.from_list``) on ``--old_samples`` samples and scales it linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_samples", type=int, default=1_000_000)
    parser.add_argument("--seq_len", type=int, default=24)
    parser.add_argument("--positions", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--shard_size", type=int, default=65536)
    parser.add_argument("--old_samples", type=int, default=50_000)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output_json", default=str(Path(__file__).parent / "results/kd_startup.json"))
    return parser.parse_args(argv)


class _Bar:
    def update(self, n):
        pass


def write_synthetic_cache(directory: Path, args, tokenizer) -> float:
    """A sealed cache of random samples, written through the cache writer's own shard writer."""
    import trl_edge
    from trl_edge.cache.encoding import get_encoding
    from trl_edge.cache.format import CacheMetadata, atomic_write, content_fingerprint, tokenizer_fingerprint
    from trl_edge.cache.writer import ScoringPlan, _write_shard
    from trl_edge.devices import partial_state

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    n, length, vocab = args.num_samples, args.seq_len, len(tokenizer)
    ids = rng.integers(4, vocab, size=(n, length), dtype=np.int32)
    labels = ids.copy()
    labels[:, : length - args.positions] = -100
    sample_ids = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)  # content ids: random stand-ins, unique
    plan = ScoringPlan(ids.ravel(), labels.ravel(), np.arange(n + 1, dtype=np.int64) * length, sample_ids)
    meta = CacheMetadata(
        teacher="synthetic", tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), vocab_size=vocab,
        top_k=args.top_k, encoding="lossless-v1", num_samples=n, shard_size=args.shard_size,
        content_fingerprint=content_fingerprint(sample_ids), trl_edge_version=trl_edge.__version__,
    )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "metadata.json", meta.to_json().encode())
    codec, state = get_encoding("lossless"), partial_state(True)
    top = np.argsort(rng.random((args.positions, vocab)), axis=-1)[:, : args.top_k].astype(np.int64)
    values = np.sort(np.log(rng.dirichlet(np.ones(args.top_k) * 0.5, size=args.positions) * 0.9), -1)[:, ::-1]
    values = np.ascontiguousarray(values, dtype=np.float32)

    def scorer(sequences, labels_):
        return [(top, values, rng.standard_normal(args.positions).astype(np.float32) - 3) for _ in sequences]

    class _Clock:
        def start(self):
            pass

        def lap(self, key):
            pass

    for index in range(meta.num_shards):
        _write_shard(scorer, codec, plan, meta, directory, index, 4096, _Bar(), state, _Clock())
    return time.perf_counter() - start


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def old_to_dataset(cache, limit: int):
    """The train dataset as main built it before: every sample's tokens as Python lists, then from_list."""
    from datasets import Dataset

    rows = []
    for shard_index, shard in enumerate(cache._shards):
        offsets = shard.index["token_offsets"]
        ids = shard.read("input_ids", 0, offsets[-1])
        labels = shard.read("labels", 0, offsets[-1])
        for j in range(len(offsets) - 1):
            if len(rows) == limit:
                return Dataset.from_list(rows)
            rows.append({
                "input_ids": ids[offsets[j] : offsets[j + 1]].tolist(),
                "labels": labels[offsets[j] : offsets[j + 1]].tolist(),
                "sample_id": shard.index["sample_ids"][j].tobytes().hex(),
                "cache_index": shard_index * cache.metadata.shard_size + j,
            })  # fmt: skip
    return Dataset.from_list(rows)


def old_schedule(sampler, epoch: int, limit: int) -> None:
    """The first ``limit`` positions of an epoch the way the sampler built them before: one Python step per position
    (its pools as Python lists, the pacing called per position)."""
    import math

    n, orders, starts = sampler.num_samples, sampler._stage_orders, sampler._stage_starts
    rng = np.random.default_rng([sampler.seed, int(epoch)])
    draws = rng.random(n)
    progress = np.minimum((epoch * n + np.arange(n)) / sampler.total_samples, 1.0)
    stage = np.searchsorted(starts, progress, side="right") - 1
    fresh, sizes = [[] for _ in orders], [0] * len(orders)
    for i in range(limit):
        s = int(stage[i])
        local = (progress[i] - starts[s]) / sampler.stage_shares[s]
        c = float(sampler.pacing(min(max(local, 0.0), 1.0)))
        size = max(1, math.ceil(c * orders[s].size - 1e-9))
        if size > sizes[s]:
            fresh[s].extend(orders[s][sizes[s] : size].tolist())
            sizes[s] = size
        if fresh[s]:
            j = int(draws[i] * len(fresh[s]))
            fresh[s][j], fresh[s][-1] = fresh[s][-1], fresh[s][j]
            fresh[s].pop()


def main(argv=None) -> dict:
    args = parse_args(argv)
    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer, TeacherLogitCache
    from trl_edge.testing import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        directory = Path(tmp) / "cache"
        write_s = write_synthetic_cache(directory, args, tokenizer)
        open_s, cache = timed(lambda: TeacherLogitCache(directory))
        index_s, dataset = timed(lambda: cache.to_dataset())
        nll_s, nll = timed(lambda: cache.teacher_difficulty("teacher_nll"))
        old_s, _ = timed(lambda: old_to_dataset(cache, args.old_samples))
        head = dataset.select(range(min(args.old_samples, len(dataset))))
        old_columns_s, _ = timed(lambda: [np.asarray(head["cache_index"]) for _ in ("cache_id", "cache_index")])
        old_columns_s *= args.num_samples / len(head)  # the curriculum scorer's column read before (a row at a time)
        trainer_s = {}
        for name, extra in (("random order", {}), ("teacher_nll curriculum", {"curriculum_pacing": "linear"})):
            config = OfflineOnPolicyKDConfig(
                output_dir=str(Path(tmp) / "run"), report_to=[], use_cpu=True, bf16=False, max_steps=1,
                per_device_train_batch_size=8, disable_tqdm=True, **extra,
            )  # fmt: skip

            def build(config=config):
                student = build_tiny_model(tokenizer)
                cache_dir = str(directory)
                return OfflineOnPolicyKDTrainer(student, config, train_dataset=cache_dir, processing_class=tokenizer)

            trainer_s[name], trainer = timed(build)
            assert len(trainer.train_dataset) == args.num_samples
        sampler = trainer.curriculum_sampler  # the curriculum run's: its first epoch's order, built at the first step
        schedule_s, _ = timed(lambda: sampler.schedule(0))
        old_schedule_s, _ = timed(lambda: old_schedule(sampler, 0, min(args.old_samples, sampler.num_samples)))
        old_schedule_s *= sampler.num_samples / min(args.old_samples, sampler.num_samples)
        size = sum(p.stat().st_size for p in directory.iterdir())
    results = {
        "num_samples": args.num_samples, "tokens_per_sample": args.seq_len, "scored_per_sample": args.positions,
        "cache_bytes": size, "write_s": write_s, "open_s": open_s, "to_dataset_s": index_s, "teacher_nll_s": nll_s,
        "old_to_dataset_s_scaled": old_s * args.num_samples / args.old_samples, "old_samples_timed": args.old_samples,
        "old_to_dataset_s_measured": old_s, "trainer_init_s": trainer_s,
        "curriculum_schedule_s": schedule_s,
        "old_column_read_s_scaled": old_columns_s, "old_curriculum_schedule_s_scaled": old_schedule_s,
        "nll_finite": bool(np.isfinite(nll).all()),
    }  # fmt: skip
    print(table(results))
    Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_json).write_text(json.dumps(results, indent=2))
    return results


def table(r: dict) -> str:
    n = r["num_samples"]
    return "\n".join([
        f"Synthetic cache: {n:,} samples x {r['tokens_per_sample']} tokens ({r['scored_per_sample']} scored), "
        f"{r['cache_bytes'] / 1e9:.2f} GB, written in {r['write_s']:.0f} s",
        "",
        "| start-up step | seconds |",
        "| --- | --- |",
        f"| open the cache (shard index arrays) | {r['open_s']:.2f} |",
        f"| train dataset from the shard offsets (`to_dataset`) | {r['to_dataset_s']:.2f} |",
        f"| `teacher_nll` difficulty (token log-probs only) | {r['teacher_nll_s']:.2f} |",
        f"| before: train dataset from per-token Python lists (timed on {r['old_samples_timed']:,}, scaled) | "
        f"{r['old_to_dataset_s_scaled']:.1f} |",
        *(f"| whole `OfflineOnPolicyKDTrainer(...)`, {name} | {s:.2f} |" for name, s in r["trainer_init_s"].items()),
        f"| before: the curriculum scorer's `cache_id`/`cache_index` read, `np.asarray(dataset[column])` (timed on "
        f"{r['old_samples_timed']:,}, scaled; now straight from Arrow) | {r['old_column_read_s_scaled']:.1f} |",
        f"| the curriculum's first epoch order (`CurriculumSampler.schedule`, at the first step) | "
        f"{r['curriculum_schedule_s']:.2f} |",
        f"| before: that order built position by position (timed on {r['old_samples_timed']:,}, scaled) | "
        f"{r['old_curriculum_schedule_s_scaled']:.1f} |",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
