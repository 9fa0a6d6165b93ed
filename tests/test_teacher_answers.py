"""Teacher answers: token-exact SFT rows, cut answers dropped or kept without an end-of-turn, lengths and the
teacher's identity recorded; SFT trains on exactly the tokens the teacher wrote."""

import json

import pytest
import torch
from conftest import training_args
from datasets import Dataset, load_from_disk

from trl_edge.model_identity import weights_hash
from trl_edge.model_loading import load_causal_lm
from trl_edge.scripts.teacher_answers import RECORD_FILE, TeacherAnswersArguments, main
from trl_edge.testing import arithmetic_examples, build_tokenizer, save_tiny_checkpoint


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "model"
    save_tiny_checkpoint(str(path))
    model = load_causal_lm(str(path), dtype=torch.float32)
    with torch.no_grad():  # an end-of-turn likely enough that some answers end and others are cut
        model.lm_head.weight[build_tokenizer().eos_token_id] += 0.6 * model.model.norm.weight.sign()
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": r["prompt"], "stage": r["stage"]} for r in arithmetic_examples(16, seed=3)]
    Dataset.from_list(rows).save_to_disk(str(path / "data"))
    return str(path / "data")


def answers(tmp_path, teacher_dir, prompts, mode):
    out = tmp_path / mode
    main(TeacherAnswersArguments(model_name_or_path=teacher_dir, dataset=prompts, output_dir=str(out), seed=1,
                                 max_new_tokens=10, truncated_answers=mode, temperature=1.0, use_cpu=True))
    return load_from_disk(str(out)), json.loads((out / RECORD_FILE).read_text())


def test_answers_are_token_exact_and_a_cut_one_gets_no_end_of_turn(tmp_path, teacher_dir, prompts):
    kept, record = answers(tmp_path, teacher_dir, prompts, "keep")
    dropped, _ = answers(tmp_path, teacher_dir, prompts, "drop")
    eos = build_tokenizer().eos_token_id
    reasons = kept["finish_reason"]
    assert 0 < reasons.count("length") < len(reasons)
    assert set(dropped["finish_reason"]) == {"eos"} and len(dropped) == reasons.count("eos")
    for row in kept:
        completion = [t for t, m in zip(row["input_ids"], row["completion_mask"]) if m]
        assert (completion[-1] == eos) == (row["finish_reason"] == "eos")  # nothing appended to a cut answer
        assert len(completion) <= 10
    lengths = record["lengths"]
    assert lengths["answers"] == len(kept) and lengths["cut"] == reasons.count("length") and lengths["max"] <= 10
    model = load_causal_lm(teacher_dir, dtype=torch.float32)
    assert record["teacher"]["weights"] == f"weights:{weights_hash(model)}"


def test_sft_trains_on_the_teachers_exact_tokens(tmp_path, teacher_dir, prompts):
    from trl_edge import CurriculumSFTTrainer

    kept, _ = answers(tmp_path, teacher_dir, prompts, "keep")
    trainer = CurriculumSFTTrainer(load_causal_lm(teacher_dir, dtype=torch.float32),
                                   training_args(tmp_path, max_steps=2), train_dataset=kept,
                                   processing_class=build_tokenizer())  # fmt: skip
    prepared = trainer.train_dataset
    for i, row in enumerate(kept):
        assert prepared[i]["input_ids"] == row["input_ids"]  # no chat-template end-of-turn after a cut answer
    trainer.train()
