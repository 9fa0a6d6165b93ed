"""``trl-edge cache verify DIR``: check a teacher cache shard by shard and sample by sample; exit 1 on a problem."""

from __future__ import annotations

from argparse import ArgumentParser


def verify_cache(argv: list[str]) -> int:
    parser = ArgumentParser(prog="trl-edge cache verify", description="Check every shard and sample of a cache.")
    parser.add_argument("path", help="The cache directory.")
    args = parser.parse_args(argv)

    from trl_edge.cache.format import CacheError
    from trl_edge.cache.reader import TeacherLogitCache

    try:
        cache = TeacherLogitCache(args.path)
    except CacheError as err:
        print(f"FAILED: {err}")
        return 1
    problems = cache.verify()
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.path}:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    m = cache.metadata
    print(
        f"OK: {args.path}: {m.num_samples} samples in {m.num_shards} shard(s), teacher {m.teacher}, "
        f"top_k {m.top_k}, encoding {m.encoding}"
    )
    return 0
