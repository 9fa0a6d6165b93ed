"""OfflineOnPolicyKDTrainer: real steps on tiny models from a real teacher cache."""

import warnings

import numpy as np
import pytest
import torch
from conftest import make_dataset, training_args

from trl_edge.cache.format import CacheError
from trl_edge.cache.writer import cache_teacher_logits
from trl_edge.testing import build_tiny_model, build_tokenizer
from trl_edge.trainer.offline_kd_config import OfflineOnPolicyKDConfig
from trl_edge.trainer.offline_kd_trainer import OfflineOnPolicyKDTrainer


def kd_args(tmp_path, **overrides):
    defaults = dict(output_dir=str(tmp_path / "kd"), max_steps=4, learning_rate=3e-3, activation_checkpointing=False)
    return training_args(tmp_path, OfflineOnPolicyKDConfig, **{**defaults, **overrides})


def sharp_teacher(tokenizer):
    """A random teacher with peaked next-token distributions (a random init is nearly uniform)."""
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=7)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(25.0)
    return teacher


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cache") / "teacher"
    return cache_teacher_logits(sharp_teacher(tokenizer), tokenizer, make_dataset(32), path, top_k=32, shard_size=16)


def test_trains_and_logs_the_distillation_metrics(tmp_path, tokenizer, cache):
    student = build_tiny_model(tokenizer)
    before = {k: v.clone() for k, v in student.named_parameters()}
    trainer = OfflineOnPolicyKDTrainer(
        student, kd_args(tmp_path, max_steps=8), train_dataset=cache, processing_class=tokenizer
    )
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    for key in ("kd_loss", "ce_loss", "top1_agreement", "student_entropy", "teacher_tail_mass"):
        assert all(np.isfinite(entry[key]) for entry in logs), key
    assert logs[-1]["kd_loss"] < logs[0]["kd_loss"]
    assert 0 <= logs[-1]["top1_agreement"] <= 1 and 0 <= logs[-1]["teacher_tail_mass"] <= 1
    assert all(not torch.equal(v, before[k]) for k, v in student.named_parameters())


def test_cache_path_in_the_config(tmp_path, tokenizer, cache):
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer), kd_args(tmp_path, teacher_cache=str(cache.path)), processing_class=tokenizer
    )
    assert len(trainer.train_dataset) == len(cache) and trainer.teacher_cache.path == cache.path


def test_gradient_accumulation_equals_one_big_batch(tmp_path, tokenizer, cache):
    def final_weights(batch, accumulation):
        student = build_tiny_model(tokenizer)
        args = kd_args(
            tmp_path / f"{batch}x{accumulation}", max_steps=1, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=0.5, max_grad_norm=0.0,
        )  # fmt: skip
        OfflineOnPolicyKDTrainer(student, args, train_dataset=cache, processing_class=tokenizer).train()
        return {k: v.detach().clone() for k, v in student.named_parameters()}

    one, accumulated = final_weights(8, 1), final_weights(2, 4)
    initial = dict(build_tiny_model(tokenizer).named_parameters())
    for name, value in one.items():
        assert not torch.equal(value, initial[name])
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-6)


def test_chunked_and_unchunked_steps_agree(tmp_path, tokenizer, cache):
    def after_one_step(chunk):
        student = build_tiny_model(tokenizer)
        args = kd_args(tmp_path / str(chunk), max_steps=1, kd_chunk_size=chunk, optim="sgd", max_grad_norm=0.0)
        OfflineOnPolicyKDTrainer(student, args, train_dataset=cache, processing_class=tokenizer).train()
        return {k: v.detach().clone() for k, v in student.named_parameters()}

    small, whole = after_one_step(5), after_one_step(100_000)
    for name, value in whole.items():
        torch.testing.assert_close(small[name], value, rtol=1e-5, atol=1e-6)


def held_out_kl(teacher, student, cache_like):
    """Mean KL(teacher || student) over the scored positions, from full-vocabulary forwards of both."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(cache_like)):
            sample = cache_like[i]
            ids, pos = sample["input_ids"][None], sample["positions"]
            p = torch.log_softmax(teacher(input_ids=ids).logits[0, pos].double(), -1)
            q = torch.log_softmax(student(input_ids=ids).logits[0, pos].double(), -1)
            total += (p.exp() * (p - q)).sum().item()
            count += len(pos)
    return total / count


def test_distillation_lowers_held_out_kl_more_than_sft_on_the_same_sequences(tmp_path, tokenizer):
    teacher = sharp_teacher(tokenizer)
    train = cache_teacher_logits(teacher, tokenizer, make_dataset(64), tmp_path / "train", top_k=64)
    held_out = cache_teacher_logits(teacher, tokenizer, make_dataset(16, seed=5), tmp_path / "eval", top_k=4)
    kls = {}
    for name, kd_weight in (("kd", 1.0), ("sft", 0.0)):
        student = build_tiny_model(tokenizer, seed=3)
        kls["initial"] = held_out_kl(teacher, student, held_out)
        args = kd_args(tmp_path / name, max_steps=40, per_device_train_batch_size=8, kd_weight=kd_weight)
        OfflineOnPolicyKDTrainer(student, args, train_dataset=train, processing_class=tokenizer).train()
        kls[name] = held_out_kl(teacher, student, held_out)
    assert kls["kd"] < kls["sft"] < kls["initial"] or kls["kd"] < min(kls["sft"], kls["initial"])
    assert kls["kd"] < 0.8 * kls["sft"], kls


def test_curriculum_composes_with_difficulty_from_the_cache(tmp_path, tokenizer, cache):
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer),
        kd_args(tmp_path, curriculum_pacing="linear", curriculum_difficulty="teacher_nll"),
        train_dataset=cache,
        processing_class=tokenizer,
    )
    expected = [float(-cache[i]["token_logprobs"].mean()) for i in range(len(cache))]
    np.testing.assert_allclose(trainer.curriculum_difficulty, expected, rtol=1e-6)
    first = trainer.curriculum_sampler.schedule(0).indices[:4]
    assert max(trainer.curriculum_difficulty[first]) <= np.quantile(expected, 0.25)
    entropy = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer),
        kd_args(tmp_path, curriculum_pacing="linear", curriculum_difficulty="teacher_entropy"),
        train_dataset=cache,
        processing_class=tokenizer,
    )
    assert np.isfinite(entropy.curriculum_difficulty).all() and np.ptp(entropy.curriculum_difficulty) > 0


def test_lora_student(tmp_path, tokenizer, cache):
    from peft import LoraConfig

    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer),
        kd_args(tmp_path),
        train_dataset=cache,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = {n: p.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert before and all("lora_" in n for n in before)
    assert any(not torch.equal(after[n], v) for n, v in before.items())
    with pytest.raises(ValueError, match="Remove `'lm_head'`"):  # SFTTrainer's own check: the head is read directly
        OfflineOnPolicyKDTrainer(
            build_tiny_model(tokenizer),
            kd_args(tmp_path),
            train_dataset=cache,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules=["q_proj", "lm_head"]),
        )


def test_bf16_with_activation_checkpointing(tmp_path, tokenizer, cache):
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer),
        kd_args(tmp_path, bf16=True, activation_checkpointing=True, max_steps=2),
        train_dataset=cache,
        processing_class=tokenizer,
    )
    trainer.train()
    assert all(np.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


@pytest.mark.parametrize(
    "divergence", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "tvd", "sampled_reverse_kl"]
)
def test_every_divergence_trains(tmp_path, tokenizer, cache, divergence):
    args = kd_args(
        tmp_path, max_steps=2, divergence=divergence, tail="renormalize" if divergence == "tvd" else "bucket"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), args, train_dataset=cache,
                                           processing_class=tokenizer)  # fmt: skip
    # The sampled estimator is meant for the student's own samples; this cache holds a dataset's answers
    said = [str(w.message) for w in caught if "sampled_reverse_kl" in str(w.message)]
    assert (divergence == "sampled_reverse_kl") == bool(said) and all("holds no student rollouts" in s for s in said)
    trainer.train()
    assert np.isfinite(trainer.state.log_history[-1]["train_loss"])


# ---------------------------------------------------------------- bad input


def test_cache_made_with_another_tokenizer_or_vocabulary(tmp_path, tokenizer, cache):
    other = build_tokenizer(vocab_size=400)
    with pytest.raises(CacheError, match="made with another tokenizer"):
        OfflineOnPolicyKDTrainer(
            build_tiny_model(other), kd_args(tmp_path), train_dataset=cache, processing_class=other
        )
    narrower = build_tiny_model(tokenizer)
    narrower.resize_token_embeddings(len(tokenizer) - 8, mean_resizing=False)
    with pytest.raises(CacheError, match=r"over 468 tokens .* student's LM head has only 460 outputs.*resize"):
        OfflineOnPolicyKDTrainer(narrower, kd_args(tmp_path), train_dataset=cache, processing_class=tokenizer)


def test_a_student_head_padded_past_the_tokenizer_trains(tmp_path, tokenizer, cache):
    wider = build_tiny_model(tokenizer)
    wider.resize_token_embeddings(len(tokenizer) + 8, mean_resizing=False)  # e.g. Qwen2.5-0.5B's 151936 > 151665
    trainer = OfflineOnPolicyKDTrainer(wider, kd_args(tmp_path, max_steps=3), train_dataset=cache,
                                       processing_class=tokenizer)  # fmt: skip
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kd_loss" in e]
    assert len(logs) == 3 and all(np.isfinite(e["kd_loss"]) and e["kd_loss"] > 0 for e in logs)


def test_no_cache_and_wrong_config(tmp_path, tokenizer, cache):
    with pytest.raises(ValueError, match="trains on a teacher cache"):
        OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path), processing_class=tokenizer)
    with pytest.raises(CacheError, match="has no metadata.json"):
        OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), kd_args(tmp_path), train_dataset=str(tmp_path))
    from trl import SFTConfig

    with pytest.raises(TypeError, match="needs an OfflineOnPolicyKDConfig"):
        OfflineOnPolicyKDTrainer(
            build_tiny_model(tokenizer), SFTConfig(str(tmp_path), bf16=False, use_cpu=True), train_dataset=cache
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(divergence="alpha"), "Unknown `divergence` 'alpha'"),
        (dict(tail="drop"), "Unknown `tail` 'drop'"),
        (dict(kd_weight=1.5), "kd_weight"),
        (dict(temperature=0.0), "temperature"),
        (dict(curriculum_difficulty="teacher_mood"), "teacher_mood"),
    ],
)
def test_bad_kd_config(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        kd_args(tmp_path, **overrides)


def test_statistics_that_cost_passes_are_computed_on_logging_steps_only(tmp_path, tokenizer, cache, monkeypatch):
    from trl_edge.trainer import offline_kd_trainer

    asked = []
    original = offline_kd_trainer.chunked_kd_loss

    def recording(*args, **kwargs):
        asked.append(kwargs["compute_stats"])
        return original(*args, **kwargs)

    monkeypatch.setattr(offline_kd_trainer, "chunked_kd_loss", recording)
    trainer = OfflineOnPolicyKDTrainer(
        build_tiny_model(tokenizer), kd_args(tmp_path, max_steps=6, logging_steps=0.5), train_dataset=cache,
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()  # logging_steps=0.5 (a fraction of the run) resolves to 3: logs at steps 3 and 6
    assert asked == [False, False, True, False, False, True]
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["step"] for e in logs] == [3, 6]
    assert all(0 <= e["top1_agreement"] <= 1 and e["student_entropy"] > 0 for e in logs)


def test_the_kd_config_checks_the_losss_own_bounds(tmp_path):
    """One statement of what each loss option accepts (``KDLossOptions``): ``skew_alpha`` 0 (the plain KL) is as valid
    for the config as for the loss (the config once refused it: ``(0, 1)`` against the loss's ``[0, 1]``)."""
    from trl_edge.losses import KDLossOptions

    args = kd_args(tmp_path, skew_alpha=0.0, divergence="skew_forward_kl", beta=1.0)
    assert args.kd_loss_options() == KDLossOptions(divergence="skew_forward_kl", beta=1.0, skew_alpha=0.0)
    with pytest.raises(ValueError, match=r"`skew_alpha` must be in \[0, 1\], got 1.5"):
        kd_args(tmp_path, skew_alpha=1.5)
    with pytest.raises(ValueError, match=r"`temperature` must be in \(0, inf\)"):
        kd_args(tmp_path, temperature=float("inf"))
    fields = OfflineOnPolicyKDConfig.__dataclass_fields__
    assert fields["divergence"].metadata["choices"] == list(KDLossOptions.CHOICES["divergence"])
    assert fields["tail"].metadata["choices"] == list(KDLossOptions.CHOICES["tail"])
