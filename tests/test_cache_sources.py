"""Who wrote a cache's tokens decides its loss: CE only on the teacher's (or a dataset's), none on the student's own
rollouts; cut rollouts are kept, dropped or masked; caches of two teachers are refused; the drift from the sampling
policy is measured. A real chain on tiny models: student rollouts and teacher answers -> caches -> KD."""

import json

import numpy as np
import pytest
import torch
from conftest import make_dataset, training_args
from datasets import Dataset
from pytest import approx

from trl_edge.cache.format import CacheError
from trl_edge.cache.writer import cache_teacher_logits
from trl_edge.model_identity import ModelIdentity, files_hash, weights_hash
from trl_edge.rollout import generate_rollouts
from trl_edge.testing import arithmetic_examples, build_tiny_model
from trl_edge.trainer.offline_kd_config import OfflineOnPolicyKDConfig
from trl_edge.trainer.offline_kd_trainer import SOURCES_FILE, OfflineOnPolicyKDTrainer


def prompts(n=12):
    return Dataset.from_list([{"prompt": r["prompt"]} for r in arithmetic_examples(n, 0)])


def with_likely_end(model, tokenizer, boost):
    """Make the end-of-turn token likely enough that some samples end and others are cut."""
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] += boost * model.model.norm.weight.sign()
    return model


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("chain")
    student = with_likely_end(build_tiny_model(tokenizer, seed=2), tokenizer, 0.5)
    teacher = with_likely_end(build_tiny_model(tokenizer, arch="qwen2", seed=7), tokenizer, 0.5)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(4.0)
    student_rollouts = generate_rollouts(student, tokenizer, prompts(), root / "student-rollouts", max_new_tokens=12,
                                         num_samples=2, temperature=1.0, seed=1)  # fmt: skip
    teacher_rollouts = generate_rollouts(teacher, tokenizer, prompts(), root / "teacher-rollouts", max_new_tokens=12,
                                         temperature=1.0, seed=2)  # fmt: skip
    caches = {
        "student": cache_teacher_logits(teacher, tokenizer, student_rollouts, root / "c-student", top_k=16),
        "teacher": cache_teacher_logits(teacher, tokenizer, teacher_rollouts, root / "c-teacher", top_k=16),
        "dataset": cache_teacher_logits(teacher, tokenizer, make_dataset(8), root / "c-dataset", top_k=16),
    }
    other = build_tiny_model(tokenizer, arch="qwen2", seed=8)
    caches["other_teacher"] = cache_teacher_logits(other, tokenizer, make_dataset(8), root / "c-other", top_k=16)
    return dict(student=student, teacher=teacher, rollouts=student_rollouts, caches=caches)


def kd_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "kd"), max_steps=3, learning_rate=3e-3, activation_checkpointing=False)
    return training_args(tmp_path, OfflineOnPolicyKDConfig, **{**defaults, **overrides})


def trained(tmp_path, tokenizer, caches, seed_model=2, **overrides):
    student = build_tiny_model(tokenizer, seed=seed_model)
    trainer = OfflineOnPolicyKDTrainer(student, kd_args(tmp_path, **overrides), train_dataset=caches,
                                       processing_class=tokenizer)  # fmt: skip
    trainer.train()
    return trainer, {k: v.detach().clone() for k, v in student.named_parameters()}


def test_every_cache_and_rollout_set_records_who_wrote_and_scored_it(chain):
    caches, teacher = chain["caches"], chain["teacher"]
    assert chain["rollouts"].metadata.policy_identity["weights"] == f"weights:{weights_hash(chain['student'])}"
    for cache in caches.values():
        assert cache.metadata.teacher_identity["weights"].startswith("weights:")
    assert caches["student"].metadata.teacher_identity["weights"] == f"weights:{weights_hash(teacher)}"
    assert caches["student"].metadata.source_path == str(chain["rollouts"].path.resolve())
    assert {k: c.metadata.written_by() for k, c in caches.items()} == {
        "student": "student", "teacher": "teacher", "dataset": "dataset", "other_teacher": "dataset"}  # fmt: skip


def test_identities_compare_hashes_of_one_kind_and_names_otherwise(tmp_path):
    a, b = ModelIdentity("m", None, "weights:1"), ModelIdentity("m", None, "weights:2")
    assert not a.same_as(b) and a.same_as(ModelIdentity("other-name", None, "weights:1"))
    assert a.same_as(ModelIdentity("m", None, "files:9")) and not a.same_as(ModelIdentity("m", "v2", "files:9"))
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = files_hash(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert first and files_hash(tmp_path) != first and files_hash(tmp_path / "nothing") is None


def test_no_cross_entropy_on_the_students_own_rollouts_by_default(tmp_path, tokenizer, chain):
    cache = chain["caches"]["student"]
    common = dict(max_steps=2, optim="sgd", learning_rate=0.5, max_grad_norm=0.0)
    default, w_default = trained(tmp_path / "a", tokenizer, [cache], **common)
    _, w_zero = trained(tmp_path / "b", tokenizer, [cache], teacher_cache_ce_weights=[0.0], **common)
    _, w_ce = trained(tmp_path / "c", tokenizer, [cache], teacher_cache_ce_weights=[0.1], **common)
    assert default.cache_sources[0].written_by == "student" and default.cache_sources[0].ce_weight == 0.0
    for name, value in w_default.items():
        torch.testing.assert_close(value, w_zero[name], rtol=0, atol=0)
    assert any(not torch.equal(value, w_ce[name]) for name, value in w_default.items())


def test_teacher_written_tokens_keep_their_cross_entropy(tmp_path, tokenizer, chain):
    caches = chain["caches"]
    trainer, w_mixed = trained(tmp_path / "a", tokenizer, [caches["student"], caches["teacher"]], max_steps=2,
                               optim="sgd", learning_rate=0.5, max_grad_norm=0.0)  # fmt: skip
    assert [(s.written_by, s.ce_weight) for s in trainer.cache_sources] == [("student", 0.0), ("teacher", approx(0.1))]
    _, w_explicit = trained(tmp_path / "b", tokenizer, [caches["student"], caches["teacher"]], max_steps=2,
                            optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
                            teacher_cache_ce_weights=[0.0, 0.1 + 1e-7])  # fmt: skip
    for name, value in w_mixed.items():
        torch.testing.assert_close(value, w_explicit[name], rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "a" / "kd" / SOURCES_FILE).read_text())
    assert [s["ce_weight"] for s in record["sources"]] == [0.0, approx(0.1)]


def test_a_loss_that_cannot_change_the_student_is_refused(tmp_path, tokenizer, chain):
    with pytest.raises(ValueError, match="would not change"):
        OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path, kd_weight=0.0),
                                 train_dataset=chain["caches"]["student"], processing_class=tokenizer)  # fmt: skip


def test_caches_of_two_teachers_are_refused_unless_allowed(tmp_path, tokenizer, chain):
    caches = [chain["caches"]["dataset"], chain["caches"]["other_teacher"]]
    with pytest.raises(CacheError, match="different teachers"):
        OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path), train_dataset=caches,
                                 processing_class=tokenizer)  # fmt: skip
    trainer = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path, allow_mixed_teachers=True),
                                       train_dataset=caches, processing_class=tokenizer)  # fmt: skip
    assert len(trainer.train_dataset) == 16


def test_truncated_rollouts_are_kept_dropped_or_masked(tmp_path, tokenizer, chain):
    cache = chain["caches"]["student"]
    cut = np.asarray([r == "length" for r in cache.to_dataset()["finish_reason"]])
    assert 0 < cut.sum() < len(cut)  # the chain has both
    keep = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path / "k"), train_dataset=cache,
                                    processing_class=tokenizer)  # fmt: skip
    drop = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path / "d", truncated_samples="drop"),
                                    train_dataset=cache, processing_class=tokenizer)  # fmt: skip
    assert len(keep.train_dataset) == len(cut) and len(drop.train_dataset) == (~cut).sum()
    assert not any(drop.train_dataset["truncated"]) and sorted(drop.train_dataset["cache_index"]) == list(
        np.flatnonzero(~cut))
    mask_args = kd_args(tmp_path / "m", truncated_samples="mask", truncated_mask_positions=3)
    mask = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), mask_args, train_dataset=cache,
                                    processing_class=tokenizer)  # fmt: skip
    rows = [keep.train_dataset[int(i)] for i in range(len(cut))]
    kept, masked = keep.data_collator(rows), mask.data_collator(rows)
    for row, is_cut in enumerate(cut):
        n_keep, n_mask = int(kept["teacher_mask"][row].sum()), int(masked["teacher_mask"][row].sum())
        assert n_mask == (max(n_keep - 3, 0) if is_cut else n_keep)
        assert int((masked["labels"][row] != -100).sum()) == n_mask  # the normalizer counts what carries loss
    trained(tmp_path / "train", tokenizer, [cache], truncated_samples="mask", truncated_mask_positions=3)


def test_the_drift_from_the_sampling_policy_is_zero_at_the_start_and_grows(tmp_path, tokenizer, chain):
    student = chain["student"]
    start = {k: v.clone() for k, v in student.state_dict().items()}
    try:
        args = kd_args(tmp_path, max_steps=6, learning_rate=1e-2, onpolicy_drift_samples=8)
        trainer = OfflineOnPolicyKDTrainer(student, args, train_dataset=chain["caches"]["student"],
                                           processing_class=tokenizer)  # fmt: skip
        trainer.train()
    finally:
        student.load_state_dict(start)
    (result,) = trainer.drift_callback.results.values()
    assert abs(result["drift_start"]) < 1e-4 and result["outside_support_start"] == 0.0
    assert result["drift_end"] > 10 * max(abs(result["drift_start"]), 1e-6)
    logged = {k: v for entry in trainer.state.log_history for k, v in entry.items() if k.startswith("onpolicy")}
    assert logged["onpolicy_drift_start"] == result["drift_start"] and "onpolicy_drift_end" in logged
    record = json.loads((tmp_path / "kd" / SOURCES_FILE).read_text())
    assert record["onpolicy_drift"][str(chain["caches"]["student"].path)]["drift_end"] == result["drift_end"]
