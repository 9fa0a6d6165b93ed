"""ROUGE-L F-measure (``rouge-score``), as a local ``evaluate`` metric: ``evaluate.load("rouge")`` needs the Hub.

Text is tokenised as ``rouge-score`` does (lower case, runs of ``[a-z0-9]``), except that every CJK character is a
token of its own: ``rouge-score`` drops them, which scores any Chinese or Japanese answer 0.
"""

import re

import datasets
import evaluate
from rouge_score import rouge_scorer, tokenize

_CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])")

_DESCRIPTION = "ROUGE-L F-measure: the longest common subsequence of tokens, balancing precision and recall."
_CITATION = """@inproceedings{lin-2004-rouge, title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
author = "Lin, Chin-Yew", booktitle = "Text Summarization Branches Out", year = "2004"}"""
_INPUTS = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction.
    use_stemmer: Porter-stem words longer than 3 letters (rouge-score's option), default False.
    use_aggregator: return the mean (default) or the per-example scores.
Returns:
    {"rouge_l": float} (or a list of floats with use_aggregator=False).
"""


class _Tokenizer:
    """rouge-score's tokenizer, with each CJK character kept as a token."""

    def __init__(self, use_stemmer: bool):
        self.stemmer = None
        if use_stemmer:
            from nltk.stem import porter

            self.stemmer = porter.PorterStemmer()

    def tokenize(self, text):
        tokens = []
        for piece in _CJK.split(text):
            if _CJK.fullmatch(piece):
                tokens.append(piece)
            elif piece:
                tokens.extend(tokenize.tokenize(piece, self.stemmer))
        return tokens


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _INPUTS)
class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=False, use_aggregator=True):
        scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Tokenizer(use_stemmer))
        scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
        if not use_aggregator:
            return {"rouge_l": scores}
        return {"rouge_l": sum(scores) / len(scores) if scores else 0.0}
