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
    return parser


def pipeline_command(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..pipeline import PipelineConfig, PipelineError, run_pipeline

    try:
        config = PipelineConfig.from_yaml(args.config, {"output_dir": args.output_dir} if args.output_dir else None)
        run_pipeline(config, until=args.until, dry_run=args.dry_run)
    except (PipelineError, FileNotFoundError) as err:
        print(f"trl-edge pipeline: error: {err}")
        return 1
    return 0
