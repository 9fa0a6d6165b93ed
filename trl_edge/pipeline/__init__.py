"""The whole method as one resumable job: a declarative list of stages, each in its own process, and a report."""

from .config import PipelineConfig
from .report import write_report
from .runner import PipelineRunner, artifact_hash
from .stages import KINDS, STAGE_KINDS, PipelineError, StageKind

__all__ = [
    "KINDS",
    "STAGE_KINDS",
    "StageKind",
    "PipelineConfig",
    "PipelineError",
    "PipelineRunner",
    "artifact_hash",
    "run_pipeline",
    "write_report",
]


def run_pipeline(config, *, until: str | None = None, dry_run: bool = False, echo=print):
    """Plan, run and report a pipeline (a :class:`PipelineConfig` or the path of its YAML file)."""
    from pathlib import Path

    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.from_yaml(config)
    runner = PipelineRunner(config, echo=echo)
    try:
        stages = runner.run(until=until, dry_run=dry_run)
    finally:
        if not dry_run:
            write_report(runner.stages, Path(config.output_dir), config.models, config.source)
    if not dry_run:
        echo(f"Report: {Path(config.output_dir) / 'report.md'}")
    return stages
