"""On-policy data: the current student samples completions of a prompt set, token-exactly, resumably.

``generate_rollouts`` writes a **rollout set**: a directory of Arrow shards (never pickle), each written atomically
and sealed with its sha256, plus ``metadata.json`` with the provenance (the policy and a hash of its weights, the
round, the sampling settings and seed, the trl-edge version). Per sample it keeps the prompt's token ids and the
exact sampled completion ids (nothing is decoded and re-tokenized), why the sample ended (``eos``: the stop token
the model sampled is its last token; ``length``: cut at ``max_new_tokens``, no end token added), the log-prob of
every sampled token under the sampling distribution (what an importance weight or off-policy correction needs), the
prompt and sample index, and the prompt dataset's own columns (a stage label, an id).

Shard ``i`` holds the samples of prompts ``[i * shard_size, (i + 1) * shard_size)``; each accelerate rank samples
shards ``rank, rank + world, ...``, so the ranks cover every prompt exactly once, and each shard's draw is seeded
from ``(seed, shard)``, so a rerun after a kill, or a run on another number of ranks, gives the same set.
``cache_teacher_logits`` scores a rollout set's exact ids (``RolloutSet.scoring_plan``).
"""

from ..model_identity import weights_hash
from .format import (
    METADATA_FILE,
    ROLLOUT_FORMAT_VERSION,
    RolloutError,
    RolloutMetadata,
    SamplingSettings,
    seal_file,
    shard_file,
)
from .reader import RolloutSet
from .writer import generate_rollouts, tokenize_prompts

__all__ = [
    "METADATA_FILE",
    "ROLLOUT_FORMAT_VERSION",
    "RolloutError",
    "RolloutMetadata",
    "RolloutSet",
    "SamplingSettings",
    "generate_rollouts",
    "seal_file",
    "shard_file",
    "tokenize_prompts",
    "weights_hash",
]
