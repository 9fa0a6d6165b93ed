"""Exact match of final answers (``trl_edge.evaluation.answers``), as a local ``evaluate`` metric.

A reasoning model's answer is right when its final answer is: both sides go through the same extraction and
normalisation, so "Let us think. 12 + 7 = 19. Answer: 19." matches "19" and "#### 19".
"""

import datasets
import evaluate

from trl_edge.evaluation.answers import answers_match

_DESCRIPTION = "Exact match of the final answers extracted from generations (boxed, ####, Answer:, last number)."
_INPUTS = """
Args:
    predictions: list of generated texts.
    references: list of references, one per prediction: ground-truth answers, or texts to extract them from.
    extract_references: extract the answer from each reference (default True); False when the references are the
        answers themselves (e.g. a `target` column), which are then only normalised.
    use_aggregator: return the mean (default) or the per-example 0/1 scores.
Returns:
    {"exact_match": float} (or a list of floats with use_aggregator=False).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class AnswerExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, extract_references=True, use_aggregator=True):
        scores = [
            float(answers_match(p, r, extract_reference=extract_references)) for p, r in zip(predictions, references)
        ]
        if not use_aggregator:
            return {"exact_match": scores}
        return {"exact_match": sum(scores) / len(scores) if scores else 0.0}
