"""Tiny models, a locally built tokenizer and a synthetic task, for tests, examples and benchmarks.

Nothing here touches a model hub: the tokenizer is trained on the spot, the models are built from
configs, and the data is generated. ``python -m trl_edge.testing DIR`` saves a tiny checkpoint that
``from_pretrained(DIR)`` loads, which is what the tiny recipes point at.
"""

from __future__ import annotations

import random

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]

_CORPUS = [
    "Question: what is 12 + 7? Let us think step by step. Add the ones: 2 + 7 = 9. Answer: 19.",
    "The quick brown fox jumps over the lazy dog. A small model learns to reason before it answers fast.",
    "user assistant system Solve the problem. Compute the sum. Think carefully and answer.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) , . ? ! :",
    "Knowledge distillation trains a student on the distributions of a teacher, position by position.",
]


def build_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer with ChatML special tokens and a chat template with generation marks."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_model(tokenizer=None, arch: str = "llama", hidden_size: int = 32, num_layers: int = 2, seed: int = 0):
    """A randomly initialised causal LM (``llama``, ``qwen2`` or ``qwen3`` style) sized for the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "qwen3":
        config = Qwen3Config(**common, head_dim=hidden_size // common["num_attention_heads"])  # its default is 128
    else:
        raise ValueError(f"Unknown tiny architecture {arch!r}: use 'llama', 'qwen2' or 'qwen3'.")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def arithmetic_examples(n: int, seed: int = 0, max_digits: int = 4, fmt: str = "conversational") -> list[dict]:
    """Addition problems in two styles, the stages of the paper's curriculum SFT.

    Each example has a ``stage`` (``reasoning``: a step-by-step answer; ``direct``: the answer alone) and a
    ``difficulty`` (the number of digits). ``fmt`` is one of TRL's dataset formats: ``conversational``
    (prompt/completion as messages), ``prompt_completion`` (plain strings) or ``language_modeling`` (``text``).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        digits = rng.randint(1, max_digits)
        a, b = rng.randrange(10 ** (digits - 1), 10**digits), rng.randrange(10 ** (digits - 1), 10**digits)
        question = f"What is {a} + {b}?"
        stage = "reasoning" if i % 4 != 3 else "direct"  # reasoning : direct = 3 : 1, as in the paper
        if stage == "reasoning":
            answer = f"Let us think step by step. {a} + {b} = {a + b}. Answer: {a + b}."
        else:
            answer = f"Answer: {a + b}."
        row = {"stage": stage, "difficulty": digits}
        if fmt == "conversational":
            row["prompt"] = [{"role": "user", "content": question}]
            row["completion"] = [{"role": "assistant", "content": answer}]
        elif fmt == "prompt_completion":
            row["prompt"], row["completion"] = f"Question: {question}", f" {answer}"
        elif fmt == "language_modeling":
            row["text"] = f"Question: {question} {answer}"
        else:
            raise ValueError(f"Unknown format {fmt!r}.")
        rows.append(row)
    return rows


def exit_after(module, name: str, calls: int, code: int = 17) -> None:
    """Make ``module.name`` end the process abruptly (no cleanup, like a killed job) after ``calls`` calls: how the
    tests interrupt a writer after N sealed shards and check that a rerun resumes to the uninterrupted result."""
    import os

    original, done = getattr(module, name), []

    def call_then_maybe_exit(*args, **kwargs):
        result = original(*args, **kwargs)
        done.append(1)
        if len(done) >= calls:
            os._exit(code)
        return result

    setattr(module, name, call_then_maybe_exit)


def save_tiny_checkpoint(output_dir: str, arch: str = "llama", hidden_size: int = 64, num_layers: int = 2) -> str:
    """Save a tiny model and its tokenizer where ``from_pretrained(output_dir)`` finds them."""
    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer, arch=arch, hidden_size=hidden_size, num_layers=num_layers)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


if __name__ == "__main__":
    import sys

    print(save_tiny_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))
