"""Right-padded batches of variable-length token sequences, and the id they are padded with.

Every batch trl-edge scores (teacher scoring, difficulty scoring, cache collation) pads on the right the same way;
every batch it generates from (rollouts, evaluation) pads on the left, so that every prompt ends where the new
tokens start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad_token_id(tokenizer, default: int = 0) -> int:
    """The tokenizer's pad id, else its EOS id, else ``default``: padded positions are masked, any id will do."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None) if tokenizer is not None else None
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return default


def right_pad(
    sequences: Sequence, pad_value: int = 0, dtype: torch.dtype = torch.long, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(padded [B, W], attention_mask [B, W])`` with each sequence at the start of its row."""
    width = max((len(s) for s in sequences), default=0) if width is None else width
    padded = torch.full((len(sequences), width), pad_value, dtype=dtype)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        padded[row, :n] = torch.as_tensor(np.array(seq), dtype=dtype)  # a copy: memory-mapped rows are read-only
        mask[row, :n] = 1
    return padded, mask


def left_pad(
    sequences: Sequence, pad_value: int = 0, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(padded [B, W], attention_mask [B, W])`` with each sequence at the end of its row, where generation starts."""
    width = max((len(s) for s in sequences), default=0)
    padded = torch.full((len(sequences), width), pad_value, dtype=dtype)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        n = len(seq)
        if n:
            padded[row, width - n :] = torch.as_tensor(np.array(seq), dtype=dtype)
            mask[row, width - n :] = 1
    return padded, mask
