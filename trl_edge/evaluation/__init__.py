"""Measure a checkpoint three ways, each a plain ``dict`` of floats a pipeline can store and compare.

* :func:`evaluate_fidelity`: KL(teacher || student), top-1 agreement and CE on a held-out teacher cache.
* :func:`evaluate_generation`: greedy answers to held-out prompts, ROUGE-L and final-answer exact match.
* :func:`run_lm_eval`: benchmarks through lm-evaluation-harness (``pip install trl-edge[eval]``).

``trl-edge eval`` runs them on one checkpoint and writes ``metrics.json``.
"""

from .answers import answers_match, extract_answer, normalize_answer
from .benchmarks import DEFAULT_TASKS, OPENPANGU_BENCHMARKS, flatten_lm_eval_results, run_lm_eval
from .fidelity import evaluate_fidelity
from .generation import evaluate_generation, greedy_generate

__all__ = [
    "DEFAULT_TASKS",
    "OPENPANGU_BENCHMARKS",
    "answers_match",
    "evaluate_fidelity",
    "evaluate_generation",
    "extract_answer",
    "flatten_lm_eval_results",
    "greedy_generate",
    "normalize_answer",
    "run_lm_eval",
]
