"""What the pipeline does with one stage on this run, and why: a pure function of what the planner read.

The rules, in order:

1. after the ``--until`` stage: ``later`` (not run this time);
2. nothing on disk: ``run``;
3. an earlier stage runs (its output will change): ``rerun``;
4. finished (a record) with the same settings-and-inputs hash: ``skip``;
5. finished with another hash: ``rerun``, saying which settings or inputs changed;
6. started but not finished (files, no record) with the same hash: ``resume`` (a trainer from its newest complete
   checkpoint, rollouts and caches from their sealed shards); with another hash: ``rerun`` from scratch.

The hash covers the stage's resolved config, its accelerate config, the artifact hashes of the stages it reads and
fingerprints of its data files (``PipelineRunner._key``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StageFacts:
    """What the planner knows about a stage."""

    key: str  # the hash of its settings and inputs now
    payload: dict  # what that hash covers (to say what changed)
    record: dict | None = None  # its finished record (stage.json), if any
    started: dict | None = None  # its started marker (stage.started.json), if any
    has_files: bool = False  # whether its directory holds anything
    earlier_runs: str | None = None  # the first earlier stage this run runs, if any
    after_until: str | None = None  # the --until stage, when this stage comes after it
    checkpoint: str | None = None  # for a trainer: the checkpoint it would resume from
    trains: bool = False


@dataclass(frozen=True)
class Decision:
    action: str  # later | run | rerun | skip | resume
    reason: str


def decide(facts: StageFacts) -> Decision:
    if facts.after_until is not None:
        return Decision("later", f"after --until {facts.after_until}: not run this time")
    if facts.record is None and not facts.has_files:
        return Decision("run", "not run yet")
    if facts.earlier_runs is not None:
        return Decision("rerun", f"an earlier stage ({facts.earlier_runs}) runs")
    if facts.record is not None:
        if facts.record.get("key") == facts.key:
            return Decision("skip", "done, settings and inputs unchanged")
        return Decision("rerun", what_changed(facts.record.get("payload", {}), facts.payload))
    started = facts.started or {}
    if started.get("key") != facts.key:
        return Decision("rerun", "interrupted, and " + what_changed(started.get("payload", {}), facts.payload))
    if not facts.trains:
        return Decision("resume", "interrupted: resumes from what it left")
    if facts.checkpoint is None:
        return Decision("resume", "interrupted before a complete checkpoint: its training starts over")
    return Decision("resume", f"interrupted: resumes from {Path(facts.checkpoint).name}")


def what_changed(old: dict, new: dict) -> str:
    """Which settings or inputs differ between two hash payloads, in words."""
    changes = []
    old_config, new_config = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_config) | set(new_config)):
        if old_config.get(key) != new_config.get(key):
            changes.append(f"{key}: {old_config.get(key)!r} -> {new_config.get(key)!r}")
    for directory, digest in (new.get("inputs") or {}).items():
        if (old.get("inputs") or {}).get(directory) != digest:
            changes.append(f"input {Path(directory).name} changed")
    if old.get("data") != new.get("data"):
        changes.append("its data files changed")
    if old.get("accelerate_config") != new.get("accelerate_config"):
        changes.append("its accelerate config changed")
    return "settings changed: " + "; ".join(changes) if changes else "settings changed"
