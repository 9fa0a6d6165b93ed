"""Is one teacher behind the whole method? Checked on the plan, before anything runs.

Offline on-policy distillation converges to a biased point unless the teacher that wrote the SFT data is the one that
scores the rollouts (Lightning OPD): a pipeline whose SFT stage trains on one teacher's answers and whose cache
stages score with another says so when it prints its plan. (KD itself refuses caches of two teachers.)
"""

from __future__ import annotations

import os


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and os.path.normpath(str(a)) == os.path.normpath(str(b))


def teacher_mismatches(stages) -> list[str]:
    """One warning per (SFT stage, cache stage) pair whose teachers differ. ``stages``: the planned stages."""
    answers = {str(s.directory): s for s in stages if s.spec.kind == "teacher_answers"}
    caches = [s for s in stages if s.spec.kind == "cache"]
    warnings = []
    for sft in (s for s in stages if s.spec.kind == "sft"):
        for directory in sft.inputs:
            source = answers.get(directory)
            if source is None:
                continue
            writer = source.config.get("model_name_or_path")
            for cache in caches:
                scorer = cache.config.get("teacher")
                if not _same(writer, scorer):
                    warnings.append(
                        f"Warning: stage {sft.spec.name!r} trains on answers written by {writer} (stage "
                        f"{source.spec.name!r}), but stage {cache.spec.name!r} scores with {scorer}. Offline "
                        "on-policy distillation converges to a biased point unless one teacher writes the SFT data "
                        "and scores the rollouts: use the same teacher in both."
                    )
    return warnings
