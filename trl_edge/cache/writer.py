"""Score a dataset with the teacher once and write its top-k next-token distributions to a sharded cache.

Each accelerate rank takes shards ``rank, rank + world, ...`` of one plan and writes them itself; together they
form one cache. A shard is written atomically and sealed; a rerun of the same command skips sealed shards, so a
killed job loses at most the shards it was writing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save
from tqdm.auto import tqdm

from ..devices import partial_state
from .encoding import get_encoding
from .format import (
    METADATA_FILE,
    CacheError,
    CacheMetadata,
    atomic_write,
    sample_crc,
    sample_id,
    scored_positions,
    seal_name,
    shard_name,
    tokenizer_fingerprint,
)
from .reader import TeacherLogitCache
from .tokenize import SFTTokenization, prepare_like_sft


class _Clock:
    """Adds elapsed seconds to ``timings[key]`` at each lap (synchronising the device first); a no-op without."""

    def __init__(self, timings: dict[str, float] | None, device=None):
        self.timings, self.device = timings, device
        self.last = 0.0

    def start(self) -> None:
        if self.timings is not None:
            self._sync()
            self.last = time.perf_counter()

    def lap(self, key: str) -> None:
        if self.timings is not None:
            self._sync()
            now = time.perf_counter()
            self.timings[key] = self.timings.get(key, 0.0) + now - self.last
            self.last = now

    def _sync(self) -> None:
        if self.device is not None and self.device.type != "cpu":
            getattr(torch, self.device.type).synchronize()


def _output_layer_is_plain(model) -> bool:
    """Whether logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scaling after the head)."""
    config = model.config
    return not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


@torch.no_grad()
def score_batch(model, sequences: list[np.ndarray], labels: list[np.ndarray], top_k: int, pad_token_id: int = 0,
                chunk_size: int = 2048, timings: dict[str, float] | None = None):  # fmt: skip
    """Teacher top-k log-probs (temperature 1) at the scored positions of each sequence.

    Returns, per sequence, ``(topk_ids int64 [P, k], topk_logprobs float32 [P, k], token_logprobs float32 [P])``
    where P = number of positions ``t`` with ``labels[t + 1] != -100``. Only the scored positions go through the
    LM head, in chunks, so ``[batch, seq, vocab]`` logits are never materialised. ``timings``, if given, adds the
    seconds spent in the teacher's own forward (``forward``: backbone, LM head, log-softmax) and in choosing what
    to keep (``topk``: top-k, gathering the actual token's log-prob, copying to the host).
    """
    device = next(model.parameters()).device
    clock = _Clock(timings, device)
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    rows, cols = [], []
    for row, lab in enumerate(labels):
        pos = scored_positions(lab)
        rows.append(np.full(len(pos), row))
        cols.append(pos)
    rows_t = torch.as_tensor(np.concatenate(rows), dtype=torch.long, device=device)
    cols_t = torch.as_tensor(np.concatenate(cols), dtype=torch.long, device=device)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    clock.start()
    if _output_layer_is_plain(model):
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        selected = hidden[rows_t, cols_t]
        head = model.get_output_embeddings()
    else:
        selected = model(input_ids=input_ids, attention_mask=attention_mask).logits[rows_t, cols_t]
        head = None
    targets = input_ids[rows_t, cols_t + 1]
    ids, values, token_lp = [], [], []
    for start in range(0, selected.shape[0], chunk_size):
        chunk = selected[start : start + chunk_size]
        logits = (head(chunk) if head is not None else chunk).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        clock.lap("forward")
        top = logprobs.topk(top_k, dim=-1)
        ids.append(top.indices.cpu())
        values.append(top.values.cpu())
        token_lp.append(logprobs.gather(-1, targets[start : start + chunk_size, None]).squeeze(-1).cpu())
        clock.lap("topk")
    k = min(top_k, model.config.get_text_config().vocab_size)
    ids = torch.cat(ids) if ids else torch.zeros((0, k), dtype=torch.long)
    values = torch.cat(values) if values else torch.zeros((0, k))
    token_lp = torch.cat(token_lp) if token_lp else torch.zeros(0)
    counts = [len(c) for c in cols]
    return [
        (i.numpy().astype(np.int64), v.numpy().astype(np.float32), t.numpy().astype(np.float32))
        for i, v, t in zip(ids.split(counts), values.split(counts), token_lp.split(counts))
    ]


def _load_teacher(teacher, revision, dtype, device):
    if not isinstance(teacher, str | os.PathLike):
        return teacher
    from transformers import AutoModelForCausalLM

    if dtype == "auto":
        dtype = torch.bfloat16 if device.type != "cpu" and _bf16_supported(device) else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return AutoModelForCausalLM.from_pretrained(teacher, revision=revision, dtype=dtype).to(device)


def _bf16_supported(device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    backend = getattr(torch, device.type, None)
    check = getattr(backend, "is_bf16_supported", None)
    return bool(check()) if check is not None else False


def _is_sealed(directory: Path, index: int) -> bool:
    seal, shard = directory / seal_name(index), directory / shard_name(index)
    if not (seal.is_file() and shard.is_file()):
        return False
    try:
        return json.loads(seal.read_text())["size"] == shard.stat().st_size
    except (json.JSONDecodeError, KeyError):
        return False


def _prepare_output(directory: Path, meta: CacheMetadata, overwrite: bool, is_main: bool) -> None:
    existing = directory / METADATA_FILE
    if existing.is_file() and not overwrite:
        old = CacheMetadata.load(directory)
        new_settings, old_settings = meta.settings(), old.settings()
        diff = {k: (old_settings.get(k), v) for k, v in new_settings.items() if old_settings.get(k) != v}
        if diff:
            changes = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise CacheError(
                f"{directory} already holds a cache made with other settings ({changes}). Use another "
                "output_dir, or pass overwrite=True (`--overwrite`) to start it again."
            )
        return
    if is_main:
        if existing.is_file() and overwrite:
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write(directory / METADATA_FILE, meta.to_json().encode())


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
    overwrite: bool = False,
    use_cpu: bool | None = None,
    backend: str = "transformers",
    timings: dict[str, float] | None = None,
) -> TeacherLogitCache:
    """Run the teacher once over ``dataset`` and cache its top-k next-token distributions in ``output_dir``.

    Args:
        teacher: a causal LM, or its name or path (loaded with ``from_pretrained``; bf16 where the device supports
            it, fp32 on CPU, unless ``dtype`` says otherwise).
        processing_class: the tokenizer shared by teacher and student.
        dataset: a ``datasets.Dataset`` in any TRL format (language modeling, prompt-completion, conversational);
            tokenized exactly as SFTTrainer / the KD trainer would (``tokenization`` holds the SFTConfig fields
            that matter: ``max_length``, ``completion_only_loss``, ``assistant_only_loss``, ...).
        output_dir: the cache directory. Rerunning the same call resumes: finished shards are kept.
        top_k: how many of the teacher's most likely next tokens to keep at each scored position.
        encoding: ``compact`` (default, a few bytes per id, bounded error) or ``lossless`` (bit-exact float32).
        batch_size: sequences per teacher forward pass (length-grouped inside each shard).
        shard_size: samples per shard, the unit of atomic writing, resuming and multi-rank splitting.
        overwrite: discard an existing cache in ``output_dir`` instead of resuming it.
        use_cpu: run on the CPU even if an accelerator is present (default: only when there is none).
        backend: ``transformers`` (default) or ``vllm`` (``pip install trl-edge[vllm]``; the teacher's prompt
            log-probs from a ``vllm.LLM``, or from a name/path loaded into one).
        timings: if given, receives the seconds this rank spent in the teacher's forward (``forward``), top-k
            selection (``topk``), encoding and checksums (``encode``) and writing shards (``write``).

    Returns:
        The finished cache, opened as a [`TeacherLogitCache`].
    """
    import trl_edge

    state = partial_state(use_cpu)
    directory = Path(output_dir)
    codec = get_encoding(encoding)
    if backend not in ("transformers", "vllm"):
        raise ValueError(f"Unknown backend {backend!r}: use 'transformers' or 'vllm'.")
    if backend == "vllm":
        from .vllm_backend import require_vllm

        require_vllm()  # before any work: fail at once where vLLM is absent
    if top_k < 1:
        raise ValueError(f"`top_k` must be >= 1, got {top_k}.")
    tokenization = tokenization or SFTTokenization()
    prepared = prepare_like_sft(dataset, processing_class, tokenization)
    if len(prepared) == 0:
        raise ValueError(
            "No sample is left after tokenization (all fully masked or truncated away): nothing to score."
        )
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if backend == "transformers":
        model = _load_teacher(teacher, teacher_revision, dtype, state.device)
        model.eval()
        vocab_size = model.get_output_embeddings().weight.shape[0]
        top_k = min(top_k, vocab_size)
        name = teacher if isinstance(teacher, str | os.PathLike) else model.config._name_or_path

        def scorer(sequences, labels):
            return score_batch(model, sequences, labels, top_k, pad, timings=timings)

    else:
        from .vllm_backend import load_vllm_teacher, score_with_vllm

        llm = load_vllm_teacher(teacher, teacher_revision, dtype, top_k) if isinstance(teacher, str) else teacher
        vocab_size = llm.llm_engine.model_config.get_vocab_size()
        name = llm.llm_engine.model_config.model

        def scorer(sequences, labels):
            return score_with_vllm(llm, sequences, labels, top_k)

    meta = CacheMetadata(
        teacher=str(name),
        teacher_revision=teacher_revision,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        vocab_size=int(vocab_size),
        top_k=int(top_k),
        encoding=codec.name,
        num_samples=len(prepared),
        shard_size=int(shard_size),
        dataset_fingerprint=getattr(prepared, "_fingerprint", None),
        tokenization=vars(tokenization).copy(),
        trl_edge_version=trl_edge.__version__,
    )
    _prepare_output(directory, meta, overwrite, state.is_main_process)
    state.wait_for_everyone()
    if not (directory / METADATA_FILE).is_file():
        raise CacheError(f"{directory}/{METADATA_FILE} is missing after set-up: is output_dir on a shared filesystem?")

    todo = [
        i for i in range(state.process_index, meta.num_shards, state.num_processes) if not _is_sealed(directory, i)
    ]
    total = sum(meta.shard_range(i)[1] - meta.shard_range(i)[0] for i in todo)
    with tqdm(total=total, desc=f"Caching teacher logits (rank {state.process_index})", unit="sample",
              disable=not state.is_local_main_process) as bar:  # fmt: skip
        for index in todo:
            _write_shard(scorer, codec, prepared, meta, directory, index, batch_size, bar, state, _Clock(timings))
    state.wait_for_everyone()
    return TeacherLogitCache(directory, tokenizer=tokenizer)


def _write_shard(scorer, codec, prepared, meta, directory, index, batch_size, bar, state, clock) -> None:
    start, stop = meta.shard_range(index)
    rows = prepared.select(range(start, stop))
    sequences = [np.asarray(x, dtype=np.int32) for x in rows["input_ids"]]
    labels = [np.asarray(x, dtype=np.int32) for x in rows["labels"]]
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
    blobs, crcs, ids_out = [], [], []
    for seq, lab, (ids, values, token_lp) in zip(sequences, labels, results):
        blob = np.frombuffer(codec.encode(ids, values, meta.vocab_size), dtype=np.uint8)
        blobs.append(blob)
        crcs.append(sample_crc(seq, lab, token_lp, blob))
        ids_out.append(np.frombuffer(sample_id(seq, lab), dtype=np.uint8))

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
        "sample_ids": np.stack(ids_out),
        "crc32": np.asarray(crcs, dtype=np.uint32),
    }
    data = save(tensors)  # no header metadata: its key order varies between processes, the bytes must not
    shard_path = directory / shard_name(index)
    atomic_write(shard_path, data)
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
    atomic_write(directory / seal_name(index), json.dumps(seal, indent=2).encode())
    clock.lap("write")
