"""Two optimizer steps over global batches of 4 (2 accumulation steps each): 1 process with ``trainer.train()``, or
2 processes whose student accelerate's own ``fsdp2_prepare_model`` has ``fully_shard``-ed over the gloo group.

Usage: ddp_same_update.py-style, OUT_DIR {sft,kd} [head]; for 2 ranks launch it with
``accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml``.
``head``: wrap ``lm_head`` in an FSDP2 unit of its own that reshards after its forward (must be refused);
``zero3``: a DeepSpeed ZeRO-3 engine (DeepSpeed's CPU accelerator, gloo) instead of FSDP2, driven through the
trainer's ``compute_loss`` and ``engine.backward``/``engine.step``;
``bf16`` / ``fp16``: the MixedPrecisionPolicy accelerate sets for ``mixed_precision: bf16`` / ``fp16`` (records the
dtypes the loss sees and returns).

accelerate makes a CPU launch MULTI_CPU (it picks FSDP only for accelerator types), so the trainer cannot prepare
the model for FSDP2 itself here. The 2-rank run builds the same trainer, shards the student with accelerate's
``fsdp2_prepare_model`` (the code ``Accelerator.prepare`` runs under ``fsdp_version: 2``) and then drives the
trainer's own ``get_train_dataloader``, ``get_batch_samples`` and ``training_step`` (so its ``compute_loss``, the
loss inside the wrapped forward, ``accelerator.backward``), stepping SGD itself where ``Trainer.train`` would.
"""

import json
import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from trl_edge import (  # noqa: E402
    CurriculumSFTConfig,
    CurriculumSFTTrainer,
    OfflineOnPolicyKDConfig,
    OfflineOnPolicyKDTrainer,
    cache_teacher_logits,
)
from trl_edge.testing import arithmetic_examples, build_tiny_model, build_tokenizer  # noqa: E402

STEPS, ACCUMULATION, LR = 2, 2, 0.5


def build_trainer(out_dir, kind, world):
    tokenizer = build_tokenizer()
    data = Dataset.from_list(arithmetic_examples(24, seed=0))
    common = dict(
        output_dir=os.path.join(out_dir, "run"), per_device_train_batch_size=4 // (ACCUMULATION * world),
        gradient_accumulation_steps=ACCUMULATION, max_steps=STEPS, optim="sgd", learning_rate=LR, max_grad_norm=0.0,
        lr_scheduler_type="constant", save_strategy="no", report_to=[], bf16=False, use_cpu=True, disable_tqdm=True,
        activation_checkpointing=False, max_length=128, seed=0, logging_steps=1,
    )  # fmt: skip
    if kind == "sft":
        args = CurriculumSFTConfig(**common, curriculum_difficulty="length", curriculum_pacing="root")
        return CurriculumSFTTrainer(build_tiny_model(tokenizer), args, train_dataset=data, processing_class=tokenizer)
    cache_dir = os.path.join(out_dir, "cache")
    teacher = build_tiny_model(tokenizer, arch="qwen2", seed=1)
    cache = cache_teacher_logits(teacher, tokenizer, data, cache_dir, top_k=16, shard_size=8)
    args = OfflineOnPolicyKDConfig(**common, kd_weight=0.7, curriculum_pacing="linear")
    return OfflineOnPolicyKDTrainer(build_tiny_model(tokenizer), args, train_dataset=cache, processing_class=tokenizer)


def shard(trainer, head_alone=False, precision=None):
    """The student as accelerate's FSDP2 path shards it: each decoder layer, the final norm with the head, the root."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp import fully_shard

    model = trainer.model
    if head_alone:
        fully_shard(model.get_output_embeddings(), reshard_after_forward=True)
    layer_cls = type(model.model.layers[0]).__name__
    trainer.accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=[layer_cls],
        reshard_after_forward=True, cpu_ram_efficient_loading=False, state_dict_type="SHARDED_STATE_DICT",
    )  # fmt: skip
    if precision:
        trainer.accelerator.state.fsdp_plugin.set_mixed_precision(precision)
    model = fsdp2_prepare_model(trainer.accelerator, model)
    trainer.model = trainer.model_wrapped = model
    return model


def train_sharded(trainer, model):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    iterator = iter(trainer.get_train_dataloader())
    losses, batches, dtypes = [], [], set()
    model.train()
    for _ in range(STEPS):
        samples, num_items = trainer.get_batch_samples(iterator, ACCUMULATION, trainer.args.device)
        for inputs in samples:
            batches.append(inputs["input_ids"][:, :8].tolist())
            loss = trainer.training_step(model, inputs, num_items)
            losses.append(loss.item())
            dtypes.add(str(loss.dtype))
        optimizer.step()
        optimizer.zero_grad()
        trainer.state.global_step += 1
    return losses, batches, sorted(dtypes)


def train_zero3(trainer):
    """The trainer's compute_loss on a ZeRO-3 engine: every parameter partitioned (``numel() == 0`` outside the
    forward), the head gathered for the loss with GatheredParameters, the update stepped by the engine."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": trainer.args.per_device_train_batch_size,
        "gradient_accumulation_steps": ACCUMULATION, "zero_optimization": {"stage": 3},
        "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}, "fp16": {"enabled": False},
    }  # fmt: skip
    model = trainer.model
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    trainer.model_wrapped = engine
    head_numel = model.get_output_embeddings().weight.numel()
    iterator = iter(trainer.get_train_dataloader())
    losses = []
    engine.train()
    for _ in range(STEPS):
        samples, num_items = trainer.get_batch_samples(iterator, ACCUMULATION, trainer.args.device)
        for inputs in samples:
            loss = trainer.compute_loss(engine, inputs, num_items_in_batch=num_items)
            engine.backward(loss, scale_wrt_gas=False)  # as Trainer.training_step does under DeepSpeed
            engine.step()
            losses.append(loss.item())
        trainer.state.global_step += 1
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return losses, head_numel, state


def full_state(model):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def main(out_dir, kind, variant=""):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    trainer = build_trainer(out_dir, kind, world)
    rank = trainer.accelerator.process_index
    record = {"rank": rank, "world_size": world}
    if world == 1:
        trainer.train()
        state = trainer.model.state_dict()
    elif variant == "zero3":
        record["losses"], record["head_numel_outside_forward"], state = train_zero3(trainer)
    else:
        precision = variant if variant in ("bf16", "fp16") else None
        model = shard(trainer, head_alone=variant == "head", precision=precision)
        seen = record["head_dtypes_in_forward"] = []
        if kind == "kd":
            from trl_edge.trainer import offline_kd_trainer

            original = offline_kd_trainer.head_for_loss
            offline_kd_trainer.head_for_loss = lambda head: seen.append(str(head.weight.dtype)) or original(head)
        head = model.get_output_embeddings().weight
        record["head_local_rows"] = head.to_local().shape[0]
        record["head_rows"] = head.shape[0]
        try:
            record["losses"], record["batches"], record["loss_dtypes"] = train_sharded(trainer, model)
        except ValueError as error:
            record["error"] = str(error)
        record["order"] = list(trainer.curriculum_sampler)
        state = full_state(model) if "error" not in record else {}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    if rank == 0 and state:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, os.path.join(out_dir, "weights.safetensors"))


if __name__ == "__main__":
    main(*sys.argv[1:])
