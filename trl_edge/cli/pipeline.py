"""``trl-edge pipeline --config pipeline.yaml``: run the whole method stage by stage, resumably, with a report."""

from __future__ import annotations

from argparse import ArgumentParser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="trl-edge pipeline",
        allow_abbrev=False,
        description="Run a pipeline file: each stage in its own process (under accelerate launch with its own "
        "config), finished stages skipped, changed ones rerun with everything after them, interrupted ones resumed; "
        "ends with report.md, metrics.json and plots in output_dir.",
    )
    parser.add_argument("--config", required=True, help="The pipeline YAML (see recipes/*/pipeline.yaml)")
    parser.add_argument("--output_dir", help="Override the file's output_dir")
    parser.add_argument("--until", help="Stop after this stage (its name, e.g. kd-r1, or directory, e.g. 05-kd-r1)")
    parser.add_argument("--dry_run", action="store_true", help="Print the plan (what runs, what is skipped, why)")
    parser.add_argument(
        "--warm_start",
        choices=("true", "false"),
        help="Override the file's warm_start (default true): single-process stages forked from a process that "
        "imported torch, transformers and trl once; false: each stage a fresh process",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a value of the file by its dotted path, e.g. --set defaults.sft.max_steps=2 (VALUE is YAML)",
    )
    return parser


def apply_overrides(raw: dict, assignments: list[str]) -> dict:
    """``raw`` with each ``a.b.c=value`` set (``value`` read as YAML; list items by index: ``stages.3.num_layers``)."""
    import yaml

    from ..pipeline import PipelineError

    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise PipelineError(f"--set {assignment!r}: write KEY=VALUE, e.g. defaults.sft.max_steps=2.")
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = yaml.safe_load(value)
        else:
            node[last] = yaml.safe_load(value)
    return raw


def pipeline_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import yaml

    from ..pipeline import PipelineConfig, PipelineError, run_pipeline

    try:
        raw = apply_overrides(yaml.safe_load(open(args.config, encoding="utf-8")), args.set)
        if args.output_dir:
            raw["output_dir"] = args.output_dir
        if args.warm_start:
            raw["warm_start"] = args.warm_start == "true"
        config = PipelineConfig.from_dict(raw, source=args.config)
        run_pipeline(config, until=args.until, dry_run=args.dry_run)
    except (PipelineError, FileNotFoundError, KeyError, IndexError, ValueError) as err:
        print(f"trl-edge pipeline: error: {err}")
        return 1
    return 0
