"""OfflineOnPolicyKDTrainer: distil from teacher logit caches, at the speed of SFT.

The training data is the caches themselves (the exact sequences the teacher scored, with its top-k distribution at
every completion position); several caches (rounds of student rollouts, teacher-written answers) mix by weight. The
student's LM head and the divergence run chunk by chunk over the scored positions only, so ``[batch, seq, vocab]``
logits are never built; no teacher is loaded.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from datasets import Dataset, concatenate_datasets
from transformers.trainer_utils import IntervalStrategy
from trl import SFTTrainer

from ..backends.transformers_backend import check_plain_lm_head
from ..batch import pad_token_id
from ..cache.format import CacheError
from ..cache.reader import TeacherLogitCache, collate_samples
from ..curriculum.scorers import ColumnScorer
from ..data_columns import scalar_column
from ..devices import check_process_group
from ..losses import chunked_kd_loss
from .curriculum import CurriculumMixin
from .edge_precision import EdgePrecisionMixin
from .offline_kd_config import OfflineOnPolicyKDConfig

TEACHER_KEYS = ("teacher_mask", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_logprobs")


class CachedKDCollator:
    """Builds batches from teacher caches: rows carry ``cache_id`` (which cache) and ``cache_index`` (which sample).

    A batch may mix samples of several caches (they must share ``top_k``).
    """

    def __init__(self, caches: list[TeacherLogitCache], pad_token_id: int = 0):
        self.caches, self.pad_token_id = caches, pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        samples = [self.caches[int(e["cache_id"])][int(e["cache_index"])] for e in examples]
        return collate_samples(samples, self.caches[0].metadata.top_k, self.pad_token_id)


class TeacherDifficultyScorer:
    """The teacher's view of each row's sample, read from its cache (``teacher_nll`` or ``teacher_entropy``)."""

    def __init__(self, caches: list[TeacherLogitCache], kind: str):
        self.caches, self.kind = caches, kind

    def __call__(self, dataset: Dataset) -> np.ndarray:
        cache_ids, indices = scalar_column(dataset, "cache_id"), scalar_column(dataset, "cache_index")
        scores = np.zeros(len(dataset))
        for cache_id in np.unique(cache_ids):
            rows = np.flatnonzero(cache_ids == cache_id)
            cache = self.caches[int(cache_id)]
            scores[rows] = cache.teacher_difficulty(self.kind, indices[rows], show_progress=True)
        return scores


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


def index_dataset(caches: list[TeacherLogitCache], rows: list[np.ndarray] | None = None) -> Dataset:
    """One row per training sample: ``cache_id`` and ``cache_index`` plus the cache's own index columns."""
    parts = []
    for cache_id, cache in enumerate(caches):
        part = cache.to_dataset(show_progress=True)
        if rows is not None:
            part = part.select(rows[cache_id])
        parts.append(part.add_column("cache_id", np.full(len(part), cache_id, dtype=np.int64)))
    if len(parts) == 1:
        return parts[0]
    shared = set.intersection(*(set(p.column_names) for p in parts))
    return concatenate_datasets([p.select_columns([c for c in p.column_names if c in shared]) for p in parts])


class OfflineOnPolicyKDTrainer(CurriculumMixin, EdgePrecisionMixin, SFTTrainer):
    """Trains a student on teacher logit caches: ``kd_weight * divergence + (1 - kd_weight) * CE`` per token.

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
    loss_is_scaled_for_ga = True
    difficulty_sources = {
        **CurriculumMixin.difficulty_sources,
        "length": lambda trainer: ColumnScorer("num_tokens"),
        "teacher_nll": lambda trainer: TeacherDifficultyScorer(trainer.teacher_caches, "teacher_nll"),
        "teacher_entropy": lambda trainer: TeacherDifficultyScorer(trainer.teacher_caches, "teacher_entropy"),
    }

    def __init__(self, model, args: OfflineOnPolicyKDConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, difficulty_scorer=None, **kwargs):  # fmt: skip
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = OfflineOnPolicyKDConfig(f"{str(name).split('/')[-1]}-OfflineKD")
        if not isinstance(args, OfflineOnPolicyKDConfig):
            raise TypeError(f"OfflineOnPolicyKDTrainer needs an OfflineOnPolicyKDConfig, got {type(args).__name__}.")
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
        eval_caches = [open_cache(eval_source)] if eval_source is not None else []
        caches = self.teacher_caches + eval_caches
        if len({c.metadata.top_k for c in caches}) > 1:
            raise CacheError(
                "The teacher caches hold different top_k ("
                + ", ".join(f"{c.path}: {c.metadata.top_k}" for c in caches)
                + "); a batch can mix them only at one k. Cache them with the same `--top_k`."
            )
        seed = args.data_seed if args.data_seed is not None else args.seed
        rows = mixture_rows([len(c) for c in self.teacher_caches], args.teacher_cache_weights, seed)
        train = index_dataset(self.teacher_caches, rows)
        evaluation = None
        if eval_caches:
            evaluation = eval_caches[0].to_dataset()
            evaluation = evaluation.add_column("cache_id", [len(self.teacher_caches)] * len(evaluation))
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        collator = CachedKDCollator(caches)
        self._check_curriculum_inputs(args, train)
        super().__init__(
            model, args, data_collator=collator, train_dataset=train, eval_dataset=evaluation,
            processing_class=processing_class, **kwargs,
        )  # fmt: skip
        check_process_group(self.accelerator.num_processes)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        collator.pad_token_id = pad_token_id(tokenizer)
        unwrapped = self.accelerator.unwrap_model(self.model)
        head = unwrapped.get_output_embeddings()
        for cache in caches:
            cache.check_tokenizer(tokenizer)
            cache.check_head_size(head.weight.shape[0])
        self._check_sampling_consistency()
        check_plain_lm_head(unwrapped, "OfflineOnPolicyKDTrainer")
        sharded = self.is_fsdp_enabled or (
            self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        )
        if sharded:
            raise NotImplementedError(
                "The distillation loss reads the LM head's weight directly, which FSDP and DeepSpeed ZeRO-3 shard "
                "across ranks. Use DDP or ZeRO-1/2 (recipes/accelerate/*_multi.yaml, *_zero2.yaml) for now."
            )
        # num_items_in_batch (the token count over accumulation steps and devices) is what the loss divides by.
        self.model_accepts_loss_kwargs = True
        self._init_edge_precision()
        self._init_curriculum(difficulty_scorer)

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
            self._signature_columns = ["cache_index", "cache_id"]

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
        input_ids = inputs["input_ids"]
        outputs = model(
            input_ids=input_ids,
            attention_mask=inputs["attention_mask"],
            output_hidden_states=True,
            logits_to_keep=1,  # the loss projects the hidden states itself, chunk by chunk
            use_cache=False,
        )
        mask = teacher["teacher_mask"][:, :-1]
        hidden = outputs.hidden_states[-1][:, :-1][mask]
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        num_positions = hidden.shape[0]
        normalizer = num_items_in_batch if num_items_in_batch is not None else max(num_positions, 1)
        result = chunked_kd_loss(
            hidden,
            head.weight,
            head.bias,
            teacher["teacher_topk_ids"][:, :-1][mask],
            teacher["teacher_topk_logprobs"][:, :-1][mask],
            teacher["teacher_token_logprobs"][:, :-1][mask],
            input_ids[:, 1:][mask],
            kd_weight=args.kd_weight,
            divergence=args.divergence,
            beta=args.beta,
            skew_alpha=args.skew_alpha,
            temperature=args.temperature,
            tail=args.tail,
            normalizer=normalizer,
            chunk_size=args.kd_chunk_size,
            compute_stats=self._is_logging_step(),
        )
        loss = result.loss
        # Like SFTTrainer: num_items_in_batch counts every rank's tokens, and DDP averages gradients over ranks.
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_kd_metrics(mode, result, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

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
            self._metrics[mode][name].append(value / count)
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(attention_mask.sum()[None]).sum().item()
            self._total_train_tokens += tokens
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
