"""The scripts behind the ``trl-edge`` subcommands and the pipeline's stages, one module per stage kind, named as the
kind (``trl-edge teacher-answers`` and ``kind: teacher_answers`` run ``scripts/teacher_answers.py``; see
``trl_edge.pipeline.stages.KINDS``). Each exposes ``dataclass_types()``, ``make_parser()`` and ``run(argv)``; the
training ones run under ``accelerate launch`` and are importable from the thin launchers in ``recipes/``."""


def script_parser(dataclass_types, prog: str | None = None):
    """The parser of a script's config dataclasses: TRL's (``--config FILE``, flags override the file)."""
    from trl import TrlParser

    return TrlParser(dataclass_types, prog=prog)
