"""Score a dataset with the teacher once and write its top-k next-token distributions to a sharded cache.

Each accelerate rank takes shards ``rank, rank + world, ...`` of one plan and writes them itself; together they
form one cache. A shard is written atomically and sealed with its sha256; a rerun of the same call checks every
sealed shard against its seal, keeps the sound ones and rewrites the rest, so a killed job loses at most the shards
it was writing, and a corrupted one is never kept.

The cache's vocabulary is the tokenizer's. A teacher whose LM head is padded past the tokenizer (Qwen2.5-7B: 152064
outputs for 151665 tokens) never has a padding row cached as a candidate; the probability it puts there stays in
the tail bucket, and any student whose head covers the tokenizer can train on the cache (its own padding rows are
part of its tail). This is said when caching starts, not discovered when training does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save
from tqdm.auto import tqdm

from ..backends import check_backend
from ..backends.transformers_backend import PositionScorer
from ..batch import pad_token_id
from ..clock import Clock
from ..data_columns import table_bytes
from ..devices import partial_state
from ..model_identity import ModelIdentity, weights_hash
from ..model_loading import load_causal_lm, model_name
from ..sealed_files import is_sealed, prepare_output
from ..tokens import tokenizer_fingerprint, tokenizer_vocab_size
from .encoding import get_encoding
from .format import (
    METADATA_FILE,
    CacheError,
    CacheMetadata,
    atomic_write,
    columns_name,
    content_fingerprint,
    sample_crc,
    seal_name,
    shard_name,
)
from .plan import ScoringPlan, plan_from_dataset
from .reader import TeacherLogitCache
from .tokenize import SFTTokenization

logger = logging.getLogger(__name__)


def _cache_vocabulary(tokenizer, head_size: int, teacher: str, say) -> int:
    """The ids the cache ranges over: the tokenizer's, checked against the teacher's head (and said, if padded)."""
    vocab = tokenizer_vocab_size(tokenizer)
    if vocab > head_size:
        raise CacheError(
            f"The tokenizer has {vocab} tokens but the teacher {teacher} has only {head_size} outputs: it cannot "
            "score every id the tokenizer produces. Use the teacher's own tokenizer (`--tokenizer`)."
        )
    if head_size > vocab:
        say(
            f"Teacher {teacher}: its LM head has {head_size} outputs for {vocab} tokenizer ids; the "
            f"{head_size - vocab} rows past the tokenizer are padding no text contains. They are never cached as "
            f"candidates, and their probability stays in the tail bucket. Any student whose head has >= {vocab} "
            "outputs can train on this cache."
        )
    return vocab


def _is_sealed(directory: Path, index: int, with_columns: bool) -> bool:
    """Whether shard ``index`` is complete and sound: its files have the sha256 their seal recorded."""
    files = {"sha256": directory / shard_name(index)}
    if with_columns:
        files["columns_sha256"] = directory / columns_name(index)
    return is_sealed(directory / seal_name(index), files)


def cache_teacher_logits(
    teacher,
    processing_class,
    dataset,
    output_dir: str | os.PathLike,
    *,
    top_k: int = 64,
    encoding: str = "compact",
    batch_size: int = 8,
    shard_size: int = 1024,
    tokenization: SFTTokenization | None = None,
    dtype: str | torch.dtype = "auto",
    teacher_revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
    overwrite: bool = False,
    use_cpu: bool | None = None,
    backend: str = "transformers",
    tensor_parallel_size: int = 1,
    timings: dict[str, float] | None = None,
) -> TeacherLogitCache:
    """Run the teacher once over ``dataset`` and cache its top-k next-token distributions in ``output_dir``.

    Args:
        teacher: a causal LM, or its name or path (loaded with ``trl_edge.model_loading.load_causal_lm``: bf16 where
            the device supports it, fp32 on CPU, unless ``dtype`` says otherwise). Its LM head always runs in fp32.
        processing_class: the tokenizer shared by teacher and student.
        dataset: a [`~trl_edge.RolloutSet`] (its exact token ids are scored: nothing is decoded or re-tokenized, a
            truncated sample stays truncated, its provenance and columns travel into the cache), or a
            ``datasets.Dataset`` in any TRL format, tokenized exactly as SFTTrainer / the KD trainer would
            (``tokenization`` holds the SFTConfig fields that matter). The dataset's own scalar columns (a stage
            label, an id) are kept next to each sample.
        output_dir: the cache directory. Rerunning the same call resumes: sound finished shards are kept.
        top_k: how many of the teacher's most likely next tokens to keep at each scored position.
        encoding: ``compact`` (default, a few bytes per id, bounded error) or ``lossless`` (bit-exact float32).
        batch_size: sequences per teacher forward pass (length-grouped inside each shard).
        shard_size: samples per shard, the unit of atomic writing, resuming and multi-rank splitting.
        dtype, teacher_revision, trust_remote_code, device_map, attn_implementation: how a named teacher is loaded
            (``device_map="auto"`` spreads a teacher too large for one device over all visible ones).
        overwrite: discard an existing cache in ``output_dir`` instead of resuming it.
        use_cpu: run on the CPU even if an accelerator is present (default: only when there is none).
        backend: ``transformers`` (default) or ``vllm`` (``pip install trl-edge[vllm]``; one ``LLM.generate`` call
            per shard; ``tensor_parallel_size`` GPUs per teacher).
        timings: if given, receives the seconds this rank spent in the teacher's forward (``forward``), top-k
            selection (``topk``), encoding and checksums (``encode``) and writing shards (``write``).

    Returns:
        The finished cache, opened as a [`TeacherLogitCache`].
    """
    import trl_edge

    state = partial_state(use_cpu)
    directory = Path(output_dir)
    codec = get_encoding(encoding)
    check_backend(backend)
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}.")
    plan = plan_from_dataset(dataset, processing_class, tokenization)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    pad = pad_token_id(tokenizer)
    say = state.print if state.is_main_process else (lambda *a, **k: None)
    if backend == "transformers":
        model = load_causal_lm(
            teacher, revision=teacher_revision, dtype=dtype, trust_remote_code=trust_remote_code,
            device_map=device_map, attn_implementation=attn_implementation,
            device=None if device_map is not None else state.device,
        )  # fmt: skip
        model.eval()
        name = model_name(teacher if isinstance(teacher, str | os.PathLike) else model)
        identity = ModelIdentity(name, teacher_revision, f"weights:{weights_hash(model)}")
        head_size = model.get_output_embeddings().weight.shape[0]
        vocab = _cache_vocabulary(tokenizer, head_size, name, say)
        position_scorer = PositionScorer(model, top_k, support_size=vocab)
        top_k = position_scorer.top_k

        def scorer(sequences, labels):
            return position_scorer(sequences, labels, pad, timings=timings)

    else:
        from ..backends.vllm_backend import VLLMEngine

        engine = VLLMEngine.load(
            teacher, revision=teacher_revision, dtype=dtype, trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size, max_logprobs=top_k + 8,
        )  # fmt: skip
        name, head_size = engine.name, engine.vocab_size
        identity = ModelIdentity.of(teacher, revision=teacher_revision)
        vocab = _cache_vocabulary(tokenizer, head_size, name, say)
        top_k = min(top_k, vocab)

        def scorer(sequences, labels):
            return engine.score(sequences, labels, top_k, support_size=vocab)

        batch_size = max(batch_size, shard_size)  # one LLM.generate per shard: vLLM's scheduler does the batching

    meta = CacheMetadata(
        teacher=str(name),
        teacher_revision=teacher_revision,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=int(vocab),
        teacher_head_size=int(head_size),
        top_k=int(top_k),
        encoding=codec.name,
        num_samples=len(plan),
        shard_size=int(shard_size),
        content_fingerprint=content_fingerprint(plan.sample_ids),
        columns=list(plan.columns),
        source=plan.source,
        tokenization=plan.tokenization,
        teacher_identity=identity.to_dict(),
        source_path=plan.source_path,
        trl_edge_version=trl_edge.__version__,
    )
    prepare_output(
        directory, METADATA_FILE, meta.settings(), lambda d: CacheMetadata.load(d).settings(), meta.to_json().encode(),
        overwrite=overwrite, is_main=state.is_main_process, error=CacheError, what="a cache",
    )  # fmt: skip
    state.wait_for_everyone()
    if not (directory / METADATA_FILE).is_file():
        raise CacheError(f"{directory}/{METADATA_FILE} is missing after set-up: is output_dir on a shared filesystem?")

    mine = range(state.process_index, meta.num_shards, state.num_processes)
    todo = [i for i in mine if not _is_sealed(directory, i, bool(meta.columns))]
    total = sum(meta.shard_range(i)[1] - meta.shard_range(i)[0] for i in todo)
    with tqdm(total=total, desc=f"Caching teacher logits (rank {state.process_index})", unit="sample",
              disable=not state.is_local_main_process) as bar:  # fmt: skip
        for index in todo:
            _write_shard(scorer, codec, plan, meta, directory, index, batch_size, bar, state, Clock(timings))
    state.wait_for_everyone()
    return TeacherLogitCache(directory, tokenizer=tokenizer)


def _write_shard(scorer, codec, plan: ScoringPlan, meta, directory, index, batch_size, bar, state, clock) -> None:
    start, stop = meta.shard_range(index)
    pairs = [plan.sequence(i) for i in range(start, stop)]
    sequences, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    order = np.argsort([-len(s) for s in sequences], kind="stable")
    results: list = [None] * len(sequences)
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        scored = scorer([sequences[i] for i in batch], [labels[i] for i in batch])
        for i, (ids, values, token_lp) in zip(batch, scored):
            if not (np.isfinite(values).all() and np.isfinite(token_lp).all()):
                raise CacheError(
                    f"The teacher produced NaN/inf log-probs for sample {start + int(i)} (shard {index}). Check the "
                    "teacher's dtype (fp16 overflows easily: try bf16 or fp32) and that the sample is valid."
                )
            results[i] = (ids, values, token_lp)
        bar.update(len(batch))

    clock.start()
    blobs, crcs = [], []
    sample_ids = plan.sample_ids[start:stop]
    for seq, lab, sid, (ids, values, token_lp) in zip(sequences, labels, sample_ids, results):
        blob = np.frombuffer(codec.encode(ids, values, meta.vocab_size), dtype=np.uint8)
        blobs.append(blob)
        crcs.append(sample_crc(seq, lab, token_lp, blob, sid))
    clock.lap("encode")

    def offsets(parts):
        return np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)

    tensors = {
        "input_ids": np.concatenate(sequences).astype(np.int32),
        "labels": np.concatenate(labels).astype(np.int32),
        "token_offsets": offsets(sequences),
        "token_logprobs": np.concatenate([r[2] for r in results]).astype(np.float32),
        "position_offsets": offsets([r[2] for r in results]),
        "blob": np.concatenate(blobs) if blobs else np.zeros(0, np.uint8),
        "blob_offsets": offsets(blobs),
        "sample_ids": np.ascontiguousarray(sample_ids),
        "crc32": np.asarray(crcs, dtype=np.uint32),
    }
    data = save(tensors)  # no header metadata: its key order varies between processes, the bytes must not
    atomic_write(directory / shard_name(index), data)
    seal = {
        "shard": index,
        "start": start,
        "stop": stop,
        "num_tokens": int(tensors["input_ids"].size),
        "num_positions": int(tensors["token_logprobs"].size),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "written_by": {"rank": state.process_index, "world_size": state.num_processes},
    }
    if meta.columns:
        extra = table_bytes({name: values[start:stop] for name, values in plan.columns.items()})
        atomic_write(directory / columns_name(index), extra)
        seal["columns_sha256"] = hashlib.sha256(extra).hexdigest()
    atomic_write(directory / seal_name(index), json.dumps(seal, indent=2).encode())
    clock.lap("write")
