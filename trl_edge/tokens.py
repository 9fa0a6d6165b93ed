"""What token ids mean and which of them carry loss: the pieces every scorer, cache and rollout set agree on.

``tokenizer_fingerprint`` names a tokenizer's ids (a cache, a rollout set and a student must agree on it);
``scored_positions`` says where a teacher's next-token distribution is kept. The backends that score and the
cache that stores the scores both read them here, so neither imports the other for them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what token ids mean: the vocabulary and the added tokens (ids and strings), nothing else.

    Which token serves as padding or EOS is left out: TRL sets ``pad_token = eos_token`` on a tokenizer without one,
    and that changes no id.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    added = sorted((int(i), str(getattr(t, "content", t))) for i, t in tokenizer.added_tokens_decoder.items())
    payload = json.dumps({"vocab": vocab, "added": added}, ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:32]


def tokenizer_vocab_size(tokenizer) -> int:
    """How many ids the tokenizer can produce (its vocabulary with added tokens), whatever a model's head holds."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    return len(tokenizer)


def scored_positions(labels: np.ndarray) -> np.ndarray:
    """Positions ``t`` whose next token carries loss: where the teacher's distribution is kept."""
    return np.flatnonzero(np.asarray(labels)[1:] != -100)
