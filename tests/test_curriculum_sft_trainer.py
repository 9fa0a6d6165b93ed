import numpy as np
import pytest
import torch
from conftest import make_dataset, training_args
from datasets import Dataset, IterableDataset
from safetensors.torch import load_file

from trl_edge import CurriculumSFTConfig, CurriculumSFTTrainer
from trl_edge.testing import build_tiny_model

STAGES = dict(curriculum_stage_column="stage", curriculum_stages=["reasoning", "direct"])


class RecordingCollator:
    """Wraps the trainer's collator and keeps the input_ids of every example it is handed, batch by batch."""

    def __init__(self, collator):
        self.collator, self.batches = collator, []

    def __call__(self, examples):
        self.batches.append([tuple(e["input_ids"]) for e in examples])
        return self.collator(examples)


def make_trainer(tmp_path, tokenizer, dataset=None, model=None, **overrides):
    args = training_args(tmp_path, **overrides)
    trainer = CurriculumSFTTrainer(
        model if model is not None else build_tiny_model(tokenizer),
        args,
        train_dataset=dataset if dataset is not None else make_dataset(32),
        processing_class=tokenizer,
    )
    trainer.data_collator = RecordingCollator(trainer.data_collator)
    return trainer


def expected_batches(trainer, batch_size, num_batches):
    sampler, ds = trainer.curriculum_sampler, trainer.train_dataset
    n = sampler.num_samples
    order = [i for e in range(num_batches * batch_size // n + 1) for i in sampler.schedule(e).indices.tolist()]
    seqs = [tuple(ds[i]["input_ids"]) for i in order[: num_batches * batch_size]]
    return [seqs[b * batch_size : (b + 1) * batch_size] for b in range(num_batches)]


@pytest.mark.parametrize("fmt", ["conversational", "prompt_completion", "language_modeling"])
def test_the_model_sees_the_schedule_in_order(tmp_path, tokenizer, fmt):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        dataset=make_dataset(24, fmt=fmt),
        max_steps=8,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=2,
        curriculum_difficulty="column",
        **STAGES,
    )
    trainer.train()
    seen = trainer.data_collator.batches
    assert len(seen) in (16, 17)  # accelerate's dataloader may fetch one batch ahead
    assert seen[:16] == expected_batches(trainer, 2, 16)  # 32 samples: crosses into the second epoch
    order = trainer.curriculum_sampler.schedule(0).indices
    difficulty = np.array(trainer.train_dataset["difficulty"])[order]
    stage = np.array(trainer.train_dataset["stage"])[order]
    assert (stage[:18] == "reasoning").all()  # the first stage takes 3/4 of the 32 samples trained on
    assert difficulty[:6].mean() < difficulty[12:18].mean()  # easy to hard inside it


def test_training_lowers_held_out_loss_and_changes_every_parameter(tmp_path, tokenizer, tiny_model):
    trainer = CurriculumSFTTrainer(
        tiny_model,
        training_args(tmp_path, max_steps=30, learning_rate=3e-3, curriculum_pacing="root"),
        train_dataset=make_dataset(64),
        eval_dataset=make_dataset(16, seed=1),
        processing_class=tokenizer,
    )
    before_params = {k: v.clone() for k, v in tiny_model.named_parameters()}
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < before - 0.5
    unchanged = [k for k, v in tiny_model.named_parameters() if torch.equal(v, before_params[k])]
    assert not unchanged


def test_logs_competence_stage_and_difficulty(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, max_steps=8, curriculum_difficulty="column", **STAGES)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    competence = [entry["curriculum/competence"] for entry in logs]
    stages = [entry["curriculum/stage"] for entry in logs]
    assert stages == sorted(stages) and stages[0] == 0 and stages[-1] == 1
    first_stage = [c for c, s in zip(competence, stages) if s == 0]
    assert first_stage == sorted(first_stage) and first_stage[0] < first_stage[-1]
    assert all(1 <= entry["curriculum/difficulty"] <= 4 for entry in logs)
    assert all(0 < entry["curriculum/difficulty_rank"] <= 1 for entry in logs)


@pytest.mark.parametrize("resume_step", [3, 5])  # inside the first epoch, and inside the second
def test_resume_sees_the_same_remaining_order_and_ends_identical(tmp_path, tokenizer, resume_step):
    common = dict(max_steps=8, save_strategy="steps", save_steps=1, curriculum_pacing="root", **STAGES)
    full = make_trainer(tmp_path / "full", tokenizer, dataset=make_dataset(16), **common)
    full.train()
    checkpoint = tmp_path / "full" / "out" / f"checkpoint-{resume_step}"
    assert checkpoint.is_dir()

    resumed = make_trainer(tmp_path / "resumed", tokenizer, dataset=make_dataset(16), **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.data_collator.batches == full.data_collator.batches[resume_step:]
    final_full = load_file(tmp_path / "full" / "out" / "checkpoint-8" / "model.safetensors")
    final_resumed = load_file(tmp_path / "resumed" / "out" / "checkpoint-8" / "model.safetensors")
    for name, tensor in final_full.items():
        torch.testing.assert_close(final_resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_difficulty_from_a_reference_model(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, curriculum_difficulty="reference", curriculum_reference_batch_size=5)
    scores = trainer.curriculum_difficulty
    assert scores.shape == (32,) and np.isfinite(scores).all() and np.ptp(scores) > 0


def test_custom_difficulty_scorer(tmp_path, tokenizer):
    trainer = make_trainer(tmp_path, tokenizer, max_steps=2)
    custom = CurriculumSFTTrainer(
        build_tiny_model(tokenizer),
        training_args(tmp_path, max_steps=2),
        train_dataset=make_dataset(32),
        processing_class=tokenizer,
        difficulty_scorer=lambda ds: -np.array([len(x) for x in ds["input_ids"]], dtype=float),
    )
    np.testing.assert_array_equal(custom.curriculum_difficulty, -trainer.curriculum_difficulty)


# ---------------------------------------------------------------- bad input


def test_packing_is_refused_because_it_would_shuffle_the_curriculum(tmp_path):
    with pytest.raises(ValueError, match="Packing merges examples.*padding_free=True"):
        training_args(tmp_path, packing=True)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(curriculum_pacing="cosine"), "Unknown pacing 'cosine'"),
        (dict(curriculum_difficulty="entropy"), "Unknown `curriculum_difficulty` 'entropy'"),
        (dict(curriculum_stages=["a"]), "name the stage column"),
        (dict(curriculum_stage_column="stage", curriculum_stage_shares=[1.0]), "needs `curriculum_stages`"),
        (dict(**STAGES, curriculum_stage_shares=[1.0]), "1 stage shares for 2 stages"),
        (dict(curriculum_replay_ratio=1.0), "curriculum_replay_ratio"),
        (dict(curriculum_pacing="step"), "at least one boundary"),
    ],
)
def test_bad_config_fails_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        training_args(tmp_path, **overrides)


def test_missing_difficulty_column(tmp_path, tokenizer):
    ds = make_dataset(8).remove_columns("difficulty")
    with pytest.raises(ValueError, match=r"needs the column\(s\) \['difficulty'\].*curriculum_difficulty='length'"):
        make_trainer(tmp_path, tokenizer, dataset=ds, curriculum_difficulty="column")


def test_missing_stage_column(tmp_path, tokenizer):
    ds = make_dataset(8).remove_columns("stage")
    with pytest.raises(ValueError, match="curriculum_stage_column='stage'.* is not a column"):
        make_trainer(tmp_path, tokenizer, dataset=ds, **STAGES)


def test_empty_stage(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"stage\(s\) \['review'\] have no examples"):
        make_trainer(
            tmp_path,
            tokenizer,
            curriculum_stage_column="stage",
            curriculum_stages=["reasoning", "direct", "review"],
        )


def test_empty_and_streaming_datasets(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="train dataset is empty"):
        make_trainer(tmp_path, tokenizer, dataset=Dataset.from_list([]))
    stream = IterableDataset.from_generator(lambda: iter([{"text": "a"}]))
    with pytest.raises(TypeError, match="random access"):
        make_trainer(tmp_path, tokenizer, dataset=stream)


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential"])
def test_a_competing_sampling_strategy_is_refused(tmp_path, tokenizer, strategy):
    with pytest.raises(ValueError, match="would replace the curriculum order"):
        make_trainer(tmp_path, tokenizer, train_sampling_strategy=strategy)


def test_a_plain_sft_config_is_refused(tmp_path, tokenizer):
    from trl import SFTConfig

    with pytest.raises(TypeError, match="needs a CurriculumSFTConfig"):
        CurriculumSFTTrainer(
            build_tiny_model(tokenizer),
            SFTConfig(str(tmp_path), bf16=False, use_cpu=True),
            train_dataset=make_dataset(4),
        )


def test_config_is_an_sft_config():
    from trl import SFTConfig

    assert issubclass(CurriculumSFTConfig, SFTConfig)


def test_logged_difficulty_is_that_of_the_batches_trained_on(tmp_path, tokenizer):
    """10 examples, batch 4: each epoch ends on a short batch; the logs must follow what the collator received."""
    trainer = make_trainer(
        tmp_path, tokenizer, dataset=make_dataset(10), max_steps=7, curriculum_difficulty="column", logging_steps=1
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    by_sequence = {tuple(row["input_ids"]): row["difficulty"] for row in trainer.train_dataset}
    seen = trainer.data_collator.batches[:7]
    assert [len(b) for b in seen] == [4, 4, 2, 4, 4, 2, 4]
    for entry, batch in zip(logs, seen):
        assert entry["curriculum/difficulty"] == pytest.approx(np.mean([by_sequence[x] for x in batch]))


def test_a_fractional_logging_steps_logs_the_right_windows(tmp_path, tokenizer):
    """logging_steps=0.5 is half the run (TrainingArguments allows fractions); the Trainer resolves it to 3 here."""
    trainer = make_trainer(
        tmp_path, tokenizer, dataset=make_dataset(12), max_steps=6, logging_steps=0.5, curriculum_difficulty="column"
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in logs] == [3, 6]
    by_sequence = {tuple(row["input_ids"]): row["difficulty"] for row in trainer.train_dataset}
    seen = trainer.data_collator.batches
    for entry, window in zip(logs, (seen[:3], seen[3:6])):
        expected = np.mean([by_sequence[x] for batch in window for x in batch])
        assert entry["curriculum/difficulty"] == pytest.approx(expected)


def test_the_reference_scorer_never_builds_full_logits(tmp_path, tokenizer):
    from trl_edge.curriculum import sequence_nll

    model = build_tiny_model(tokenizer)
    data = make_dataset(6)
    trainer = make_trainer(tmp_path, tokenizer, dataset=data, model=model)
    rows = trainer.train_dataset
    with torch.no_grad():  # the dense reference: full logits, cross-entropy on the loss tokens
        dense = []
        for row in rows:
            ids, labels = torch.tensor([row["input_ids"]]), torch.tensor(row["labels"])
            logits = model(input_ids=ids).logits[0, :-1].float()
            dense.append(torch.nn.functional.cross_entropy(logits, labels[1:], ignore_index=-100).item())

    def refuse(*args, **kwargs):
        raise AssertionError("the LM head's forward ran: [batch, seq, vocab] logits were built")

    model.lm_head.forward = refuse
    nll, count = sequence_nll(model, rows["input_ids"], rows["labels"], batch_size=4)
    np.testing.assert_allclose(nll / count, dense, rtol=1e-5)
    scored = make_trainer(tmp_path, tokenizer, dataset=data, model=model, curriculum_difficulty="reference")
    np.testing.assert_allclose(scored.curriculum_difficulty, dense, rtol=1e-5)


def test_every_difficulty_a_config_accepts_has_a_source_in_its_trainer():
    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer

    assert set(CurriculumSFTConfig.difficulty_sources) == set(CurriculumSFTTrainer.difficulty_sources)
    assert set(OfflineOnPolicyKDConfig.difficulty_sources) == set(OfflineOnPolicyKDTrainer.difficulty_sources)
    assert {"teacher_nll", "teacher_entropy"} <= set(OfflineOnPolicyKDConfig.difficulty_sources)
    with pytest.raises(ValueError, match="Unknown `curriculum_difficulty` 'teacher_nll'"):
        CurriculumSFTConfig("out", curriculum_difficulty="teacher_nll", use_cpu=True, bf16=False)


def test_a_positional_train_dataset_gets_its_curriculum(tmp_path, tokenizer):
    """``CurriculumSFTTrainer(model, args, data_collator, train_dataset, ...)``, as SFTTrainer's signature allows:
    the curriculum finds the train dataset by name, checks it and orders it."""
    args = training_args(tmp_path, max_steps=2, curriculum_difficulty="column", **STAGES)
    dataset = make_dataset(12)
    trainer = CurriculumSFTTrainer(build_tiny_model(tokenizer), args, None, dataset, None, tokenizer)
    assert len(trainer.curriculum_difficulty) == 12
    np.testing.assert_array_equal(trainer.curriculum_difficulty, np.asarray(dataset["difficulty"], dtype=np.float64))
    stage_of = dict(zip(range(12), dataset["stage"]))
    first = [stage_of[i] for i in trainer.curriculum_sampler.schedule(0).indices[:4]]
    assert first == ["reasoning"] * 4  # the stage order holds from the first samples on
    streamed = dataset.to_iterable_dataset()
    with pytest.raises(TypeError, match="random access"):
        CurriculumSFTTrainer(build_tiny_model(tokenizer), args, None, streamed, None, tokenizer)
    with pytest.raises(TypeError):  # one argument both ways: SFTTrainer's own signature says no
        CurriculumSFTTrainer(build_tiny_model(tokenizer), args, None, dataset, train_dataset=dataset)


def test_the_difficulty_choices_come_from_the_trainers_registries():
    from trl import TrlParser

    from trl_edge import OfflineOnPolicyKDConfig, OfflineOnPolicyKDTrainer

    def choices(config_class):
        parser = TrlParser([config_class])
        return next(a.choices for a in parser._actions if a.dest == "curriculum_difficulty")

    assert choices(CurriculumSFTConfig) == list(CurriculumSFTTrainer.difficulty_sources)
    assert choices(OfflineOnPolicyKDConfig) == list(OfflineOnPolicyKDTrainer.difficulty_sources)
    assert "teacher_nll" not in choices(CurriculumSFTConfig)  # an SFT run has no teacher cache to read it from
