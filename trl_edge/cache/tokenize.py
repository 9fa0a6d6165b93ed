"""Tokenize a dataset exactly as TRL's SFTTrainer does, so the cache holds the sequences the KD trainer trains on.

Rather than re-implementing SFT's preparation (chat template, EOS, completion/assistant masks, truncation,
dropping fully masked rows), this calls ``SFTTrainer._prepare_dataset`` itself on a stand-in for the trainer
that carries the three attributes it reads (``trl_edge.compat.prepare_dataset_like_sft``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from datasets import Dataset

from ..compat import prepare_dataset_like_sft


@dataclass
class SFTTokenization:
    """The SFTConfig fields that decide how a dataset is tokenized (same names and defaults as ``SFTConfig``)."""

    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    dataset_text_field: str = "text"
    dataset_num_proc: int | None = None

    @classmethod
    def from_config(cls, config) -> SFTTokenization:
        """Take the tokenization fields of an ``SFTConfig`` (or any object carrying them)."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)})


def prepare_like_sft(dataset: Dataset, processing_class, tokenization: SFTTokenization | None = None) -> Dataset:
    """``input_ids`` and ``labels`` (-100 where SFT computes no loss) for every row, in the dataset's order."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers
    from trl.data_utils import is_conversational

    tok = tokenization or SFTTokenization()
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there is nothing for the teacher to score.")
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    first = dataset[0]
    chat_template = None
    if tok.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        chat_template = get_training_chat_template(tokenizer)
    completion_only = tok.completion_only_loss
    if completion_only is None:
        completion_only = "prompt" in first and "completion" in first
    if tok.assistant_only_loss and not is_conversational(first):
        raise ValueError(
            "`assistant_only_loss=True` needs a conversational dataset (`messages` or prompt/completion)."
        )
    return prepare_dataset_like_sft(dataset, processing_class, vars(tok), tokenizer=tokenizer,
                                    chat_template=chat_template, completion_only_loss=completion_only)  # fmt: skip
