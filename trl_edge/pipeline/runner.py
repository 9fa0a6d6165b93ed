"""Run a pipeline stage by stage: print the plan, skip what is done, resume what was interrupted, record what ran.

Each stage writes ``output_dir/NN-name/`` and, when it finishes, ``stage.json``: the hash of its resolved settings
and of its inputs (the artifacts of the stages it reads), the hash of its own artifact, its time and storage. A rerun
compares: a stage whose record matches is skipped; one whose settings or inputs changed reruns, and so does every
stage after it; one that was interrupted (a directory without a record) resumes from the inside (its trainer's latest
checkpoint, its finished rollout or cache shards).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..sealed_files import atomic_write
from .checkpoints import resumable_checkpoint
from .config import PipelineConfig, StageSpec, parse_reference
from .decisions import StageFacts, decide
from .stages import KINDS, MODEL_KINDS, PipelineError, validate_script_config
from .teacher_consistency import teacher_mismatches
from .warm import run_warm, single_process, start_zygote

RECORD = "stage.json"
STARTED = "stage.started.json"  # the key a stage started with: a resume is only a resume of the same work
# Files that differ between two runs of the same stage without changing what it made (timings, the paths it was
# given, provenance naming them): left out of its hash, which covers the weights, shards and data themselves. The
# runner's own, and each kind's (its table entry).
VOLATILE_FILES = frozenset(("log.txt", "config.yaml", RECORD, STARTED)).union(
    *(kind.volatile_files for kind in KINDS.values())
)


@dataclass
class PlannedStage:
    spec: StageSpec
    directory: Path
    config: dict  # the stage script's configuration, references resolved
    inputs: list[str]  # the directories of the stages it reads
    action: str = "run"  # skip | run | rerun | resume
    reason: str = ""
    record: dict | None = None
    extra: dict = field(default_factory=dict)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def artifact_hash(path: Path) -> str:
    """A hash of what a stage made: every file under its artifact, but checkpoints and run-specific files."""
    h = hashlib.sha256()
    if path.is_file():
        files = [path]
        root = path.parent
    else:
        root = path
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.name not in VOLATILE_FILES and not p.name.startswith(".")
            and not any(part.startswith(("checkpoint-", "runs")) for part in p.relative_to(path).parts[:-1])
        )  # fmt: skip
    for f in files:
        if f.name == "metrics.json":  # an evaluation's numbers, without its timings
            data = json.loads(f.read_text())
            digest = hashlib.sha256(json.dumps({k: v for k, v in data.items() if k != "info"}, sort_keys=True)
                                    .encode()).hexdigest()  # fmt: skip
        else:
            digest = _file_sha256(f)
        h.update(f"{f.relative_to(root)}:{digest}\n".encode())
    return h.hexdigest()


def directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def path_fingerprint(value: str) -> str | None:
    """A fingerprint of a local data file or folder a stage reads (so that editing the data reruns the stage)."""
    path = Path(value)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files[:10_000]:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}:{_file_sha256(f) if size < 256 << 20 else f.stat().st_mtime_ns}\n".encode())
    return h.hexdigest()


class PipelineRunner:
    """Plans and runs a :class:`PipelineConfig`; ``run()`` returns the planned stages with what happened."""

    def __init__(self, config: PipelineConfig, echo=print):
        self.config, self.echo = config, echo
        self.output_dir = Path(config.output_dir)
        self.stages = [self._resolve(spec) for spec in config.stages]

    # ------------------------------------------------------------------ references
    def _stage_dir(self, spec: StageSpec) -> Path:
        return self.output_dir / spec.dir_name

    def _find(self, name: str, spec: StageSpec, offset: int) -> StageSpec | None:
        exact = [s for s in self.config.stages if s.name == name and s.name != s.base_name and s.index < spec.index]
        if exact:  # a stage of a given round by its full name, e.g. @cache-r2
            return exact[-1]
        round_ = spec.round + offset if spec.round is not None else None
        if offset and round_ is not None and round_ < 1:
            return None
        candidates = [s for s in self.config.stages if s.base_name == name and s.index < spec.index]
        if round_ is not None and any(s.round is not None for s in candidates):
            candidates = [s for s in candidates if s.round == round_]
        elif offset:
            candidates = candidates[: len(candidates) + offset] if len(candidates) + offset > 0 else []
        return candidates[-1] if candidates else None

    def _resolve_value(self, value, spec: StageSpec, inputs: list[str]):
        if isinstance(value, list):
            return [v for v in (self._resolve_value(x, spec, inputs) for x in value)]
        if isinstance(value, dict):
            return {k: self._resolve_value(v, spec, inputs) for k, v in value.items()}
        ref = parse_reference(value)
        if ref is None:
            return value
        where = f"stage {spec.name!r}"
        if ref.name == "model":
            earlier = [s for s in self.config.stages if s.kind in MODEL_KINDS and s.index < spec.index]
            if earlier:
                target = earlier[-1]
            elif "student" in self.config.models:
                return self.config.models["student"]
            else:
                raise PipelineError(f"{where}: @model names the latest sft/kd/make_student output, and there is none "
                                    "before it: add `models: {student: ...}`.")  # fmt: skip
        elif ref.name in self.config.models and not any(s.base_name == ref.name for s in self.config.stages):
            return self.config.models[ref.name]
        else:
            target = self._find(ref.name, spec, ref.offset)
            if target is None:
                if ref.offset:
                    return None  # an earlier round that does not exist (round 1): dropped
                raise PipelineError(
                    f"{where}: {value!r} names no stage before it (stages: "
                    f"{', '.join(s.name for s in self.config.stages[: spec.index]) or 'none'}; models: "
                    f"{', '.join(self.config.models) or 'none'})."
                )
        directory = self._stage_dir(target)
        inputs.append(str(directory))
        if ref.sub:
            return str(directory / ref.sub)
        return str(directory / KINDS[target.kind].artifact)

    def _resolve(self, spec: StageSpec) -> PlannedStage:
        kind = KINDS[spec.kind]
        inputs: list[str] = []
        settings = self._resolve_value(spec.settings, spec, inputs)
        for key in ("teacher_cache",):  # lists of references: drop the rounds that do not exist, with their weights
            if isinstance(settings.get(key), list):
                kept = [i for i, v in enumerate(settings[key]) if v is not None]
                weights = settings.get(f"{key}_weights")
                settings[key] = [settings[key][i] for i in kept]
                if isinstance(weights, list):
                    settings[f"{key}_weights"] = [weights[i] for i in kept]
        directory = self._stage_dir(spec)
        config = kind.script_config(settings, directory, spec.round)
        accelerate = self._resolve_value(spec.accelerate_config, spec, inputs)
        if accelerate is not None and not Path(accelerate).is_file():
            raise PipelineError(f"stage {spec.name!r}: accelerate_config {accelerate!r} is not a file "
                                "(see recipes/accelerate/).")  # fmt: skip
        spec.accelerate_config = accelerate
        validate_script_config(spec.kind, config, f"stage {spec.name!r}")
        return PlannedStage(spec, directory, config, sorted(set(inputs)))

    # ------------------------------------------------------------------ plan
    def _key(self, stage: PlannedStage) -> tuple[str, dict]:
        inputs = {}
        for directory in stage.inputs:
            record = _read_record(Path(directory))
            inputs[directory] = record["artifact_hash"] if record else None
        data_files = {}
        for key in ("dataset", "dataset_name", "generation_dataset", "include_path"):
            value = stage.config.get(key)
            if isinstance(value, str) and not any(value.startswith(d) for d in stage.inputs):
                data_files[value] = path_fingerprint(value)
        accelerate = stage.spec.accelerate_config
        payload = {
            "kind": stage.spec.kind,
            "config": stage.config,
            "accelerate_config": Path(accelerate).read_text() if accelerate else None,
            "inputs": inputs,
            "data": data_files,
        }
        # Paths inside the pipeline's own directory count relative to it: a moved or copied pipeline still resumes.
        text = json.dumps(payload, sort_keys=True, default=str).replace(str(self.output_dir), "$OUTPUT_DIR")
        return hashlib.sha256(text.encode()).hexdigest(), json.loads(text)

    def plan(self, until: str | None = None) -> list[PlannedStage]:
        """Decide every stage's action (``decisions.decide``) from what is on disk; ``until`` ends the run early."""
        earlier_runs, after_until = None, None
        for stage in self.stages:
            record = _read_record(stage.directory)
            stage.record = record
            key, payload = self._key(stage)
            stage.extra = {"key": key, "payload": payload}
            kind = KINDS[stage.spec.kind]
            has_files = stage.directory.exists() and any(stage.directory.iterdir())
            checkpoint = None
            if kind.trains and record is None and has_files:
                checkpoint = resumable_checkpoint(stage.directory / kind.artifact)[0]
            facts = StageFacts(
                key=key, payload=payload, record=record, started=_read_json(stage.directory / STARTED),
                has_files=has_files, earlier_runs=earlier_runs, after_until=after_until, checkpoint=checkpoint,
                trains=kind.trains,
            )  # fmt: skip
            decision = decide(facts)
            stage.action, stage.reason = decision.action, decision.reason
            if stage.action not in ("skip", "later") and earlier_runs is None:
                earlier_runs = stage.spec.dir_name
            if until in (stage.spec.name, stage.spec.dir_name):
                after_until = stage.spec.name
        return self.stages

    def print_plan(self) -> None:
        self.echo(f"Pipeline {self.config.source or ''} -> {self.output_dir}")
        for stage in self.stages:
            self.echo(f"  {stage.spec.dir_name:<28} {stage.spec.kind:<16} {stage.action.upper():<7} {stage.reason}")
        for warning in teacher_mismatches(self.stages):
            self.echo(warning)

    # ------------------------------------------------------------------ run
    def run(self, until: str | None = None, dry_run: bool = False) -> list[PlannedStage]:
        if until is not None and not any(until in (s.spec.name, s.spec.dir_name) for s in self.stages):
            raise PipelineError(
                f"--until {until!r} names no stage; stages: {', '.join(s.spec.name for s in self.stages)}."
            )
        self.plan(until)
        self.print_plan()
        if dry_run:
            return self.stages
        self.output_dir.mkdir(parents=True, exist_ok=True)
        to_run = [s for s in self.stages if s.action not in ("skip", "later")]
        if self.config.warm_start and any(single_process(s.spec.accelerate_config) for s in to_run):
            start_zygote()  # its imports overlap the first stage's preparation
        for stage in self.stages:
            if stage.action == "later":
                break
            if stage.action != "skip":
                self._run_stage(stage)
            if until in (stage.spec.name, stage.spec.dir_name):
                self.echo(f"Stopped after {stage.spec.dir_name} (--until).")
                break
        return self.stages

    def _run_stage(self, stage: PlannedStage) -> None:
        spec, kind = stage.spec, KINDS[stage.spec.kind]
        if stage.action == "rerun" and stage.directory.exists():
            shutil.rmtree(stage.directory)  # made with other settings or inputs: start clean
        stage.directory.mkdir(parents=True, exist_ok=True)
        key, payload = self._key(stage)
        atomic_write(stage.directory / STARTED, json.dumps({"key": key, "payload": payload}, default=str).encode())
        config = dict(stage.config)
        if kind.trains:
            checkpoint, incomplete = resumable_checkpoint(stage.directory / kind.artifact)
            for path, problem in incomplete:  # a kill during its save: resume from the one before, write it anew
                self.echo(f"[{spec.dir_name}] removing incomplete {Path(path).name}: {problem}")
                shutil.rmtree(path)
            if checkpoint is not None:
                config["resume_from_checkpoint"] = checkpoint
                self.echo(f"[{spec.dir_name}] resuming from {checkpoint}")
        config_path = stage.directory / "config.yaml"
        atomic_write(config_path, yaml.safe_dump(config, sort_keys=False).encode())
        argv = kind.argv(config_path, dict(config), spec.accelerate_config)
        self.echo(f"[{spec.dir_name}] {' '.join(argv[2:])}")
        start = time.time()
        warm = self.config.warm_start and single_process(spec.accelerate_config)
        code = _stream(argv, stage.directory / "log.txt", warm=warm)
        seconds = time.time() - start
        if code != 0:
            tail = "".join((stage.directory / "log.txt").read_text(errors="replace").splitlines(True)[-15:])
            raise PipelineError(
                f"Stage {spec.dir_name} ({spec.kind}) failed with exit code {code}; its log is "
                f"{stage.directory / 'log.txt'}. Fix the cause and rerun the pipeline: finished stages are kept.\n"
                f"{tail}"
            )
        artifact = stage.directory / kind.artifact
        if not artifact.exists():
            raise PipelineError(f"Stage {spec.dir_name} finished but wrote no {artifact}.")
        key, payload = self._key(stage)
        record = {
            "stage": spec.dir_name, "kind": spec.kind, "round": spec.round, "key": key, "payload": payload,
            "artifact": str(artifact), "artifact_hash": artifact_hash(artifact), "seconds": seconds,
            "storage_bytes": directory_size(stage.directory), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resumed": stage.action == "resume",
        }  # fmt: skip
        atomic_write(stage.directory / RECORD, json.dumps(record, indent=2, default=str).encode())
        stage.record = record
        self.echo(f"[{spec.dir_name}] done in {seconds:.1f} s, {record['storage_bytes'] / 1e6:.1f} MB")


def _read_record(directory: Path) -> dict | None:
    return _read_json(directory / RECORD)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _stream(argv: list[str], log_path: Path, warm: bool = False) -> int:
    """Run ``argv``, copying its output to this console and to ``log_path``; ``warm``: forked from the warm zygote
    (``warm.py``) rather than started afresh."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "a", encoding="utf-8") as log:
        if warm:

            def copy(line: str) -> None:
                log.write(line)
                sys.stdout.write(line)

            return run_warm(argv, env, copy)
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                   errors="replace")  # fmt: skip
        for line in process.stdout:
            log.write(line)
            sys.stdout.write(line)
        return process.wait()
