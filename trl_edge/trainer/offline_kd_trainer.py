"""OfflineOnPolicyKDTrainer: distil from teacher logit caches, at the speed of SFT.

The training data is the caches themselves (the exact sequences the teacher scored, with its top-k distribution at
every completion position); several caches (rounds of student rollouts, teacher-written answers) mix by weight. The
student's LM head and the divergence run chunk by chunk over the scored positions only, so ``[batch, seq, vocab]``
logits are never built; no teacher is loaded.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from transformers.trainer_utils import IntervalStrategy

from ..backends.transformers_backend import check_plain_lm_head
from ..batch import pad_token_id
from ..cache.format import CacheError
from ..cache.reader import TeacherLogitCache, collate_samples
from ..compat import count_train_tokens, log_trainer_metric
from ..losses import chunked_kd_loss
from .cache_sources import check_one_teacher, eligible_rows, resolve_sources, truncated_rows
from .curriculum_edge_trainer import CurriculumEdgeTrainer
from .offline_kd_config import OfflineOnPolicyKDConfig
from .onpolicy_drift import OnPolicyDrift, OnPolicyDriftCallback
from .sharded_head import gathered_zero3, head_for_loss, run_inside_forward, sharding_of
from .teacher_difficulty import TEACHER_DIFFICULTY_SOURCES, TeacherDifficultyScorer  # noqa: F401  (its home before)

TEACHER_KEYS = ("teacher_mask", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_logprobs")
WEIGHT_KEYS = ("kd_weights", "ce_weights")
SOURCES_FILE = "distillation_sources.json"  # in output_dir: each cache, who wrote it, its weights; the drift


class CachedKDCollator:
    """Builds batches from teacher caches: rows carry ``cache_id`` (which cache) and ``cache_index`` (which sample).

    A batch may mix samples of several caches (they must share ``top_k``). With ``loss_weights`` (one
    ``(kd_weight, ce_weight)`` per cache) it adds ``kd_weights`` / ``ce_weights`` per position; with
    ``mask_truncated`` the last that many scored positions of a row marked ``truncated`` carry no loss.
    """

    def __init__(self, caches: list[TeacherLogitCache], pad_token_id: int = 0,
                 loss_weights: list[tuple[float, float]] | None = None, mask_truncated: int = 0):  # fmt: skip
        self.caches, self.pad_token_id = caches, pad_token_id
        self.loss_weights, self.mask_truncated = loss_weights, mask_truncated

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        samples = [self.caches[int(e["cache_id"])][int(e["cache_index"])] for e in examples]
        batch = collate_samples(samples, self.caches[0].metadata.top_k, self.pad_token_id)
        if self.mask_truncated:
            for row, (e, sample) in enumerate(zip(examples, samples)):
                if e.get("truncated"):
                    last = sample["positions"][-self.mask_truncated :]
                    batch["teacher_mask"][row, last] = False
                    batch["labels"][row, last + 1] = -100
        if self.loss_weights is not None:
            weights = torch.tensor([self.loss_weights[int(e["cache_id"])] for e in examples], dtype=torch.float32)
            shape = batch["teacher_mask"].shape
            batch["kd_weights"] = weights[:, :1].expand(shape).contiguous()
            batch["ce_weights"] = weights[:, 1:].expand(shape).contiguous()
        return batch


def open_cache(cache) -> TeacherLogitCache:
    if isinstance(cache, TeacherLogitCache):
        return cache
    if isinstance(cache, str | os.PathLike):
        return TeacherLogitCache(cache)
    raise TypeError(
        f"Expected a teacher cache (a `TeacherLogitCache` or the path of one), got {type(cache).__name__}. Make one "
        "with `trl-edge cache` or `trl_edge.cache_teacher_logits`."
    )


def mixture_rows(sizes: list[int], weights: list[float] | None, seed: int) -> list[np.ndarray]:
    """Which samples of each cache make up the training set, so that cache ``c`` holds ``weights[c]`` of it.

    The mixture is as large as the caches together; a cache with more than its share is subsampled, one with less
    is repeated (each sample once before any twice), deterministically from ``seed``.
    """
    if weights is None:
        return [np.arange(n) for n in sizes]
    total, weights = sum(sizes), np.asarray(weights, dtype=np.float64) / sum(weights)
    counts = np.floor(weights * total).astype(int)
    counts[np.argsort(-(weights * total - counts))[: total - counts.sum()]] += 1  # largest remainders
    rng = np.random.default_rng(seed)
    rows = []
    for n, count in zip(sizes, counts):
        if count and not n:
            raise ValueError("A teacher cache with a positive weight is empty.")
        repeats = [rng.permutation(n) for _ in range(-(-count // n))] if count else []
        rows.append(np.concatenate(repeats)[:count] if repeats else np.zeros(0, dtype=np.int64))
    return rows


def index_dataset(caches: list[TeacherLogitCache], rows: list[np.ndarray] | None = None,
                  first_id: int = 0) -> Dataset:  # fmt: skip
    """One row per training sample: ``cache_id``, ``cache_index``, ``truncated`` (cut at ``max_new_tokens``) plus
    the cache's own index columns."""
    parts = []
    for cache_id, cache in enumerate(caches):
        part = cache.to_dataset(show_progress=True)
        part = part.add_column("truncated", truncated_rows(cache))
        if rows is not None:
            part = part.select(rows[cache_id])
        parts.append(part.add_column("cache_id", np.full(len(part), first_id + cache_id, dtype=np.int64)))
    if len(parts) == 1:
        return parts[0]
    shared = set.intersection(*(set(p.column_names) for p in parts))
    return concatenate_datasets([p.select_columns([c for c in p.column_names if c in shared]) for p in parts])


class OfflineOnPolicyKDTrainer(CurriculumEdgeTrainer):
    """Trains a student on teacher logit caches: ``kd_weight * divergence + ce_weight * CE`` per token, where
    ``ce_weight`` depends on who wrote the cache's tokens (``1 - kd_weight`` for the teacher or a dataset, 0 for the
    student's own rollouts; see :mod:`trl_edge.trainer.cache_sources`).

    A drop-in for TRL's GKDTrainer / DistillationTrainer users whose teacher has already scored the data once (see
    `trl-edge cache`): the teacher is never loaded, and each step costs about what an SFT step costs.

    Args:
        model: the student (name, path or model), as for SFTTrainer. Its LM head must cover the caches' vocabulary
            (a head padded past the tokenizer is fine).
        args: an [`OfflineOnPolicyKDConfig`].
        train_dataset: a teacher cache (a [`TeacherLogitCache`] or its path), or a list of them mixed by
            `args.teacher_cache_weights`; or leave it out and set `args.teacher_cache`.
        eval_dataset: optional, another teacher cache (e.g. held-out student samples scored by the teacher); or
            `args.eval_teacher_cache`.
        processing_class: the student's tokenizer; it must be the one the caches were made with.
        difficulty_scorer: overrides `args.curriculum_difficulty` (see CurriculumSFTTrainer).

    Other SFTTrainer arguments (callbacks, optimizers, peft_config, ...) pass through. Logged: `kd_loss`,
    `ce_loss`, `teacher_tail_mass` every step; `top1_agreement` (student argmax = teacher top-1) and
    `student_entropy` on logging steps only (they cost two passes over the vocabulary).
    """

    _tag_names = ["trl", "sft", "trl-edge", "knowledge-distillation", "offline-kd"]
    config_class = OfflineOnPolicyKDConfig
    default_run_name = "OfflineKD"
    loss_is_scaled_for_ga = True
    difficulty_sources = TEACHER_DIFFICULTY_SOURCES

    def __init__(self, model, args: OfflineOnPolicyKDConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, difficulty_scorer=None, **kwargs):  # fmt: skip
        args = self._resolve_args(model, args)
        source = train_dataset if train_dataset is not None else args.teacher_cache
        if source is None or (isinstance(source, list | tuple) and not source):
            raise ValueError(
                "OfflineOnPolicyKDTrainer trains on a teacher cache: pass it as `train_dataset` (a TeacherLogitCache "
                "or its path, or a list of them) or set `teacher_cache` in the config. Make one with `trl-edge cache`."
            )
        sources = list(source) if isinstance(source, list | tuple) else [source]
        if args.teacher_cache_weights is not None and len(args.teacher_cache_weights) != len(sources):
            raise ValueError(
                f"`teacher_cache_weights` has {len(args.teacher_cache_weights)} weights for {len(sources)} caches."
            )
        self.teacher_caches = [open_cache(c) for c in sources]
        self.teacher_cache = self.teacher_caches[0]
        eval_source = eval_dataset if eval_dataset is not None else args.eval_teacher_cache
        self.eval_caches = eval_caches = [open_cache(eval_source)] if eval_source is not None else []
        caches = self.teacher_caches + eval_caches
        if len({c.metadata.top_k for c in caches}) > 1:
            raise CacheError(
                "The teacher caches hold different top_k ("
                + ", ".join(f"{c.path}: {c.metadata.top_k}" for c in caches)
                + "); a batch can mix them only at one k. Cache them with the same `--top_k`."
            )
        check_one_teacher(caches, args.allow_mixed_teachers)
        cut = [truncated_rows(c) for c in self.teacher_caches]
        self.cache_sources = resolve_sources(
            self.teacher_caches, args.kd_weight, args.teacher_cache_ce_weights, args.teacher_cache_weights, cut
        )
        eligible = [eligible_rows(t, args.truncated_samples) for t in cut]
        for source, rows_kept in zip(self.cache_sources, eligible):
            if len(rows_kept) == 0 and (source.share is None or source.share > 0):
                raise ValueError(
                    f"Every sample of {source.path} was cut at max_new_tokens, and `truncated_samples='drop'` drops "
                    "them all: raise the rollouts' max_new_tokens."
                )
        seed = args.data_seed if args.data_seed is not None else args.seed
        rows = mixture_rows([len(e) for e in eligible], args.teacher_cache_weights, seed)
        train = index_dataset(self.teacher_caches, [e[r] for e, r in zip(eligible, rows)])
        evaluation = index_dataset(eval_caches, first_id=len(self.teacher_caches)) if eval_caches else None
        weights = [(s.kd_weight, s.ce_weight) for s in self.cache_sources]
        # the eval cache is weighted as the training data would weigh its source
        weights += [(args.kd_weight, 1.0 - args.kd_weight) for _ in eval_caches]
        uniform = len(set(weights)) == 1 and weights[0] == (args.kd_weight, 1.0 - args.kd_weight)
        collator = CachedKDCollator(
            caches, loss_weights=None if uniform else weights,
            mask_truncated=args.truncated_mask_positions if args.truncated_samples == "mask" else 0,
        )  # fmt: skip
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        super().__init__(
            model, args, data_collator=collator, train_dataset=train, eval_dataset=evaluation,
            processing_class=processing_class, difficulty_scorer=difficulty_scorer, **kwargs,
        )  # fmt: skip
        probes = {str(c.path): OnPolicyDrift.for_cache(c, args.onpolicy_drift_samples) for c in self.teacher_caches}
        probes = {path: probe for path, probe in probes.items() if probe is not None}
        self.drift_callback = OnPolicyDriftCallback(self, probes) if probes else None
        if self.drift_callback is not None:
            self.add_callback(self.drift_callback)
        if self.accelerator.is_main_process:
            print("Distilling from:\n" + "\n".join(f"  {s.describe()}" for s in self.cache_sources))
        self.write_sources_record()

    def write_sources_record(self) -> None:
        """``distillation_sources.json`` in ``output_dir``: each cache, who wrote it, its weights, the drift."""
        if not self.accelerator.is_main_process:
            return
        record = {
            "truncated_samples": self.args.truncated_samples,
            "sources": [s.to_dict() for s in self.cache_sources],
            "onpolicy_drift": self.drift_callback.results if self.drift_callback is not None else {},
        }
        os.makedirs(self.args.output_dir, exist_ok=True)
        path = os.path.join(self.args.output_dir, SOURCES_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
        os.replace(path + ".tmp", path)

    def _finish_trainer_setup(self) -> None:
        caches = self.teacher_caches + self.eval_caches
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self.data_collator.pad_token_id = pad_token_id(tokenizer)
        unwrapped = self.accelerator.unwrap_model(self.model)
        head = unwrapped.get_output_embeddings()
        for cache in caches:
            cache.check_tokenizer(tokenizer)
            cache.check_head_size(head.weight.shape[0])
        self._check_sampling_consistency()
        check_plain_lm_head(unwrapped, "OfflineOnPolicyKDTrainer")
        self.sharding = sharding_of(self)  # FSDP1 and ZeRO-3 stop here, with what to use instead
        # num_items_in_batch (the token count over accumulation steps and devices) is what the loss divides by.
        self.model_accepts_loss_kwargs = True
        self.kd_loss_options = self.args.kd_loss_options()

    def _check_sampling_consistency(self) -> None:
        """``sampled_reverse_kl`` is an estimator over the student's own samples at temperature 1: say so when the
        cache's provenance shows other data."""
        if self.args.divergence != "sampled_reverse_kl":
            return
        for cache in self.teacher_caches:
            source = cache.metadata.source or {}
            if source.get("kind") != "rollouts":
                warnings.warn(
                    "divergence='sampled_reverse_kl' estimates KL(student || teacher) from tokens the student "
                    f"sampled itself, but {cache.path} holds no student rollouts (source: "
                    f"{source.get('kind', 'a dataset')}): its tokens were not drawn from the student, so the "
                    "estimate is biased. Use `forward_kl` or `reverse_kl` (exact on the cached support) for such "
                    "data.",
                    stacklevel=3,
                )
                continue
            sampling = source.get("sampling", {})
            if sampling.get("temperature", 1.0) != 1.0 or sampling.get("top_p", 1.0) < 1.0 or sampling.get("top_k"):
                raise ValueError(
                    f"divergence='sampled_reverse_kl' needs samples from the student's own distribution, but the "
                    f"rollouts in {cache.path} were drawn with temperature={sampling.get('temperature')}, top_p="
                    f"{sampling.get('top_p')}, top_k={sampling.get('top_k')}: a reshaped distribution, so the "
                    "estimator would be biased. Sample at temperature 1 without top-p/top-k, or use `reverse_kl`."
                )

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["cache_index", "cache_id", "truncated"]

    def _is_logging_step(self) -> bool:
        """Whether the optimizer step being computed will be logged (the statistics that cost passes wait for it)."""
        if not self.model.training:
            return True
        args, state = self.args, self.state
        if args.logging_strategy != IntervalStrategy.STEPS:
            return True
        if args.logging_first_step and state.global_step == 0:
            return True
        steps = int(state.logging_steps or 1)
        return (state.global_step + 1) % steps == 0 or state.global_step + 1 >= state.max_steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        args = self.args
        teacher = {key: inputs.pop(key) for key in TEACHER_KEYS}
        weights = {key: inputs.pop(key) for key in WEIGHT_KEYS if key in inputs}
        # The head is read inside the wrapped forward, where FSDP2 has it gathered (see trainer/sharded_head.py)
        unwrapped = self.accelerator.unwrap_model(model)
        result, outputs = run_inside_forward(
            model, unwrapped, self._kd_loss_in_forward, unwrapped, inputs, teacher, weights, num_items_in_batch,
            return_outputs,
        )
        loss = result.loss
        # Like SFTTrainer: num_items_in_batch counts every rank's tokens, and DDP averages gradients over ranks.
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_kd_metrics(mode, result, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def _kd_loss_in_forward(self, unwrapped, inputs, teacher, weights, num_items_in_batch, return_outputs):
        """The backbone and the chunked loss, run from inside the wrapper's forward (no collective in here)."""
        input_ids = inputs["input_ids"]
        # .forward: the wrapper's hooks already ran around this call, a second round would reshard what they gathered
        outputs = unwrapped.forward(
            input_ids=input_ids,
            attention_mask=inputs["attention_mask"],
            output_hidden_states=True,
            logits_to_keep=1,  # the loss projects the hidden states itself, chunk by chunk
            use_cache=False,
        )
        mask = teacher["teacher_mask"][:, :-1]
        hidden = outputs.hidden_states[-1][:, :-1][mask]
        weight, bias = head_for_loss(unwrapped.get_output_embeddings())
        normalizer = num_items_in_batch if num_items_in_batch is not None else max(hidden.shape[0], 1)
        with gathered_zero3(weight, bias):  # ZeRO-3 released the head after its own forward; nothing otherwise
            result = chunked_kd_loss(
                hidden,
                weight,
                bias,
                teacher["teacher_topk_ids"][:, :-1][mask],
                teacher["teacher_topk_logprobs"][:, :-1][mask],
                teacher["teacher_token_logprobs"][:, :-1][mask],
                input_ids[:, 1:][mask],
                options=self.kd_loss_options,
                **{key: value[:, :-1][mask].float() for key, value in weights.items()},
                normalizer=normalizer,
                chunk_size=self.args.kd_chunk_size,
                compute_stats=self._is_logging_step(),
            )
        # only what the caller needs leaves the forward (FSDP2 hooks every tensor output for backward)
        return result, outputs if return_outputs else None

    def _log_kd_metrics(self, mode, result, attention_mask) -> None:
        device = result.kd_sum.device
        stats = {
            "kd_loss": result.kd_sum,
            "ce_loss": result.ce_sum,
            "teacher_tail_mass": result.teacher_tail_mass_sum,
            "top1_agreement": result.top1_agreement_sum,
            "student_entropy": result.student_entropy_sum,
        }
        stats = {name: value for name, value in stats.items() if value is not None}
        count = torch.tensor(float(result.num_positions), device=device)
        sums = torch.stack([v.float() for v in stats.values()] + [count])
        *values, count = self.accelerator.gather_for_metrics(sums[None]).sum(0).tolist()
        count = max(count, 1.0)
        for name, value in zip(stats, values):
            log_trainer_metric(self, mode, name, value / count)
        if mode == "train":
            count_train_tokens(self, self.accelerator.gather_for_metrics(attention_mask.sum()[None]).sum().item())
