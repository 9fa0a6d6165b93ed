"""Student rollouts: token-exact samples, resumable and rank-split, scored token for token by the teacher cache."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset, training_args
from datasets import Dataset

from trl_edge import (
    OfflineOnPolicyKDConfig,
    OfflineOnPolicyKDTrainer,
    RolloutError,
    RolloutSet,
    cache_teacher_logits,
    generate_rollouts,
)
from trl_edge.backends.transformers_backend import _SamplingDistribution
from trl_edge.cache.format import file_sha256
from trl_edge.rollout import shard_file, weights_hash
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def prompts(n=6, seed=0, fmt="conversational"):
    return Dataset.from_list(
        [
            {"prompt": r["prompt"], "stage": r["stage"], "id": i}
            for i, r in enumerate(arithmetic_examples(n, seed, fmt=fmt))
        ]
    )


@pytest.fixture(scope="module")
def student(tokenizer):
    return build_tiny_model(tokenizer, seed=2)


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_tiny_model(tokenizer, arch="qwen2", seed=1)


def rollout_hashes(path):
    return {p.name: file_sha256(p) for p in sorted(Path(path).glob("rollouts-*.arrow"))}


def test_the_cache_holds_exactly_the_ids_the_student_sampled(tmp_path, tokenizer, student, teacher):
    rollouts = generate_rollouts(student, tokenizer, prompts(5), tmp_path / "r", num_samples=2, max_new_tokens=10,
                                 shard_size=2, batch_size=2)  # fmt: skip
    rows = rollouts.to_dataset()
    assert len(rows) == 10 and rows["prompt_index"] == [i // 2 for i in range(10)]
    assert rows["sample_index"] == [0, 1] * 5 and rows["id"] == [i // 2 for i in range(10)]
    chat = [tokenizer.apply_chat_template(p, add_generation_prompt=True)["input_ids"] for p in prompts(5)["prompt"]]
    assert [chat[i // 2] for i in range(10)] == rows["prompt_ids"]  # the prompt as SFT's chat template renders it
    cache = cache_teacher_logits(teacher, tokenizer, rollouts, tmp_path / "c", top_k=8, encoding="lossless")
    for i, row in enumerate(rows):
        sample = cache[i]
        assert sample["input_ids"].tolist() == row["prompt_ids"] + row["completion_ids"]  # bit for bit
        assert sample["labels"].tolist() == [-100] * len(row["prompt_ids"]) + row["completion_ids"]
        assert len(sample["positions"]) == len(row["completion_ids"])
    index = cache.to_dataset()
    assert index["stage"] == rows["stage"] and index["finish_reason"] == rows["finish_reason"]


def test_a_truncated_sample_has_no_end_token_and_no_loss_past_its_last_token(tmp_path, tokenizer, teacher):
    policy, eos = build_tiny_model(tokenizer, seed=2), tokenizer.eos_token_id
    policy.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([eos]), -1e4))
    rollouts = generate_rollouts(policy, tokenizer, prompts(3), tmp_path / "r", max_new_tokens=6, seed=1)
    rows = rollouts.to_dataset()
    assert set(rows["finish_reason"]) == {"length"}
    assert all(len(ids) == 6 and eos not in ids for ids in rows["completion_ids"])
    cache = cache_teacher_logits(teacher, tokenizer, rollouts, tmp_path / "c", top_k=4)
    batch = cache.collate(range(len(cache)))
    for row, sample in enumerate(rows):
        n = len(sample["prompt_ids"]) + len(sample["completion_ids"])
        assert batch["attention_mask"][row].sum() == n  # nothing appended after the last sampled token
        scored = torch.nonzero(batch["teacher_mask"][row]).squeeze(-1)
        assert scored.tolist() == list(range(len(sample["prompt_ids"]) - 1, n - 1))  # predicts tokens 1..n-1 only


def test_a_sample_that_ends_keeps_the_end_token_it_sampled(tmp_path, tokenizer):
    policy, eos = build_tiny_model(tokenizer, seed=2), tokenizer.eos_token_id
    policy.lm_head.register_forward_hook(lambda module, args, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    rows = generate_rollouts(policy, tokenizer, prompts(2), tmp_path / "r", max_new_tokens=6).to_dataset()
    assert rows["finish_reason"] == ["eos", "eos"] and rows["completion_ids"] == [[eos], [eos]]


def test_the_same_seed_gives_the_same_rollouts(tmp_path, tokenizer, student):
    kwargs = dict(num_samples=2, max_new_tokens=8, shard_size=3, batch_size=2)
    a = generate_rollouts(student, tokenizer, prompts(6), tmp_path / "a", seed=3, **kwargs)
    b = generate_rollouts(student, tokenizer, prompts(6), tmp_path / "b", seed=3, **kwargs)
    c = generate_rollouts(student, tokenizer, prompts(6), tmp_path / "c", seed=4, **kwargs)
    assert rollout_hashes(a.path) == rollout_hashes(b.path)
    assert a.to_dataset()["completion_ids"] != c.to_dataset()["completion_ids"]


def test_logprobs_are_those_of_the_sampling_distribution(tmp_path, tokenizer, student):
    settings = dict(temperature=0.7, top_k=40, top_p=0.9)
    rows = generate_rollouts(student, tokenizer, prompts(3), tmp_path / "r", num_samples=2, max_new_tokens=8,
                             **settings).to_dataset()  # fmt: skip
    warp = _SamplingDistribution(**settings).warp
    for row in rows:
        ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
        with torch.no_grad():
            logits = student(input_ids=ids).logits[0, len(row["prompt_ids"]) - 1 : -1]
        dense = torch.log_softmax(warp(logits), -1).gather(-1, torch.tensor(row["completion_ids"])[:, None])
        np.testing.assert_allclose(row["logprobs"], dense.squeeze(-1).numpy(), atol=1e-4)
        assert np.isfinite(row["logprobs"]).all() and max(row["logprobs"]) <= 0


def test_top_p_and_top_k_keep_what_they_should():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_SamplingDistribution(1.0, None, 0.8).warp(scores))
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(_SamplingDistribution(1.0, 3, 1.0).warp(scores))
    assert kept.tolist() == [[True, True, True, False]]


def test_greedy_and_sampled_generation_log_no_warning(tokenizer, student):
    """Teacher answers are greedy: transformers used to warn about the sampling flags it would ignore."""
    import io
    import logging

    from transformers.utils import logging as hf_logging

    from trl_edge.backends.transformers_backend import sample_completions

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    hf_logging.get_logger().addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for temperature in (0.0, 0.7):
                sample_completions(student, [[5, 6, 7], [8, 9]], num_samples=2, temperature=temperature, top_p=0.9,
                                   top_k=5, max_new_tokens=3, stop_token_ids=[tokenizer.eos_token_id],
                                   pad_token_id=tokenizer.pad_token_id, seed=0)  # fmt: skip
    finally:
        hf_logging.get_logger().removeHandler(handler)
    assert stream.getvalue() == ""


def test_a_killed_rollout_job_resumes_to_the_uninterrupted_set(tmp_path):
    script = str(ROOT / "tests/scripts/write_rollouts.py")
    full = subprocess.run([sys.executable, script, str(tmp_path / "full")], env=ENV, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]
    killed = subprocess.run([sys.executable, script, str(tmp_path / "part"), "--kill-after", "2"], env=ENV,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == 17
    with pytest.raises(RolloutError, match="incomplete or corrupted.*Rerun"):
        RolloutSet(tmp_path / "part")
    done = rollout_hashes(tmp_path / "part")
    again = subprocess.run([sys.executable, script, str(tmp_path / "part")], env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert rollout_hashes(tmp_path / "part") == rollout_hashes(tmp_path / "full")
    assert all(rollout_hashes(tmp_path / "part")[name] == h for name, h in done.items())  # finished shards kept


@pytest.mark.slow
def test_two_ranks_sample_disjoint_shards_that_cover_every_prompt_once(tmp_path):
    script = str(ROOT / "tests/scripts/write_rollouts.py")
    one = subprocess.run([sys.executable, script, str(tmp_path / "one")], env=ENV, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", "29541", script, str(tmp_path / "two"),
    ]  # fmt: skip
    two = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    seals = [json.loads(p.read_text()) for p in sorted((tmp_path / "two").glob("rollouts-*.json"))]
    assert [s["written_by"] for s in seals] == [0, 1, 0, 1]  # 10 prompts in shards of 3: rank r takes r, r + 2
    rows = RolloutSet(tmp_path / "two").to_dataset()
    assert sorted(set(rows["prompt_index"])) == list(range(10)) and len(rows) == 20  # each prompt once, 2 samples
    assert rollout_hashes(tmp_path / "two") == rollout_hashes(tmp_path / "one")  # the same set as one process


def test_provenance_is_readable_from_the_cache(tmp_path, tokenizer, student, teacher):
    rollouts = generate_rollouts(student, tokenizer, prompts(2), tmp_path / "r", temperature=0.8, top_p=0.95, seed=9,
                                 round=2, max_new_tokens=5)  # fmt: skip
    source = cache_teacher_logits(teacher, tokenizer, rollouts, tmp_path / "c", top_k=4).metadata.source
    assert source["kind"] == "rollouts" and source["round"] == 2 and source["policy_hash"] == weights_hash(student)
    assert (source["sampling"]["temperature"], source["sampling"]["top_p"], source["sampling"]["seed"]) == (
        0.8,
        0.95,
        9,
    )
    assert source["sampling"]["stop_token_ids"] == [tokenizer.eos_token_id]


def test_sampled_reverse_kl_checks_how_the_cache_was_sampled(tmp_path, tokenizer, student, teacher):
    def trainer_for(temperature, name):
        rollouts = generate_rollouts(student, tokenizer, prompts(4), tmp_path / f"r{name}", temperature=temperature,
                                     max_new_tokens=5)  # fmt: skip
        cache = cache_teacher_logits(teacher, tokenizer, rollouts, tmp_path / f"c{name}", top_k=4)
        args = training_args(tmp_path / name, OfflineOnPolicyKDConfig, max_steps=1, divergence="sampled_reverse_kl")
        return OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), args, train_dataset=cache,
                                        processing_class=tokenizer)  # fmt: skip

    with pytest.raises(ValueError, match="temperature=0.7.*reshaped distribution.*`reverse_kl`"):
        trainer_for(0.7, "cold")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer_for(1.0, "plain")  # the student's own distribution: no warning


def test_kd_mixes_caches_by_weight(tmp_path, tokenizer, teacher):
    big = cache_teacher_logits(teacher, tokenizer, make_dataset(30), tmp_path / "big", top_k=8)
    small = cache_teacher_logits(teacher, tokenizer, make_dataset(10, seed=7), tmp_path / "small", top_k=8)
    args = training_args(tmp_path, OfflineOnPolicyKDConfig, max_steps=10, per_device_train_batch_size=4,
                         teacher_cache_weights=[0.3, 0.7])  # fmt: skip
    trainer = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), args, train_dataset=[big, small],
                                       processing_class=tokenizer)  # fmt: skip
    seen = []
    collate = trainer.data_collator.__call__
    trainer.data_collator = lambda examples: seen.append([int(e["cache_id"]) for e in examples]) or collate(examples)
    trainer.train()
    drawn = np.concatenate(seen)
    assert len(drawn) == 40  # one epoch of the 40-sample mixture: 12 from the big cache, 28 from the small one
    assert abs((drawn == 1).mean() - 0.7) <= 1 / 40  # the weight, within one sample of the epoch
    assert any(len(set(batch)) == 2 for batch in seen)  # batches mix caches
    with pytest.raises(ValueError, match="2 weights for 1 caches"):
        training_args(tmp_path, OfflineOnPolicyKDConfig, teacher_cache=[str(big.path)], teacher_cache_weights=[1, 2])


def test_bad_rollout_input_fails_clearly(tmp_path, tokenizer, student):
    with pytest.raises(ValueError, match="need a `prompt` column"):
        generate_rollouts(student, tokenizer, make_dataset(2, fmt="language_modeling"), tmp_path / "x")
    with pytest.raises(ValueError, match="empty"):
        generate_rollouts(student, tokenizer, Dataset.from_list([]), tmp_path / "x")
    with pytest.raises(ValueError, match="top_p"):
        generate_rollouts(student, tokenizer, prompts(2), tmp_path / "x", top_p=0.0)
    generate_rollouts(student, tokenizer, prompts(2), tmp_path / "r", max_new_tokens=4)
    with pytest.raises(RolloutError, match=r"other settings \(.*max_new_tokens.*overwrite"):
        generate_rollouts(student, tokenizer, prompts(2), tmp_path / "r", max_new_tokens=5)
    shard = tmp_path / "r" / shard_file(0)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(RolloutError, match="rollouts-00000.arrow is missing or fails its seal"):
        RolloutSet(tmp_path / "r")
    generate_rollouts(student, tokenizer, prompts(2), tmp_path / "r", max_new_tokens=4)  # the rerun rewrites it
    assert len(RolloutSet(tmp_path / "r")) == 2
    with pytest.raises(RolloutError, match="not a rollout set"):
        RolloutSet(tmp_path)


def test_a_full_round_lowers_the_kl_to_the_teacher_on_the_students_own_samples(tmp_path):
    """SFT output -> rollouts -> teacher cache -> KD, each step a real artifact on disk read by the next."""
    from trl_edge import CurriculumSFTTrainer, evaluate_fidelity

    tokenizer = build_tokenizer()
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=7)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(25.0)  # a confident teacher
    sft_args = training_args(tmp_path / "sft", max_steps=10, learning_rate=3e-3, activation_checkpointing=False)
    sft = CurriculumSFTTrainer(build_tiny_model(tokenizer, seed=3), sft_args, train_dataset=make_dataset(32),
                               processing_class=tokenizer)  # fmt: skip
    sft.train()
    sft.save_model(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    student_dir = str(tmp_path / "student")
    train = generate_rollouts(
        student_dir, tokenizer, prompts(32), tmp_path / "r-train", num_samples=2, max_new_tokens=12
    )
    held = generate_rollouts(student_dir, tokenizer, prompts(12, seed=9), tmp_path / "r-held", max_new_tokens=12)
    train_cache = cache_teacher_logits(teacher, tokenizer, train, tmp_path / "c-train", top_k=32)
    held_cache = cache_teacher_logits(teacher, tokenizer, held, tmp_path / "c-held", top_k=32)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(student_dir)
    before = evaluate_fidelity(student, held_cache)["fidelity/kl"]
    kd_args = training_args(tmp_path / "kd", OfflineOnPolicyKDConfig, max_steps=40, per_device_train_batch_size=8,
                            learning_rate=1e-2, kd_weight=1.0, activation_checkpointing=False)  # fmt: skip
    OfflineOnPolicyKDTrainer(student, kd_args, train_dataset=train_cache, processing_class=tokenizer).train()
    after = evaluate_fidelity(student, held_cache)["fidelity/kl"]
    assert after < 0.8 * before, (before, after)  # 2.75 -> 1.93 nats here
