"""Write the quickstart's prompt sets: small, license-clean (written here), deterministic, several kinds.

    python recipes/quickstart/make_data.py      # rewrites recipes/quickstart/data/{train,heldout}/prompts.jsonl

Each row: ``prompt`` (one user message), ``kind`` (what sort of question), ``stage`` (``reasoning``: asks for
step-by-step work before the answer; ``direct``: asks for the answer alone; 3 : 1 as in the paper's curriculum),
``difficulty`` (for the curriculum: digits of the operands, 1 for the rest) and ``target`` (the ground truth where
the question has one, else empty). The answers are not here: the teacher writes them (the pipeline's
``teacher_answers`` stage), so the SFT data and the KD scores come from one teacher.

The held-out split has new questions of the training kinds and two kinds training never shows (``subtraction``,
``colors``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
    ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Argentina", "Buenos Aires"), ("Hungary", "Budapest"), ("Denmark", "Copenhagen"),
    ("Finland", "Helsinki"), ("Belgium", "Brussels"), ("the United Kingdom", "London"), ("Mexico", "Mexico City"),
    ("India", "New Delhi"), ("South Korea", "Seoul"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Chile", "Santiago"), ("Vietnam", "Hanoi"),
]  # fmt: skip
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "young"), ("happy", "sad"),
    ("light", "dark"), ("open", "closed"), ("early", "late"), ("high", "low"), ("full", "empty"), ("hard", "soft"),
    ("wet", "dry"), ("long", "short"), ("rich", "poor"), ("strong", "weak"), ("heavy", "light"), ("loud", "quiet"),
    ("win", "lose"), ("push", "pull"), ("day", "night"), ("in", "out"), ("left", "right"), ("true", "false"),
    ("begin", "end"), ("thick", "thin"), ("clean", "dirty"), ("near", "far"),
]  # fmt: skip
COLORS = [
    ("the sky on a clear day", "blue"), ("fresh grass", "green"), ("a ripe banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a lemon", "yellow"),
]  # fmt: skip
TOPICS = ["the sea", "a forest", "the moon", "a city at night", "winter", "a library", "rain", "a mountain",
          "the sun", "a garden", "music", "a river", "friendship", "a train", "the desert", "spring"]  # fmt: skip
OPEN = [
    "Write one sentence about {t}.", "Describe {t} in a few words.", "Give two facts about {t}.",
    "Why do people like {t}? Answer in one sentence.",
]  # fmt: skip


def question(kind: str, rng: random.Random, pools: dict) -> tuple[str, str, int]:
    """(question, ground truth or "", difficulty)."""
    if kind in ("sums", "times", "subtraction"):
        a, b = pools[kind].pop()
        if kind == "subtraction":
            return f"What is {a} - {b}?", str(a - b), 1
        if kind == "times":
            return f"What is {a} times {b}?", str(a * b), 1 + (a * b >= 10)
        return f"What is {a} + {b}?", str(a + b), 1 + (a + b >= 10)
    if kind == "facts":
        country, capital = pools["facts"].pop()
        return f"What is the capital of {country}?", capital, 1
    if kind == "opposites":
        word, opposite = pools["opposites"].pop()
        return f"What is the opposite of the word '{word}'?", opposite, 1
    if kind == "colors":
        thing, color = pools["colors"].pop()
        return f"What color is {thing}?", color, 1
    return rng.choice(OPEN).format(t=pools["topics"].pop()), "", 1


def styled(text: str, stage: str, target: str) -> str:
    """Short styles, so that the teacher's answers end well inside the token budget (its answer lengths are in
    each answer set's ``teacher_answers.json``)."""
    if stage == "direct":
        if not target:
            return f"{text} Answer in a few words."
        return f"{text} Reply with just the number." if target.isdigit() else f"{text} Reply with the answer only."
    if target:
        return f"{text} Explain in one short sentence, then write 'Answer:' followed by the answer."
    return f"{text} Answer in one short sentence."


def make_split(counts: dict, pools: dict, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows, i = [], 0
    for kind, count in counts.items():
        for _ in range(count):
            stage = "direct" if i % 4 == 3 else "reasoning"  # reasoning : direct = 3 : 1
            text, target, difficulty = question(kind, rng, pools)
            rows.append({
                "prompt": [{"role": "user", "content": styled(text, stage, target)}],
                "kind": kind, "stage": stage, "difficulty": difficulty, "target": target,
            })  # fmt: skip
            i += 1
    rng.shuffle(rows)
    return rows


def pairs(rng: random.Random, ok) -> list[tuple[int, int]]:
    """Every one-digit pair ``(a, b)`` that ``ok`` accepts, shuffled."""
    out = [(a, b) for a in range(1, 10) for b in range(1, 10) if ok(a, b)]
    rng.shuffle(out)
    return out


def main(root: Path | None = None) -> dict[str, int]:
    root = root or Path(__file__).parent / "data"
    rng = random.Random(0)
    capitals, opposites, topics = CAPITALS[:], OPPOSITES[:], TOPICS[:]
    for pool in (capitals, opposites, topics):
        rng.shuffle(pool)
    sums, times = pairs(rng, lambda a, b: True), pairs(rng, lambda a, b: True)  # 81 each, split without overlap
    held = {"facts": capitals[:8], "opposites": opposites[:8], "topics": topics[:6], "colors": COLORS[:],
            "sums": sums[:45], "times": times[:45], "subtraction": pairs(rng, lambda a, b: a > b)}  # fmt: skip
    train = {"facts": capitals[8:] * 2, "opposites": opposites[8:] * 2, "topics": topics[6:] * 3,
             "sums": sums[45:], "times": times[45:]}  # fmt: skip
    splits = {
        "train": make_split(
            {"sums": 36, "times": 36, "facts": 56, "opposites": 40, "open": 24}, train, seed=1
        ),
        "heldout": make_split(
            {"sums": 45, "times": 45, "facts": 8, "opposites": 8, "subtraction": 36, "colors": 8, "open": 6},
            held, seed=2,
        ),
    }  # fmt: skip
    for name, rows in splits.items():
        path = root / name / "prompts.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {name: len(rows) for name, rows in splits.items()}


if __name__ == "__main__":
    print(main())
