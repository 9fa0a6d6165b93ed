"""Sample a prompt set with the current student, token-exactly, into a sharded, sealed, resumable rollout set.

Each accelerate rank samples shards ``rank, rank + world, ...``, so the ranks cover every prompt exactly once, and
each shard's draw is seeded from ``(seed, shard)``, so a rerun after a kill, or a run on another number of ranks,
gives the same set.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..backends import check_backend
from ..batch import pad_token_id
from ..compat import tokenize_like_sft
from ..data_columns import passthrough_columns, table_bytes
from ..devices import partial_state
from ..model_identity import ModelIdentity, weights_hash
from ..model_loading import load_causal_lm, model_name
from ..sealed_files import atomic_write, prepare_output
from ..tokens import tokenizer_fingerprint
from .format import (
    METADATA_FILE,
    RolloutError,
    RolloutMetadata,
    SamplingSettings,
    seal_file,
    settings_in,
    shard_file,
    shard_is_sealed,
)
from .reader import RolloutSet


def tokenize_prompts(dataset, processing_class) -> list[list[int]]:
    """Each row's ``prompt`` (conversational or plain text) as SFTTrainer tokenizes a prompt: a conversational one
    through the chat template with the generation prompt, a string with the tokenizer itself."""
    from trl.data_utils import is_conversational

    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"Rollouts need a `prompt` column (TRL's prompt format: messages or text); the dataset has "
            f"{dataset.column_names}."
        )
    out = []
    for row in dataset:
        kwargs = {"add_generation_prompt": True} if is_conversational(row) else {}
        if row.get("tools") is not None:
            kwargs["tools"] = json.loads(row["tools"]) if isinstance(row["tools"], str) else row["tools"]
        ids = tokenize_like_sft(processing_class, row["prompt"], **kwargs)["input_ids"]
        out.append([int(i) for i in ids])
    return out


def _stop_tokens(model, tokenizer, extra) -> list[int]:
    ids = set(int(t) for t in extra or [])
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    for value in (eos, getattr(tokenizer, "eos_token_id", None)):
        if value is not None:
            ids.update(int(v) for v in (value if isinstance(value, list | tuple) else [value]))
    if not ids:
        raise ValueError("No stop token: the tokenizer has no EOS token and the model's generation_config none.")
    return sorted(ids)


def _shard_seed(seed: int, shard: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{shard}".encode(), digest_size=4).digest(), "little")


def generate_rollouts(
    policy,
    processing_class,
    dataset,
    output_dir: str | os.PathLike,
    *,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    max_new_tokens: int = 256,
    seed: int = 0,
    batch_size: int = 8,
    shard_size: int = 256,
    backend: str = "transformers",
    round: int | None = None,
    stop_token_ids: list[int] | None = None,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    tensor_parallel_size: int = 1,
    use_cpu: bool | None = None,
    overwrite: bool = False,
) -> RolloutSet:
    """Sample ``num_samples`` completions of every prompt of ``dataset`` from ``policy`` into ``output_dir``.

    Args:
        policy: the student (a model, or its name or path, loaded with ``trl_edge.model_loading.load_causal_lm``).
        processing_class: its tokenizer.
        dataset: a ``datasets.Dataset`` with a ``prompt`` column in any TRL prompt format (messages or text); its
            other scalar columns travel with each sample.
        output_dir: the rollout set's directory. Rerunning the same call resumes: sound shards are kept.
        num_samples, temperature, top_p, top_k, max_new_tokens, seed: the sampling (``temperature=0``: greedy).
        batch_size: prompts per ``generate`` call (length-grouped inside each shard; transformers backend).
        shard_size: prompts per shard: the unit of atomic writing, resuming and splitting across ranks.
        backend: ``transformers`` (default) or ``vllm`` (one ``LLM.generate`` per shard, ``tensor_parallel_size``).
        round: which round of on-policy distillation this is (recorded in the provenance).
        stop_token_ids: extra stop tokens (the tokenizer's EOS and the model's generation_config EOS always stop).
        use_cpu: sample on the CPU even if an accelerator is present.
        overwrite: discard an existing rollout set in ``output_dir`` instead of resuming it.
    """
    import trl_edge

    state = partial_state(use_cpu)
    check_backend(backend)
    directory = Path(output_dir)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if len(dataset) == 0:
        raise ValueError("The prompt dataset is empty: there is nothing to sample.")
    prompts = tokenize_prompts(dataset, processing_class)
    columns = passthrough_columns(dataset, exclude=("prompt_index", "sample_index", "finish_reason"))
    pad = pad_token_id(tokenizer)
    if backend == "transformers":
        model = load_causal_lm(
            policy, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation, device=state.device,
        )  # fmt: skip
        name = model_name(policy if isinstance(policy, str | os.PathLike) else model)
        policy_hash = weights_hash(model)
        identity = ModelIdentity(name, revision, f"weights:{policy_hash}")
    else:
        from ..backends.vllm_backend import VLLMEngine

        engine = VLLMEngine.load(
            policy, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size, seed=seed, logprobs_mode="processed_logprobs",
        )  # fmt: skip
        name, model = engine.name, None
        identity = ModelIdentity.of(policy, revision=revision)
        policy_hash = identity.weights.split(":", 1)[1] if identity.weights else "unknown"
    sampling = SamplingSettings(
        num_samples=num_samples, temperature=temperature, top_p=top_p, top_k=top_k or None,
        max_new_tokens=max_new_tokens, seed=seed, stop_token_ids=_stop_tokens(model, tokenizer, stop_token_ids),
    )  # fmt: skip
    sampling.check()
    prompts_hash = hashlib.blake2b(json.dumps(prompts).encode(), digest_size=16).hexdigest()
    meta = RolloutMetadata(
        policy=name, policy_hash=policy_hash, tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        prompts_fingerprint=prompts_hash, num_prompts=len(prompts), shard_size=int(shard_size),
        sampling=asdict(sampling), round=round, backend=backend, columns=columns,
        policy_identity=identity.to_dict(), trl_edge_version=trl_edge.__version__,
    )  # fmt: skip
    prepare_output(
        directory, METADATA_FILE, meta.settings(), settings_in, json.dumps(asdict(meta), indent=2, sort_keys=True)
        .encode(), overwrite=overwrite, is_main=state.is_main_process, error=RolloutError, what="rollouts",
    )  # fmt: skip
    state.wait_for_everyone()

    kept = {c: dataset[c] for c in columns}
    mine = range(state.process_index, meta.num_shards, state.num_processes)
    todo = [i for i in mine if not shard_is_sealed(directory, i)]
    total = sum(meta.shard_range(i)[1] - meta.shard_range(i)[0] for i in todo)
    with tqdm(total=total, desc=f"Sampling rollouts (rank {state.process_index})", unit="prompt",
              disable=not state.is_local_main_process) as bar:  # fmt: skip
        for index in todo:
            start, stop = meta.shard_range(index)
            shard_prompts = prompts[start:stop]
            if backend == "transformers":
                samples = _sample_shard(model, shard_prompts, sampling, pad, batch_size, _shard_seed(seed, index), bar)
            else:
                seeds = [_shard_seed(seed, index) + i for i in range(len(shard_prompts))]
                samples = engine.generate(shard_prompts, sampling, seeds)
                bar.update(len(shard_prompts))
            _write_shard(directory, index, start, shard_prompts, samples, kept, state.process_index)
    state.wait_for_everyone()
    return RolloutSet(directory)


def _sample_shard(model, prompts, sampling: SamplingSettings, pad, batch_size, seed, bar):
    """Samples of one shard's prompts, in length-grouped batches, each seeded from the shard's seed."""
    from ..backends.transformers_backend import sample_completions

    order = np.argsort([-len(p) for p in prompts], kind="stable")
    results: list = [None] * len(prompts)
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        out = sample_completions(
            model, [prompts[i] for i in batch], num_samples=sampling.num_samples, temperature=sampling.temperature,
            top_p=sampling.top_p, top_k=sampling.top_k, max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=sampling.stop_token_ids, pad_token_id=pad, seed=seed + b,
        )  # fmt: skip
        for i, samples in zip(batch, out):
            results[i] = samples
        bar.update(len(batch))
    return results


def _write_shard(directory: Path, index: int, start: int, prompts, samples, kept: dict, rank: int = 0) -> None:
    rows = {"prompt_index": [], "sample_index": [], "prompt_ids": [], "completion_ids": [], "logprobs": [],
            "finish_reason": [], **{c: [] for c in kept}}  # fmt: skip
    for offset, (prompt, per_prompt) in enumerate(zip(prompts, samples)):
        for j, (ids, logprobs, reason) in enumerate(per_prompt):
            rows["prompt_index"].append(start + offset)
            rows["sample_index"].append(j)
            rows["prompt_ids"].append(np.asarray(prompt, dtype=np.int32))
            rows["completion_ids"].append(np.asarray(ids, dtype=np.int32))
            rows["logprobs"].append(np.asarray(logprobs, dtype=np.float32))
            rows["finish_reason"].append(reason)
            for c in kept:
                rows[c].append(kept[c][start + offset])
    import pyarrow as pa

    typed = {
        "prompt_index": pa.array(rows.pop("prompt_index"), pa.int64()),
        "sample_index": pa.array(rows.pop("sample_index"), pa.int32()),
        **{k: pa.array(rows.pop(k), pa.list_(pa.int32())) for k in ("prompt_ids", "completion_ids")},
        "logprobs": pa.array(rows.pop("logprobs"), pa.list_(pa.float32())),
        **rows,
    }
    data = table_bytes(typed)
    atomic_write(directory / shard_file(index), data)
    seal = {"shard": index, "rows": len(typed["prompt_index"]), "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "written_by": rank}  # fmt: skip
    atomic_write(directory / seal_file(index), json.dumps(seal, indent=2).encode())
