import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_edge import (
    CallableScorer,
    ColumnScorer,
    LengthScorer,
    ReferenceModelScorer,
    add_difficulty_column,
    difficulty_ranks,
)


def test_ranks_are_cdf_values_with_shared_ties():
    ranks = difficulty_ranks([3.0, 1.0, 2.0, 2.0])
    assert ranks.tolist() == [1.0, 0.25, 0.75, 0.75]
    big = difficulty_ranks(np.random.default_rng(0).random(100))
    assert big.min() > 0 and big.max() == 1.0 and len(set(big)) == 100
    with pytest.raises(ValueError, match="non-finite score"):
        difficulty_ranks([1.0, np.inf])
    with pytest.raises(ValueError, match="empty dataset"):
        difficulty_ranks([])


def test_length_column_and_callable_scorers():
    ds = Dataset.from_list([{"input_ids": [1, 2, 3], "level": 2.0}, {"input_ids": [1], "level": 0.5}])
    assert LengthScorer()(ds).tolist() == [3.0, 1.0]
    assert ColumnScorer("level")(ds).tolist() == [2.0, 0.5]
    assert CallableScorer(lambda row: -len(row["input_ids"]))(ds).tolist() == [-3.0, -1.0]


def test_missing_or_bad_columns_name_what_is_there():
    ds = Dataset.from_list([{"text": "a", "level": "hard"}])
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['difficulty'\].*\['text', 'level'\]"):
        ColumnScorer()(ds)
    with pytest.raises(ValueError, match="Tokenize the dataset first"):
        LengthScorer()(ds)
    with pytest.raises(ValueError, match="must hold one number per example"):
        ColumnScorer("level")(ds)
    with pytest.raises(ValueError, match="non-finite score"):
        CallableScorer(lambda row: float("nan"))(ds)


def test_reference_model_scorer_matches_one_example_at_a_time(llama_model, tokenizer):
    rows = [
        {"input_ids": tokenizer("What is 1 + 2? Answer: 3.")["input_ids"]},
        {"input_ids": tokenizer("Knowledge distillation trains a student on a teacher.")["input_ids"]},
        {"input_ids": tokenizer("The quick brown fox")["input_ids"]},
    ]
    rows[0]["labels"] = [-100] * 5 + rows[0]["input_ids"][5:]
    for row in rows[1:]:
        row["labels"] = list(row["input_ids"])
    ds = Dataset.from_list(rows)
    scores = ReferenceModelScorer(llama_model, batch_size=2, pad_token_id=tokenizer.pad_token_id)(ds)
    expected = []
    with torch.no_grad():
        for row in rows:
            out = llama_model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
            expected.append(out.loss.item())
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    ppl = ReferenceModelScorer(llama_model, batch_size=3, metric="perplexity")(ds)
    np.testing.assert_allclose(ppl, np.exp(expected), rtol=1e-5)
    with pytest.raises(ValueError, match="'loss' or 'perplexity'"):
        ReferenceModelScorer(llama_model, metric="accuracy")


def test_add_difficulty_column_computes_once():
    ds = Dataset.from_list([{"input_ids": [1, 2]}, {"input_ids": [3]}])
    scored = add_difficulty_column(ds, LengthScorer())
    assert scored["difficulty"] == [2.0, 1.0]

    def must_not_run(_):
        raise AssertionError("the column is already there")

    assert add_difficulty_column(scored, must_not_run)["difficulty"] == [2.0, 1.0]
    with pytest.raises(ValueError, match="returned 1 scores for 2 examples"):
        add_difficulty_column(ds, lambda d: np.zeros(1))
