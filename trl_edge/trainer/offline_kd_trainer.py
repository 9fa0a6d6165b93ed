"""OfflineOnPolicyKDTrainer: distil from a teacher logit cache, at the speed of SFT.

The training data is the cache itself (the exact sequences the teacher scored, with its top-k distribution at
every completion position). The student's LM head and the divergence run chunk by chunk over the scored positions
only, so ``[batch, seq, vocab]`` logits are never built; no teacher is loaded.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..cache.format import CacheError
from ..cache.reader import TeacherLogitCache
from ..losses import chunked_kd_loss
from .curriculum_sft_trainer import CurriculumSFTTrainer
from .offline_kd_config import OfflineOnPolicyKDConfig

TEACHER_KEYS = ("teacher_mask", "teacher_topk_ids", "teacher_topk_logprobs", "teacher_token_logprobs")


class CachedKDCollator:
    """Builds batches from teacher caches: rows carry ``cache_id`` (which cache) and ``cache_index`` (which sample)."""

    def __init__(self, caches: list[TeacherLogitCache], pad_token_id: int = 0):
        self.caches, self.pad_token_id = caches, pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        cache_ids = {int(e["cache_id"]) for e in examples}
        if len(cache_ids) != 1:
            raise ValueError(f"A batch mixes samples of several caches ({sorted(cache_ids)}).")
        cache = self.caches[cache_ids.pop()]
        return cache.collate([int(e["cache_index"]) for e in examples], pad_token_id=self.pad_token_id)


def _open_cache(cache) -> TeacherLogitCache:
    if isinstance(cache, TeacherLogitCache):
        return cache
    if isinstance(cache, str | os.PathLike):
        return TeacherLogitCache(cache)
    raise TypeError(
        f"Expected a teacher cache (a `TeacherLogitCache` or the path of one), got {type(cache).__name__}. Make one "
        "with `trl-edge cache` or `trl_edge.cache_teacher_logits`."
    )


def _teacher_difficulty(cache: TeacherLogitCache, kind: str) -> np.ndarray:
    """Per-sample difficulty read from the cache: the teacher's mean NLL of the tokens, or its mean entropy."""
    scores = np.zeros(len(cache))
    for i in range(len(cache)):
        sample = cache[i]
        if kind == "teacher_nll":
            values = -sample["token_logprobs"]
        else:  # entropy of the top-k plus the tail as one outcome: a lower bound of the full entropy
            lp = sample["topk_logprobs"].double()
            tail = (1 - lp.exp().sum(-1)).clamp(min=1e-12)
            values = -(lp.exp() * lp).sum(-1) - tail * tail.log()
        scores[i] = float(values.mean()) if len(values) else 0.0
    return scores


class OfflineOnPolicyKDTrainer(CurriculumSFTTrainer):
    """Trains a student on a teacher logit cache: ``kd_weight * divergence + (1 - kd_weight) * CE`` per token.

    A drop-in for TRL's GKDTrainer / DistillationTrainer users whose teacher has already scored the data once (see
    `trl-edge cache`): the teacher is never loaded, and each step costs about what an SFT step costs.

    Args:
        model: the student (name, path or model), as for SFTTrainer.
        args: an [`OfflineOnPolicyKDConfig`].
        train_dataset: the teacher cache (a [`TeacherLogitCache`] or its path); or leave it out and set
            `args.teacher_cache`.
        eval_dataset: optional, another teacher cache (e.g. held-out student samples scored by the teacher).
        processing_class: the student's tokenizer; it must be the one the cache was made with.

    Other SFTTrainer arguments (callbacks, optimizers, peft_config, ...) pass through. Logged: `kd_loss`,
    `ce_loss`, `top1_agreement` (student argmax = teacher top-1), `student_entropy`, `teacher_tail_mass`.
    """

    _tag_names = ["trl", "sft", "trl-edge", "knowledge-distillation", "offline-kd"]
    loss_is_scaled_for_ga = True

    def __init__(self, model, args: OfflineOnPolicyKDConfig | None = None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):  # fmt: skip
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = OfflineOnPolicyKDConfig(f"{str(name).split('/')[-1]}-OfflineKD")
        if not isinstance(args, OfflineOnPolicyKDConfig):
            raise TypeError(f"OfflineOnPolicyKDTrainer needs an OfflineOnPolicyKDConfig, got {type(args).__name__}.")
        source = train_dataset if train_dataset is not None else args.teacher_cache
        if source is None:
            raise ValueError(
                "OfflineOnPolicyKDTrainer trains on a teacher cache: pass it as `train_dataset` (a TeacherLogitCache "
                "or its path) or set `teacher_cache` in the config. Make one with `trl-edge cache`."
            )
        caches = [_open_cache(source)]
        if eval_dataset is not None:
            caches.append(_open_cache(eval_dataset))
        self.teacher_cache = caches[0]
        datasets = [c.to_dataset().add_column("cache_id", [i] * len(c)) for i, c in enumerate(caches)]
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        collator = CachedKDCollator(caches)
        scorer = None
        if args.curriculum_pacing == "none" and args.curriculum_stage_column is None:
            scorer = lambda dataset: np.zeros(len(dataset))  # noqa: E731 (random order: no difficulty needed)
        elif args.curriculum_difficulty in ("teacher_nll", "teacher_entropy"):
            scorer = lambda dataset: _teacher_difficulty(self.teacher_cache, args.curriculum_difficulty)  # noqa: E731
        super().__init__(
            model,
            args,
            data_collator=collator,
            train_dataset=datasets[0],
            eval_dataset=datasets[1] if len(datasets) > 1 else None,
            processing_class=processing_class,
            difficulty_scorer=scorer,
            **kwargs,
        )
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        collator.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        head = self.accelerator.unwrap_model(self.model).get_output_embeddings()
        for cache in caches:
            cache.check_tokenizer(tokenizer)
            if head.weight.shape[0] != cache.metadata.vocab_size:
                raise CacheError(
                    f"The student's LM head has {head.weight.shape[0]} outputs but the cache at {cache.path} holds "
                    f"distributions over {cache.metadata.vocab_size} tokens (teacher {cache.metadata.teacher}). "
                    "Teacher and student must share the vocabulary."
                )
        config = self.accelerator.unwrap_model(self.model).config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
            raise ValueError("Students with logit soft-capping or logit scaling are not supported yet.")
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

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "cache_index", "cache_id"]

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
        )
        loss = result.loss
        # Like SFTTrainer: num_items_in_batch counts every rank's tokens, and DDP averages gradients over ranks.
        if args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._log_kd_metrics(mode, result, inputs["attention_mask"])
        return (loss, outputs) if return_outputs else loss

    def _log_kd_metrics(self, mode, result, attention_mask) -> None:
        device = result.kd_sum.device
        sums = torch.stack(
            [
                result.kd_sum.float(),
                result.ce_sum.float(),
                result.top1_agreement_sum.float(),
                result.student_entropy_sum.float(),
                result.teacher_tail_mass_sum.float(),
                torch.tensor(float(result.num_positions), device=device),
            ]
        )
        kd, ce, top1, entropy, tail, count = self.accelerator.gather_for_metrics(sums[None]).sum(0).tolist()
        count = max(count, 1.0)
        for name, value in (
            ("kd_loss", kd),
            ("ce_loss", ce),
            ("top1_agreement", top1),
            ("student_entropy", entropy),
            ("teacher_tail_mass", tail),
        ):
            self._metrics[mode][name].append(value / count)
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(attention_mask.sum()[None]).sum().item()
            self._total_train_tokens += tokens
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
