"""The teacher logit cache: exact round trips, SFT-identical tokenization, resume, multi-rank writing, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_dataset
from datasets import Dataset

from trl_edge.backends.transformers_backend import PositionScorer
from trl_edge.cache.format import CacheError, file_sha256, shard_name
from trl_edge.cache.reader import TeacherLogitCache
from trl_edge.cache.writer import cache_teacher_logits
from trl_edge.testing import build_tiny_model, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests/scripts/write_cache.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def teacher():
    return build_tiny_model(build_tokenizer(), arch="qwen2", seed=1)


def dense_reference(model, input_ids, labels):
    """Full log-softmax over the vocabulary from one unpadded forward pass, at the scored positions."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=input_ids[None]).logits[0].float(), -1)
    positions = torch.nonzero(labels[1:] != -100).squeeze(-1)
    return positions, logprobs[positions], logprobs[positions, input_ids[positions + 1]]


def shard_hashes(directory):
    return {p.name: file_sha256(p) for p in sorted(Path(directory).glob("shard-*.safetensors"))}


def test_lossless_full_vocabulary_round_trip_matches_a_dense_forward(tmp_path, tokenizer, teacher):
    vocab = teacher.config.vocab_size
    cache = cache_teacher_logits(
        teacher, tokenizer, make_dataset(6), tmp_path / "c", top_k=vocab, encoding="lossless", shard_size=4
    )
    assert len(cache) == 6 and cache.metadata.num_shards == 2
    for i in range(len(cache)):
        sample = cache[i]
        positions, dense, token_lp = dense_reference(teacher, sample["input_ids"], sample["labels"])
        assert torch.equal(sample["positions"], positions)
        # k = vocabulary: the stored top-k is the whole distribution, in descending order.
        rebuilt = torch.full_like(dense, float("nan")).scatter(1, sample["topk_ids"], sample["topk_logprobs"])
        torch.testing.assert_close(rebuilt, dense, rtol=0, atol=2e-5)
        torch.testing.assert_close(sample["token_logprobs"], token_lp, rtol=0, atol=2e-5)
        assert (sample["topk_logprobs"].diff(dim=-1) <= 0).all()


def test_lossless_is_bit_exact_against_the_scores_written(tmp_path, tokenizer, teacher):
    cache = cache_teacher_logits(teacher, tokenizer, make_dataset(5), tmp_path / "c", top_k=8, encoding="lossless")
    samples = [cache[i] for i in range(5)]
    # The writer scored the shard as one batch (batch_size 8 > 5), longest first: score it the same way.
    order = np.argsort([-len(s["input_ids"]) for s in samples], kind="stable")
    scored = PositionScorer(teacher, 8)(
        [samples[i]["input_ids"].numpy() for i in order], [samples[i]["labels"].numpy() for i in order]
    )
    for i, (ids, values, token_lp) in zip(order, scored):
        assert np.array_equal(samples[i]["topk_ids"].numpy(), ids)
        assert np.array_equal(samples[i]["topk_logprobs"].numpy(), values)
        assert np.array_equal(samples[i]["token_logprobs"].numpy(), token_lp)


def test_compact_cache_stays_within_the_kl_bound(tmp_path, tokenizer, teacher):
    exact = cache_teacher_logits(teacher, tokenizer, make_dataset(6), tmp_path / "l", top_k=64, encoding="lossless")
    compact = cache_teacher_logits(teacher, tokenizer, make_dataset(6), tmp_path / "c", top_k=64)
    assert compact.metadata.encoding.startswith("compact")
    kls = []
    for i in range(len(exact)):
        a, b = exact[i], compact[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and a["sample_id"] == b["sample_id"]
        for row in range(len(a["positions"])):
            p = dict(zip(a["topk_ids"][row].tolist(), a["topk_logprobs"][row].exp().tolist()))
            q = dict(zip(b["topk_ids"][row].tolist(), b["topk_logprobs"][row].exp().tolist()))
            assert p.keys() == q.keys()
            p_tail, q_tail = max(1 - sum(p.values()), 1e-12), max(1 - sum(q.values()), 1e-12)
            kl = sum(pv * np.log(pv / q[t]) for t, pv in p.items()) + p_tail * np.log(p_tail / q_tail)
            kls.append(kl)
    assert np.mean(kls) <= 1e-3


def test_tokenization_is_the_sft_trainers(tmp_path, tokenizer, teacher):
    from conftest import training_args

    from trl_edge import CurriculumSFTTrainer

    for fmt in ("conversational", "prompt_completion", "language_modeling"):
        data = make_dataset(6, fmt=fmt)
        cache = cache_teacher_logits(teacher, tokenizer, data, tmp_path / fmt, top_k=4, encoding="lossless")
        trainer = CurriculumSFTTrainer(
            build_tiny_model(tokenizer), training_args(tmp_path), train_dataset=data, processing_class=tokenizer
        )
        prepared = trainer.train_dataset
        assert [cache[i]["input_ids"].tolist() for i in range(len(cache))] == prepared["input_ids"]
        assert [cache[i]["labels"].tolist() for i in range(len(cache))] == prepared["labels"]


def test_sample_ids_follow_content_not_position(tmp_path, tokenizer, teacher):
    data = make_dataset(8)
    a = cache_teacher_logits(teacher, tokenizer, data, tmp_path / "a", top_k=4, shard_size=3)
    b = cache_teacher_logits(teacher, tokenizer, data.select(range(7, -1, -1)), tmp_path / "b", top_k=4)
    ids_a = [a.sample_id(i) for i in range(8)]
    assert sorted(ids_a) == sorted(b.sample_id(i) for i in range(8))
    assert b.index_of(ids_a[0]) == 7
    assert torch.equal(b[b.index_of(ids_a[2])]["topk_ids"], a[2]["topk_ids"])


def test_to_dataset_and_collate(tmp_path, tokenizer, teacher):
    cache = cache_teacher_logits(teacher, tokenizer, make_dataset(5), tmp_path / "c", top_k=4, shard_size=2)
    ds = cache.to_dataset()
    assert isinstance(ds, Dataset) and len(ds) == 5
    assert set(ds.column_names) == {"cache_index", "num_tokens", "num_positions", "sample_id", "stage", "difficulty"}
    assert ds[4]["sample_id"] == cache.sample_id(4) and ds[4]["num_tokens"] == len(cache[4]["input_ids"])
    assert ds[4]["num_positions"] == len(cache[4]["positions"]) and ds["cache_index"] == list(range(5))
    assert ds["stage"] == make_dataset(5)["stage"]  # the dataset's own columns travel with the samples
    batch = cache.collate([0, 3], pad_token_id=tokenizer.pad_token_id)
    width = max(len(cache[0]["input_ids"]), len(cache[3]["input_ids"]))
    assert batch["teacher_topk_ids"].shape == (2, width, 4)
    assert batch["teacher_mask"].sum() == len(cache[0]["positions"]) + len(cache[3]["positions"])
    assert torch.isinf(batch["teacher_topk_logprobs"][~batch["teacher_mask"]]).all()
    assert torch.isfinite(batch["teacher_topk_logprobs"][batch["teacher_mask"]]).all()


# ---------------------------------------------------------------- errors a user can hit


def test_a_corrupted_shard_names_the_sample_and_verify_reports_it(tmp_path, tokenizer, teacher):
    path = tmp_path / "c"
    cache_teacher_logits(teacher, tokenizer, make_dataset(6), path, top_k=4, shard_size=4)
    shard = path / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes: same size, different content
    shard.write_bytes(bytes(data))
    cache = TeacherLogitCache(path)  # the size still matches: opening succeeds ...
    problems = cache.verify()  # ... but verification finds it
    assert any("shard-00001.safetensors: sha256 differs" in p for p in problems)
    result = subprocess.run(
        [sys.executable, "-m", "trl_edge.cli.main", "cache", "verify", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 1 and "FAILED" in result.stdout and "shard-00001" in result.stdout


def test_a_flipped_sample_byte_fails_that_read_with_its_name(tmp_path, tokenizer, teacher):
    path = tmp_path / "c"
    cache = cache_teacher_logits(teacher, tokenizer, make_dataset(4), path, top_k=4)
    shard = path / shard_name(0)
    data = bytearray(shard.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    offsets = json.loads(data[8:header])["input_ids"]["data_offsets"]
    data[header + offsets[0] + 1] ^= 0x01  # a token of sample 0
    shard.write_bytes(bytes(data))
    cache = TeacherLogitCache(path)
    with pytest.raises(CacheError, match="Checksum mismatch for sample 0 in shard-00000.safetensors"):
        cache[0]
    assert cache[1]["input_ids"].numel() > 0  # the other samples still read


def test_truncated_missing_and_garbage_shards(tmp_path, tokenizer, teacher):
    path = tmp_path / "c"
    cache_teacher_logits(teacher, tokenizer, make_dataset(6), path, top_k=4, shard_size=2)
    shard = path / shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CacheError, match="shard-00001.safetensors is truncated or altered"):
        TeacherLogitCache(path)
    shard.unlink()
    with pytest.raises(CacheError, match=r"incomplete: shard-00001.safetensors \(samples 2-3\) is missing.*Rerun"):
        TeacherLogitCache(path)
    with pytest.raises(CacheError, match="has no metadata.json"):
        TeacherLogitCache(tmp_path)


def test_tokenizer_and_vocabulary_mismatch(tmp_path, tokenizer, teacher):
    path = tmp_path / "c"
    cache_teacher_logits(teacher, tokenizer, make_dataset(2), path, top_k=4)
    other = build_tokenizer(vocab_size=400)
    with pytest.raises(CacheError, match="made with another tokenizer"):
        TeacherLogitCache(path, tokenizer=other)
    vocab = teacher.config.vocab_size
    with pytest.raises(CacheError, match=f"distributions over {vocab} tokens.*student's LM head has only 400"):
        TeacherLogitCache(path, vocab_size=400)
    TeacherLogitCache(path, tokenizer=tokenizer, vocab_size=vocab)
    TeacherLogitCache(path, tokenizer=tokenizer, vocab_size=vocab + 64)  # a head padded past the tokenizer is fine


def test_nan_from_the_teacher_fails_naming_the_sample(tmp_path, tokenizer):
    broken = build_tiny_model(tokenizer)
    with torch.no_grad():
        broken.lm_head.weight[5] = float("nan")
    with pytest.raises(CacheError, match=r"NaN/inf log-probs for sample 0 \(shard 0\).*dtype"):
        cache_teacher_logits(broken, tokenizer, make_dataset(2), tmp_path / "c", top_k=4)


def test_empty_dataset_and_other_settings_in_the_same_directory(tmp_path, tokenizer, teacher):
    with pytest.raises(ValueError, match="empty"):
        cache_teacher_logits(teacher, tokenizer, Dataset.from_list([]), tmp_path / "e", top_k=4)
    cache_teacher_logits(teacher, tokenizer, make_dataset(2), tmp_path / "c", top_k=4)
    with pytest.raises(CacheError, match=r"other settings \(top_k: 4 -> 8\).*overwrite"):
        cache_teacher_logits(teacher, tokenizer, make_dataset(2), tmp_path / "c", top_k=8)
    again = cache_teacher_logits(teacher, tokenizer, make_dataset(2), tmp_path / "c", top_k=8, overwrite=True)
    assert again.metadata.top_k == 8


# ---------------------------------------------------------------- resume and ranks (real processes)


@pytest.mark.slow
def test_a_killed_job_resumes_to_the_uninterrupted_cache(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert subprocess.run([sys.executable, str(SCRIPT), str(whole)], env=ENV).returncode == 0
    died = subprocess.run([sys.executable, str(SCRIPT), str(killed), "--kill-after", "2"], env=ENV)
    assert died.returncode == 17
    assert len(shard_hashes(killed)) == 2 and not list(killed.glob(".*.tmp"))
    with pytest.raises(CacheError, match="incomplete"):
        TeacherLogitCache(killed)
    before = {p: p.stat().st_mtime_ns for p in killed.glob("shard-*.safetensors")}
    assert subprocess.run([sys.executable, str(SCRIPT), str(killed)], env=ENV).returncode == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished shards were not redone
    assert shard_hashes(killed) == shard_hashes(whole) and len(shard_hashes(whole)) == 5
    assert TeacherLogitCache(killed).verify() == []


@pytest.mark.slow
def test_two_ranks_write_one_cache(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    assert subprocess.run([sys.executable, str(SCRIPT), str(single)], env=ENV).returncode == 0
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), "--main_process_port", "29533",
        str(SCRIPT), str(double),
    ]  # fmt: skip
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert shard_hashes(double) == shard_hashes(single)
    writers = [json.loads((double / f"shard-{i:05d}.json").read_text())["written_by"] for i in range(5)]
    assert writers == [{"rank": i % 2, "world_size": 2} for i in range(5)]  # each rank wrote its own shards
    assert TeacherLogitCache(double).verify() == []


@pytest.mark.slow
def test_cli_caches_and_verifies_offline(tmp_path):
    out = tmp_path / "cache"
    recipe = ROOT / "recipes/offline_kd/cache_tiny.yaml"
    cmd = [sys.executable, "-m", "trl_edge.cli.main", "cache", "--config", str(recipe), "--output_dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Teacher cache written to {out}" in result.stdout
    cache = TeacherLogitCache(out)
    assert len(cache) == 256 and cache.metadata.top_k == 16 and cache.metadata.num_shards == 4
    verify = subprocess.run(
        [sys.executable, "-m", "trl_edge.cli.main", "cache", "verify", str(out)],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and verify.stdout.startswith("OK:") and "256 samples in 4 shard(s)" in verify.stdout


# ---------------------------------------------------------------- the optional vLLM backend


def test_vllm_prompt_logprobs_map_to_cache_positions():
    """vLLM's prompt_logprobs[t + 1] is the cache's position t; its extra entry for the actual token is dropped."""
    from types import SimpleNamespace

    from trl_edge.backends.vllm_backend import prompt_logprobs_to_topk

    def entry(lp):
        return SimpleNamespace(logprob=lp)

    input_ids = np.array([5, 7, 9, 4])
    labels = np.array([-100, -100, 9, 4])  # scored positions: 1 (predicts 9) and 2 (predicts 4)
    prompt_logprobs = [
        None,
        {7: entry(-0.1), 3: entry(-2.5)},
        {1: entry(-0.2), 2: entry(-1.9), 9: entry(-3.0)},  # the actual token 9 is outside the top-2
        {4: entry(-0.05), 8: entry(-3.2)},
    ]
    ids, values, token_lp = prompt_logprobs_to_topk(prompt_logprobs, input_ids, labels, top_k=2)
    assert ids.tolist() == [[1, 2], [4, 8]]
    np.testing.assert_allclose(values, [[-0.2, -1.9], [-0.05, -3.2]], rtol=1e-6)
    np.testing.assert_allclose(token_lp, [-3.0, -0.05], rtol=1e-6)


def test_vllm_backend_is_refused_cleanly_where_vllm_is_absent(tmp_path, tokenizer, teacher):
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(ImportError, match=r"pip install trl-edge\[vllm\]"):
        cache_teacher_logits("any/teacher", tokenizer, make_dataset(2), tmp_path / "c", backend="vllm")
    with pytest.raises(ValueError, match="Unknown backend 'onnx'"):
        cache_teacher_logits(teacher, tokenizer, make_dataset(2), tmp_path / "c", backend="onnx")
    assert not (tmp_path / "c").exists()


def test_the_writer_reports_where_its_time_goes(tmp_path, tokenizer, teacher):
    timings = {}
    cache_teacher_logits(teacher, tokenizer, make_dataset(4), tmp_path / "c", top_k=4, shard_size=2, timings=timings)
    assert set(timings) == {"forward", "topk", "encode", "write"}
    assert all(seconds > 0 for seconds in timings.values())


# ---------------------------------------------------------------- real-model settings


def tensor_byte(path, name, index=0):
    """The file offset of byte ``index`` of tensor ``name`` in a safetensors file."""
    data = Path(path).read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    return header + json.loads(data[8:header])[name]["data_offsets"][0] + index


def test_the_tokenizer_fingerprint_ignores_which_token_pads(tmp_path):
    tokenizer = build_tokenizer()
    tokenizer.pad_token = None  # like SmolLM2's; SFT then sets pad_token = eos_token
    path = tmp_path / "c"
    cache_teacher_logits(build_tiny_model(tokenizer, seed=1), tokenizer, make_dataset(2), path, top_k=4)
    tokenizer.pad_token = tokenizer.eos_token
    TeacherLogitCache(path, tokenizer=tokenizer)  # same ids: accepted
    tokenizer.add_tokens(["<|new|>"])
    with pytest.raises(CacheError, match="made with another tokenizer"):
        TeacherLogitCache(path, tokenizer=tokenizer)


def test_a_teacher_head_padded_past_the_tokenizer_caches_only_real_ids(tmp_path, tokenizer, capsys):
    vocab, padding = len(tokenizer), 64
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=1)
    teacher.resize_token_embeddings(vocab + padding, mean_resizing=False)
    with torch.no_grad():  # padding rows that would win the top-k if they were candidates
        teacher.lm_head.weight[vocab:] = 4 * teacher.lm_head.weight[:padding]
    cache = cache_teacher_logits(teacher, tokenizer, make_dataset(3), tmp_path / "c", top_k=8, encoding="lossless")
    said = capsys.readouterr().out
    assert f"{vocab + padding} outputs for {vocab} tokenizer ids" in said and f">= {vocab} outputs" in said
    assert (cache.metadata.vocab_size, cache.metadata.teacher_head_size) == (vocab, vocab + padding)
    for i in range(len(cache)):
        sample = cache[i]
        positions, dense, _ = dense_reference(teacher, sample["input_ids"], sample["labels"])
        assert int(sample["topk_ids"].max()) < vocab
        assert (dense.topk(8, dim=-1).indices >= vocab).any(-1).float().mean() > 0.5  # padding would have won...
        top = dense[:, :vocab].topk(8, dim=-1)  # ...but stays out of the top-k, so its mass is in the tail bucket
        assert torch.equal(sample["topk_ids"], top.indices)
        torch.testing.assert_close(sample["topk_logprobs"], top.values, rtol=0, atol=2e-5)
    TeacherLogitCache(tmp_path / "c", tokenizer=tokenizer, vocab_size=vocab)  # a student with the unpadded head


def test_a_bf16_teacher_is_projected_in_fp32(tmp_path, tokenizer):
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=7)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(25.0)  # logits in the tens, where bf16's grid is coarse
    teacher = teacher.to(torch.bfloat16)
    cache = cache_teacher_logits(teacher, tokenizer, make_dataset(2), tmp_path / "c", top_k=16, encoding="lossless")
    sample = cache[0]
    with torch.no_grad():
        hidden = teacher.get_decoder()(input_ids=sample["input_ids"][None]).last_hidden_state[0]
        fp32 = torch.log_softmax(hidden.float() @ teacher.lm_head.weight.float().t(), -1)[sample["positions"]]
        bf16 = torch.log_softmax(teacher.lm_head(hidden).float(), -1)[sample["positions"]]
    torch.testing.assert_close(sample["topk_logprobs"], fp32.gather(-1, sample["topk_ids"]), rtol=0, atol=1e-5)
    assert (bf16.gather(-1, sample["topk_ids"]) - sample["topk_logprobs"]).abs().max() > 1e-3  # what bf16 would lose


def test_a_flipped_sample_id_byte_fails_that_read(tmp_path, tokenizer, teacher):
    path = tmp_path / "c"
    cache_teacher_logits(teacher, tokenizer, make_dataset(4), path, top_k=4)
    shard = path / shard_name(0)
    data = bytearray(shard.read_bytes())
    data[tensor_byte(shard, "sample_ids", index=16 + 3)] ^= 0x01  # a byte of sample 1's id
    shard.write_bytes(bytes(data))
    cache = TeacherLogitCache(path)
    with pytest.raises(CacheError, match="Checksum mismatch for sample 1 in shard-00000.safetensors"):
        cache[1]
    assert cache[0]["input_ids"].numel() > 0


def test_a_rerun_rewrites_a_corrupted_shard_whose_size_still_matches(tmp_path, tokenizer, teacher, caplog):
    path = tmp_path / "c"
    cache_teacher_logits(teacher, tokenizer, make_dataset(6), path, top_k=4, shard_size=2)
    before = shard_hashes(path)
    shard = path / shard_name(1)
    data = bytearray(shard.read_bytes())
    data[tensor_byte(shard, "blob", index=5)] ^= 0xFF
    shard.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        cache = cache_teacher_logits(teacher, tokenizer, make_dataset(6), path, top_k=4, shard_size=2)
    assert "shard-00001.safetensors does not match its seal" in caplog.text
    assert shard_hashes(path) == before and cache.verify() == []


def test_the_same_call_in_a_fresh_process_resumes_after_sft_touched_the_tokenizer(tmp_path):
    script = ROOT / "tests/scripts/rerun_cache.py"
    first = subprocess.run([sys.executable, str(script), str(tmp_path)], env=ENV, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    before = shard_hashes(tmp_path / "cache")
    (tmp_path / "cache" / shard_name(1)).unlink()  # as if killed before the last shard
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "--through-sft"], env=ENV, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.split("CACHE")[-1] == first.stdout.split("CACHE")[-1]
    assert shard_hashes(tmp_path / "cache") == before


def test_a_scoring_source_hands_over_its_own_sequences(tmp_path, tokenizer, teacher):
    """The cache scores a ``ScoringSource``'s plan token for token (the interface a RolloutSet implements), and
    tokenizes anything else as SFT does: an object is a source by declaring it, not by having a method's name."""
    from trl_edge import RolloutSet
    from trl_edge.cache.plan import ScoringPlan, ScoringSource, plan_from_dataset

    ids = np.asarray([5, 6, 7, 8, 9, 10], dtype=np.int32)
    labels = np.asarray([-100, -100, -100, 8, 9, 10], dtype=np.int32)

    class Fixed(ScoringSource):
        def scoring_plan(self):
            return ScoringPlan.from_arrays(ids, labels, [0, len(ids)], {}, source={"kind": "fixed"})

    cache = cache_teacher_logits(teacher, tokenizer, Fixed(), tmp_path / "c", top_k=4)
    assert cache.metadata.source == {"kind": "fixed"}
    assert cache[0]["input_ids"].tolist() == ids.tolist() and cache[0]["labels"].tolist() == labels.tolist()
    assert issubclass(RolloutSet, ScoringSource)

    class LooksLikeOne:
        def scoring_plan(self):
            raise AssertionError("duck-typed: only a ScoringSource is asked for its plan")

    with pytest.raises((TypeError, AttributeError, ValueError)):
        plan_from_dataset(LooksLikeOne(), tokenizer)
