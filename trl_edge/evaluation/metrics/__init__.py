"""The ``evaluate`` metrics trl-edge ships, loaded by local path: offline, no Hub fetch.

``evaluate.load("rouge")`` downloads its script from the Hub, so it fails on an offline cluster; each folder here is
a metric module (``NAME/NAME.py``) that ``evaluate.load(str(folder))`` reads from the installed package.
"""

from __future__ import annotations

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRICS = ("rouge_l", "answer_exact_match")


def metric_path(name: str) -> Path:
    """The folder of the shipped metric ``name`` (what ``evaluate.load`` takes)."""
    if name not in METRICS:
        raise ValueError(f"Unknown trl-edge metric {name!r}; the package ships {', '.join(METRICS)}.")
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise FileNotFoundError(
            f"The metric module {path / f'{name}.py'} is missing from the installed package: reinstall trl-edge "
            "(`pip install -e .` from a clone, or `pip install trl-edge`)."
        )
    return path


def load_metric(name: str):
    """``evaluate.load`` of a shipped metric, by local path."""
    import evaluate

    return evaluate.load(str(metric_path(name)))
