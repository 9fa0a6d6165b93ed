"""The pipeline file: a declarative list of stages, blocks that repeat for rounds, and references between stages.

```yaml
output_dir: outputs/pipeline
models: {teacher: Qwen/Qwen3-8B, student: Qwen/Qwen3-0.6B}
defaults: {accelerate_config: recipes/accelerate/npu_multi.yaml}    # merged into every stage (per kind: `sft:`...)
stages:
  - {name: sft, kind: sft, model: "@student", dataset: data/sft, learning_rate: 2.0e-5}
  - repeat: 2                                                        # rounds r = 1, 2
    stages:
      - {name: rollout, kind: rollout, model: "@model", dataset: data/prompts, temperature: 1.0}
      - {name: cache, kind: cache, teacher: "@teacher", dataset: "@rollout"}
      - {name: kd, kind: kd, model: "@model", teacher_cache: ["@cache", "@cache[-1]"]}
  - {name: eval, kind: eval, model: "@model", teacher_cache: "@heldout-cache"}
```

A string value starting with ``@`` is a reference, resolved when the plan is built:

* ``@teacher``, ``@student`` (any key of ``models``): that model;
* ``@model``: the current student, the output of the latest ``sft``/``kd``/``make_student`` stage before this one
  (``models.student`` before any);
* ``@NAME``: the main artifact of the stage named ``NAME`` (in a repeated block, the one of the same round);
  ``@NAME[-1]``: of the previous round (nothing in round 1: dropped from a list, with its weight);
  ``@NAME/sub/path``: a path inside that stage's directory.

Every stage of the expanded plan gets a directory ``output_dir/NN-name`` (``name-rK`` inside a repeated block).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .stages import STAGE_KINDS, PipelineError

_REFERENCE = re.compile(r"^@(?P<name>[A-Za-z0-9_.-]+)(?:\[(?P<offset>-?\d+)\])?(?P<sub>/.*)?$")


@dataclass
class StageSpec:
    """One stage of the expanded plan, its references not yet resolved."""

    index: int
    name: str  # unique in the plan: the stage's name, with its round in a repeated block
    base_name: str  # the name as written
    kind: str
    settings: dict
    round: int | None = None
    accelerate_config: str | None = None

    @property
    def dir_name(self) -> str:
        return f"{self.index:02d}-{self.name}"


@dataclass
class PipelineConfig:
    """A parsed pipeline file."""

    output_dir: str
    stages: list[StageSpec]
    models: dict = field(default_factory=dict)
    source: str | None = None
    # Single-process stages forked from a process that imported torch, transformers and trl once (pipeline/warm.py)
    # rather than started afresh; false: each stage a fresh `accelerate launch` / python process.
    warm_start: bool = True

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> PipelineConfig:
        raw = yaml.safe_load(Path(path).read_text())
        if not isinstance(raw, dict):
            raise PipelineError(f"{path}: a pipeline file is a YAML mapping with `output_dir` and `stages`.")
        raw.update(overrides or {})
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str | None = None) -> PipelineConfig:
        where = source or "the pipeline"
        unknown = set(raw) - {"output_dir", "models", "defaults", "stages", "warm_start"}
        if unknown:
            raise PipelineError(f"{where}: unknown top-level key(s) {sorted(unknown)}; use output_dir, models, "
                                "defaults, stages, warm_start.")  # fmt: skip
        warm_start = raw.get("warm_start", True)
        if not isinstance(warm_start, bool):
            raise PipelineError(f"{where}: `warm_start` is true or false, got {warm_start!r}.")
        if not raw.get("output_dir"):
            raise PipelineError(f"{where}: set `output_dir`, where every stage writes its directory.")
        if not raw.get("stages"):
            raise PipelineError(f"{where}: `stages` is empty: list at least one stage.")
        defaults = raw.get("defaults") or {}
        odd = set(defaults) - set(STAGE_KINDS) - {"accelerate_config"}
        if odd:
            raise PipelineError(f"{where}: `defaults` holds one mapping per stage kind ({', '.join(STAGE_KINDS)}) "
                                f"and `accelerate_config`; got {sorted(odd)}.")  # fmt: skip
        stages: list[StageSpec] = []
        _expand(raw["stages"], defaults, stages, round_=None, where=where)
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PipelineError(f"{where}: stage names must be unique (in each round); repeated: {duplicates}.")
        return cls(output_dir=str(raw["output_dir"]), stages=stages, models=dict(raw.get("models") or {}),
                   source=source, warm_start=warm_start)  # fmt: skip


def _expand(items, defaults: dict, out: list[StageSpec], round_: int | None, where: str) -> None:
    if not isinstance(items, list):
        raise PipelineError(f"{where}: `stages` must be a list of stages (or `repeat` blocks).")
    for item in items:
        if not isinstance(item, dict):
            raise PipelineError(f"{where}: each stage is a mapping with `name` and `kind`, got {item!r}.")
        if "repeat" in item:
            if round_ is not None:
                raise PipelineError(f"{where}: `repeat` blocks do not nest.")
            count = item["repeat"]
            if not isinstance(count, int) or count < 1:
                raise PipelineError(f"{where}: `repeat` must be a positive integer, got {count!r}.")
            extra = set(item) - {"repeat", "stages"}
            if extra:
                raise PipelineError(f"{where}: a repeat block holds only `repeat` and `stages`, not {sorted(extra)}.")
            for r in range(1, count + 1):
                _expand(item.get("stages") or [], defaults, out, round_=r, where=where)
            continue
        name, kind = item.get("name"), item.get("kind")
        if not name or not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise PipelineError(f"{where}: every stage needs a `name` of letters, digits, '-', '_' or '.': {item}.")
        if kind not in STAGE_KINDS:
            raise PipelineError(f"{where}: stage {name!r} has kind {kind!r}; choose one of {', '.join(STAGE_KINDS)}.")
        settings = {"accelerate_config": defaults.get("accelerate_config"), **copy.deepcopy(defaults.get(kind) or {})}
        settings.update(copy.deepcopy({k: v for k, v in item.items() if k not in ("name", "kind")}))
        accelerate_config = settings.pop("accelerate_config", None)
        full_name = f"{name}-r{round_}" if round_ is not None else str(name)
        out.append(StageSpec(len(out), full_name, str(name), kind, settings, round_, accelerate_config))


@dataclass
class Reference:
    name: str
    offset: int = 0
    sub: str | None = None


def parse_reference(value) -> Reference | None:
    if not isinstance(value, str) or not value.startswith("@"):
        return None
    match = _REFERENCE.match(value)
    if match is None:
        raise PipelineError(f"Cannot read the reference {value!r}: write @name, @name[-1] or @name/sub/path.")
    return Reference(match["name"], int(match["offset"] or 0), (match["sub"] or "").lstrip("/") or None)
