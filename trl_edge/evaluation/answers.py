"""The final answer of a free-form, math-style generation, so that exact match compares answers and not prose.

A model that reasons before it answers ("Let us think step by step. 12 + 7 = 19. Answer: 19.") is right when its
final answer is, whatever the words around it. :func:`extract_answer` looks, in order, for ``\\boxed{X}``,
``#### X`` (GSM8K), ``Answer: X`` / ``the answer is X`` / ``答案：X``, and else takes the last number;
:func:`normalize_answer` makes ``"1,000."``, ``"$1000$"`` and ``"1000.0"`` the same answer, and ``"white".`` or
``**white**`` the same as ``white``.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "normalize_answer", "answers_match"]

_QUOTES = "\"'“”‘’*`"  # quotes and markdown emphasis around an answer
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_HASHES = re.compile(r"####\s*([^\n]+)")
_LEADING_NUMBER = re.compile(r"^\$?\s*(-?\d+(?:,\d{3})*(?:\.\d+)?)(?=$|[\s.。,;!?)$])")
_ANSWER = re.compile(
    r"(?:answer\s*(?:is\s*)?[:：]|answer\s+is\s+|答案\s*(?:是|为)?\s*[:：]?)\s*([^\n]+)", flags=re.IGNORECASE
)


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}``, braces balanced (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: the generation was cut inside the box


def extract_answer(text: str) -> str | None:
    """The final answer in ``text`` (see the module docstring), or None when it holds no answer and no number."""
    if text is None:
        return None
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    for pattern in (_HASHES, _ANSWER):
        matches = pattern.findall(text)
        if matches and matches[-1].strip():
            answer = matches[-1].strip()
            leading = _LEADING_NUMBER.match(answer)  # "Answer: 19 apples." -> "19", "Answer: 2/3" stays
            return _last_boxed(answer) or (leading.group(1) if leading else answer)
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str | None) -> str:
    """A canonical form: no surrounding ``$`` / spaces / trailing periods, no thousands commas, ``19.0`` -> ``19``."""
    if answer is None:
        return ""
    text = str(answer).strip().strip("$").strip()
    text = re.sub(r"^\\text\{(.*)\}$", r"\1", text)
    text = text.rstrip(".。!").strip().strip(_QUOTES).rstrip(".。!").strip().lower()  # 'Answer: "white".' -> white
    if re.fullmatch(r"-?\d+(?:,\d{3})+(?:\.\d+)?", text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return " ".join(text.split())
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def answers_match(prediction: str, reference: str, extract_reference: bool = True) -> bool:
    """Whether the prediction's final answer equals the reference's (``extract_reference=False``: ``reference`` is
    the ground-truth answer itself, e.g. a ``target`` column, and is only normalised).

    A short word answer given as ground truth ("Paris", "cold") also matches a prediction that says it in a sentence
    without an ``Answer:`` line ("The capital of France is Paris."): the truth as a whole phrase in the prediction.
    Numbers always compare as final answers (a "19" inside "12 + 7 = 19 ... Answer: 20" is not a match).
    """
    predicted = extract_answer(prediction)
    truth = extract_answer(reference) if extract_reference else reference
    if truth is None:
        return False
    truth = normalize_answer(truth)
    if truth == "":
        return False
    if predicted is not None and normalize_answer(predicted) == truth:
        return True
    if extract_reference or _is_number(truth) or prediction is None:
        return False
    if predicted is not None and _ANSWER.search(prediction):
        return False  # an explicit final answer that is another one
    return re.search(rf"(?<![\w]){re.escape(truth)}(?![\w])", prediction.lower()) is not None
