"""The scripts behind the ``trl-edge`` subcommands and the pipeline's stages, one module per stage kind, named as the
kind (``trl-edge teacher-answers`` and ``kind: teacher_answers`` run ``scripts/teacher_answers.py``; see
``trl_edge.pipeline.stages.KINDS``). Each exposes ``dataclass_types()``, ``make_parser()`` and ``run(argv)``; the
training ones run under ``accelerate launch`` and are importable from the thin launchers in ``recipes/``."""
