"""Training scripts: each exposes ``make_parser()`` and ``main(...)``, run by the CLI through ``accelerate launch``
and importable from the thin launchers in ``recipes/``."""
