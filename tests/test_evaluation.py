"""Evaluation: teacher fidelity, generation quality, lm-eval benchmarks and `trl-edge eval`, offline on tiny models."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset

from trl_edge.cache.format import CacheError
from trl_edge.cache.writer import cache_teacher_logits
from trl_edge.evaluation import (
    answers_match,
    evaluate_fidelity,
    evaluate_generation,
    extract_answer,
    flatten_lm_eval_results,
    greedy_generate,
    normalize_answer,
    run_lm_eval,
)
from trl_edge.evaluation.generation import prompt_ids
from trl_edge.evaluation.metrics import load_metric
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer, save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "tests/data/lm_eval"


@pytest.fixture(scope="module")
def teacher(tokenizer):
    return build_tiny_model(tokenizer, arch="llama", seed=0).eval()


@pytest.fixture(scope="module")
def lossless_cache(tmp_path_factory, tokenizer, teacher):
    data = Dataset.from_list(arithmetic_examples(16))
    return cache_teacher_logits(
        teacher, tokenizer, data, tmp_path_factory.mktemp("cache") / "c", top_k=16, encoding="lossless"
    )


# ------------------------------------------------------------------------------------------------------ fidelity
def test_teacher_on_its_own_lossless_cache_has_zero_kl_and_full_agreement(tokenizer, teacher, lossless_cache):
    result = evaluate_fidelity(teacher, lossless_cache, batch_size=4, tokenizer=tokenizer)
    assert result["fidelity/kl"] < 1e-5
    assert result["fidelity/top1_agreement"] == 1.0
    cached = [lossless_cache[i]["token_logprobs"] for i in range(len(lossless_cache))]
    assert result["fidelity/num_positions"] == sum(len(c) for c in cached) > 0
    # the CE is the teacher's own NLL of the cached tokens, which the cache recorded
    assert result["fidelity/ce"] == pytest.approx(-torch.cat(cached).mean().item(), abs=1e-4)


def dense_fidelity(teacher, student, cache):
    """KL(teacher || student), top-1 agreement and CE from the two models' full logits, position by position."""
    kls, agree, ces = [], [], []
    with torch.no_grad():
        for i in range(len(cache)):
            ids, positions = cache[i]["input_ids"], cache[i]["positions"]
            p = torch.log_softmax(teacher(ids[None]).logits[0, positions].double(), -1)
            q = torch.log_softmax(student(ids[None]).logits[0, positions].double(), -1)
            kls.append((p.exp() * (p - q)).sum(-1))
            agree.append((q.argmax(-1) == p.argmax(-1)).double())
            ces.append(-q.gather(-1, ids[positions + 1][:, None]).squeeze(-1))
    return [torch.cat(x).mean().item() for x in (kls, agree, ces)]


def test_another_model_has_the_dense_full_vocabulary_kl(tmp_path, tokenizer, teacher):
    vocab = teacher.config.vocab_size  # k = V: the cached top-k is the whole distribution, no tail
    data = Dataset.from_list(arithmetic_examples(6, seed=3))
    cache = cache_teacher_logits(teacher, tokenizer, data, tmp_path / "full", top_k=vocab, encoding="lossless")
    student = build_tiny_model(tokenizer, arch="qwen2", seed=1).eval()
    result = evaluate_fidelity(student, cache, batch_size=4, tokenizer=tokenizer, chunk_size=7)
    kl, agreement, ce = dense_fidelity(teacher, student, cache)
    assert result["fidelity/kl"] > 0.01
    assert result["fidelity/kl"] == pytest.approx(kl, rel=1e-4)
    assert result["fidelity/top1_agreement"] == pytest.approx(agreement)
    assert result["fidelity/ce"] == pytest.approx(ce, rel=1e-4)
    # weighted by positions, so the batching does not change it
    one_by_one = evaluate_fidelity(student, cache, batch_size=1)
    assert one_by_one["fidelity/kl"] == pytest.approx(result["fidelity/kl"], rel=1e-5)


def test_fidelity_refuses_another_vocabulary(lossless_cache):
    other = build_tokenizer(vocab_size=300)
    with pytest.raises(CacheError, match="another tokenizer"):
        evaluate_fidelity(build_tiny_model(other), lossless_cache, tokenizer=other)
    with pytest.raises(CacheError, match="LM head has only 300 outputs"):
        evaluate_fidelity(build_tiny_model(other), lossless_cache)


# ------------------------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize(
    "text, answer",
    [
        ("Let us think step by step. 12 + 7 = 19. Answer: 19.", "19"),
        ("So the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,234", "1234"),
        ("The answer is 42 apples.", "42"),
        ("Answer: 2/3", "2/3"),
        ("Answer: $1,000$.", "1000"),
        ("答案：15。", "15"),
        ("First 3, then 5, and finally 7.", "7"),
        ("It is 19.50 dollars", "19.5"),
        ("no number here", ""),
        ('The answer is "white".', "white"),  # quoted or emphasised word answers (SmolLM2 writes them so)
        ("Answer: **Paris**", "paris"),
        ("Answer: “cold”!", "cold"),
    ],
)
def test_extract_answer(text, answer):
    assert normalize_answer(extract_answer(text)) == answer


def test_answers_match_against_a_reference_or_a_ground_truth():
    assert answers_match("Let us think. 12 + 7 = 19. Answer: 19.", "Answer: 19.")
    assert answers_match("so it is 1,000", "1000.0", extract_reference=False)
    assert not answers_match("Answer: 18.", "#### 19")
    assert not answers_match("no answer", "19", extract_reference=False)
    assert not answers_match("Answer: Paris", "Paris, France", extract_reference=False)
    # a word answer said in a sentence, as a small chat model says it
    assert answers_match("The capital of France is Paris.", "Paris", extract_reference=False)
    assert answers_match("The opposite of hot is cold.", "cold", extract_reference=False)
    assert not answers_match("It is colder than that.", "cold", extract_reference=False)  # whole words only
    assert not answers_match("Paris is lovely. Answer: Lyon", "Paris", extract_reference=False)
    assert not answers_match("12 + 7 = 19, so Answer: 20", "19", extract_reference=False)  # numbers: final only


# ------------------------------------------------------------------------------------------------------ metrics
def test_rouge_l_module_matches_rouge_score():
    from rouge_score import rouge_scorer

    rouge = load_metric("rouge_l")
    reference = "Let us think step by step. 12 + 7 = 19. Answer: 19."
    assert rouge.compute(predictions=[reference], references=[reference])["rouge_l"] == 1.0
    assert rouge.compute(predictions=["the quick brown fox"], references=[reference])["rouge_l"] == 0.0
    pairs = [
        ("the cat sat on the mat", "a cat sat on a mat today"),
        ("Answer: 19.", reference),
        ("Knowledge distillation trains a student", "A student trains on the teacher's distributions"),
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in pairs]
    assert 0 < min(expected) and max(expected) < 1
    got = rouge.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs], use_aggregator=False)
    assert got["rouge_l"] == pytest.approx(expected)
    assert rouge.compute(predictions=[p for p, _ in pairs], references=[r for _, r in pairs])[
        "rouge_l"
    ] == pytest.approx(sum(expected) / 3)


def test_rouge_l_scores_chinese_which_rouge_score_drops():
    from rouge_score import rouge_scorer

    assert rouge_scorer.RougeScorer(["rougeL"]).score("答案是十五", "答案是十五")["rougeL"].fmeasure == 0.0
    rouge = load_metric("rouge_l")
    assert rouge.compute(predictions=["答案是十五"], references=["答案是十五"])["rouge_l"] == 1.0
    assert rouge.compute(predictions=["答案是十六"], references=["答案是十五"])["rouge_l"] == pytest.approx(0.8)


def test_metric_modules_load_offline_from_an_empty_cache(tmp_path):
    code = (
        "from trl_edge.evaluation.metrics import load_metric; "
        "print(load_metric('rouge_l').compute(predictions=['a b'], references=['a b'])['rouge_l'], "
        "load_metric('answer_exact_match').compute(predictions=['Answer: 3'], references=['3'])['exact_match'])"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1.0", "1.0"]


# ------------------------------------------------------------------------------------------------------ generation
def test_left_padded_batched_greedy_generation_equals_unbatched(tokenizer, teacher):
    prompts = [row["prompt"] for row in arithmetic_examples(5, seed=1)]
    prompts += ["Question: what is 3 + 4?", "The quick brown fox"]
    lengths = {len(prompt_ids(tokenizer, p)) for p in prompts}
    assert len(lengths) > 2  # the batches really are padded
    batched = greedy_generate(teacher, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    eos = teacher.generation_config.eos_token_id
    for prompt, text in zip(prompts, batched):
        ids = torch.tensor([prompt_ids(tokenizer, prompt)])
        out = teacher.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
        new = out[0, ids.shape[1] :].tolist()
        new = new[: new.index(eos)] if eos in new else new
        assert text == tokenizer.decode(new, skip_special_tokens=True)
    assert sum(bool(t) for t in batched) >= len(prompts) // 2


def generation_rows(conversational=False):
    rows = [
        {"prompt": "What is 2 + 3?", "completion": "Answer: 5.", "kind": "sums"},
        {"prompt": "What is 4 + 4?", "completion": "#### 8", "kind": "sums"},
        {"prompt": "Say hi", "completion": "hello there friend", "kind": "chat"},
    ]
    if conversational:  # TRL's conversational prompt-completion format
        for row in rows:
            row["prompt"] = [{"role": "user", "content": row["prompt"]}]
            row["completion"] = [{"role": "assistant", "content": row["completion"]}]
    return rows


@pytest.mark.parametrize("conversational", [False, True])
def test_generation_metrics_against_references_and_per_kind(tokenizer, teacher, monkeypatch, tmp_path, conversational):
    predictions = ["Let us think. 2 + 3 = 5. Answer: 5.", "It is 9.", "hello friend"]
    monkeypatch.setattr(
        "trl_edge.evaluation.generation.greedy_generate",
        lambda *a, **k: (predictions, [False, True, False]),
    )
    result = evaluate_generation(
        teacher, tokenizer, Dataset.from_list(generation_rows(conversational)), predictions_file=tmp_path / "g.jsonl"
    )
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    refs = ["Answer: 5.", "#### 8", "hello there friend"]
    rouge = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, refs)]
    assert result["generation/exact_match"] == pytest.approx(1 / 3)  # "hello friend" has no answer to match
    assert result["generation/rouge_l"] == pytest.approx(sum(rouge) / 3)
    assert result["generation/exact_match/kind=sums"] == 0.5
    assert result["generation/rouge_l/kind=chat"] == pytest.approx(rouge[2]) == pytest.approx(0.8)
    assert result["generation/hit_max_new_tokens"] == pytest.approx(1 / 3)
    assert result["generation/num_examples/kind=sums"] == 2.0 and result["generation/num_examples"] == 3.0
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["exact_match"] for r in rows] == [1.0, 0.0, 0.0] and rows[1]["predicted_answer"] == "9"


def test_generation_exact_match_against_a_target_column(tokenizer, teacher, monkeypatch):
    base = generation_rows()
    rows = [dict(r, target=t) for r, t in zip(base + base[:1], ["5", "9", "hello friend", ""])]
    monkeypatch.setattr(
        "trl_edge.evaluation.generation.greedy_generate",
        lambda *a, **k: (["Answer: 5.", "It is 8.", "well, hello friend", "anything"], [False] * 4),
    )
    result = evaluate_generation(teacher, tokenizer, Dataset.from_list(rows), kind_column=None)
    # targets win over the references' answers; a word answer counts when said; an empty target is left out
    assert result["generation/exact_match"] == pytest.approx(2 / 3)
    assert not any("kind=" in key for key in result)


def test_generation_runs_the_model_and_refuses_data_without_references(tokenizer, teacher):
    result = evaluate_generation(
        teacher, tokenizer, Dataset.from_list(generation_rows(conversational=True)), max_new_tokens=4, batch_size=2
    )
    assert 0.0 <= result["generation/rouge_l"] <= 1.0 and result["generation/num_examples"] == 3.0
    with pytest.raises(ValueError, match="no reference column"):
        evaluate_generation(teacher, tokenizer, Dataset.from_list([{"prompt": "hi", "other": "x"}]))


# ------------------------------------------------------------------------------------------------------ lm-eval
def test_flatten_lm_eval_results():
    results = {
        "results": {
            "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.1},
            "grp": {"alias": "grp"},
            "grp_a": {"acc,none": 0.25, "acc_stderr,none": "N/A"},
            "other": {"acc,none": 1.0},
        },
        "group_subtasks": {"grp": ["grp_a"]},
        "n-samples": {"gsm8k": {"original": 10, "effective": 4}},
    }
    assert flatten_lm_eval_results(results, ["gsm8k", "grp"]) == {
        "lm_eval/gsm8k/exact_match/strict-match": 0.5,
        "lm_eval/gsm8k/exact_match_stderr/strict-match": 0.1,
        "lm_eval/gsm8k/num_samples": 4.0,
        "lm_eval/grp_a/acc": 0.25,
    }
    assert "lm_eval/other/acc" in flatten_lm_eval_results(results)


def test_lm_eval_missing_says_how_to_install(monkeypatch, teacher):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match=r"pip install trl-edge\[eval\]"):
        run_lm_eval(teacher, ["gsm8k"])


def test_lm_eval_refuses_code_tasks_without_confirmation(teacher):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install trl-edge[eval]")
    with pytest.raises(ValueError, match="confirm_run_unsafe_code"):
        run_lm_eval(teacher, ["gsm8k", "humaneval"])


def own_choice_loglikelihoods(model, tokenizer, doc):
    """log p(choice | chat-templated question), summed over the choice's tokens, as lm-eval defines it.

    lm-eval moves the context's trailing whitespace (the template's final newline) into the continuation.
    """
    context = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"Question: {doc['question']}\nAnswer:"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    stripped = context.rstrip()
    context_ids = tokenizer(stripped, add_special_tokens=False)["input_ids"]
    scores = []
    with torch.no_grad():
        for choice in doc["choices"]:
            whole = tokenizer(stripped + context[len(stripped) :] + choice, add_special_tokens=False)["input_ids"]
            logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
            scores.append(sum(logprobs[t - 1, whole[t]].item() for t in range(len(context_ids), len(whole))))
    return scores


def test_lm_eval_local_task_offline_matches_own_loglikelihoods(tmp_path, tokenizer, teacher, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install trl-edge[eval]")
    monkeypatch.chdir(ROOT)  # the task's data_files are relative to the repository root
    out = tmp_path / "lm_eval.json"
    result = run_lm_eval(
        teacher, ["tiny_arithmetic_mc"], tokenizer=tokenizer, include_path=TASKS_DIR, batch_size=3, output_path=out
    )
    docs = [json.loads(line) for line in (TASKS_DIR / "tiny_arithmetic_mc.jsonl").read_text().splitlines()]
    own = [own_choice_loglikelihoods(teacher, tokenizer, doc) for doc in docs]
    accuracy = sum(max(range(len(s)), key=s.__getitem__) == d["label"] for s, d in zip(own, docs)) / len(docs)
    assert result["lm_eval/tiny_arithmetic_mc/acc"] == pytest.approx(accuracy)
    assert result["lm_eval/tiny_arithmetic_mc/num_samples"] == len(docs)
    assert set(result) >= {"lm_eval/tiny_arithmetic_mc/acc_norm", "lm_eval/tiny_arithmetic_mc/acc_stderr"}
    samples = sorted(json.loads(out.read_text())["samples"]["tiny_arithmetic_mc"], key=lambda s: s["doc_id"])
    for sample, scores in zip(samples, own):
        assert [ll for ll, _ in sample["filtered_resps"]] == pytest.approx(scores, abs=1e-3)


# ------------------------------------------------------------------------------------------------------ trl-edge eval
def test_eval_needs_something_to_evaluate():
    from trl_edge.scripts.eval import EvalArguments

    with pytest.raises(ValueError, match="Nothing to evaluate"):
        EvalArguments(model="m", output_dir="o")


def test_trl_edge_eval_end_to_end(tmp_path, tokenizer, monkeypatch, capsys):
    from trl_edge.cli.main import main

    checkpoint = save_tiny_checkpoint(str(tmp_path / "ckpt"))
    data = Dataset.from_list(arithmetic_examples(16))
    cache_teacher_logits(checkpoint, tokenizer, data, tmp_path / "cache", top_k=16, encoding="lossless")
    rows = [dict(r, kind=r["stage"]) for r in arithmetic_examples(6, seed=5)]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "model": checkpoint,
        "output_dir": str(tmp_path / "eval"),
        "dtype": "float32",
        "teacher_cache": str(tmp_path / "cache"),
        "generation_dataset": str(tmp_path / "gen.jsonl"),
        "max_new_tokens": 8,
        "batch_size": 8,
    }
    has_lm_eval = __import__("importlib").util.find_spec("lm_eval") is not None
    if has_lm_eval:
        config.update(tasks=["tiny_arithmetic_mc"], include_path=str(TASKS_DIR), limit=4)
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(ROOT)
    assert main(["eval", "--config", str(tmp_path / "eval.yaml"), "--batch_size", "3", "--device", "cpu"]) == 0

    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    info = report.pop("info")
    assert all(isinstance(v, float) for v in report.values())
    # the checkpoint is its own teacher: its fidelity to the cache is perfect
    assert report["fidelity/kl"] < 1e-5 and report["fidelity/top1_agreement"] == 1.0
    assert report["generation/num_examples"] == 6.0 and "generation/rouge_l/kind=reasoning" in report
    assert info["model"] == checkpoint and info["loading"]["dtype"] == "float32"
    expected = {"fidelity", "generation"} | ({"lm_eval"} if has_lm_eval else set())
    assert set(info["evaluations"]) == expected
    assert all(e["seconds"] >= 0 for e in info["evaluations"].values())
    assert len((tmp_path / "eval" / "generations.jsonl").read_text().splitlines()) == 6
    if has_lm_eval:
        assert report["lm_eval/tiny_arithmetic_mc/num_samples"] == 4.0
        assert (tmp_path / "eval" / "lm_eval_results.json").is_file()
    printed = capsys.readouterr().out
    assert "fidelity/kl" in printed and "metrics.json" in printed
    assert not math.isnan(report["generation/exact_match"])


def test_trl_edge_eval_help_lists_its_flags(capsys):
    from trl_edge.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--teacher_cache", "--generation_dataset", "--tasks", "--include_path", "--trust_remote_code"):
        assert flag in out
