"""Shared fixtures: a locally built tokenizer, tiny Llama/Qwen2 models and small datasets in TRL's formats.

Everything runs offline: HF_HUB_OFFLINE is set before transformers/datasets are imported.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
# Tiny models gain nothing from more threads, and on a 2-core machine a test and the processes it starts would
# oversubscribe the cores; one thread each keeps the suite fast and steady.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request, tokenizer):
    return build_tiny_model(tokenizer, arch=request.param)


@pytest.fixture
def llama_model(tokenizer):
    return build_tiny_model(tokenizer, arch="llama")


def make_dataset(n=32, fmt="conversational", seed=0):
    from datasets import Dataset

    return Dataset.from_list(arithmetic_examples(n, seed=seed, fmt=fmt))


@pytest.fixture
def dataset():
    return make_dataset()


def training_args(tmp_path, config_class=None, **overrides):
    """A trainer config (CurriculumSFTConfig unless told) sized for tiny CPU runs: fp32, no reports or checkpoints."""
    from trl_edge import CurriculumSFTConfig

    kwargs = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        fp16=False,
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        max_length=128,
    )
    kwargs.update(overrides)
    return (config_class or CurriculumSFTConfig)(**kwargs)
