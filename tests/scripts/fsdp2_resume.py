"""A 2-rank FSDP2 KD run of 4 optimizer steps (SGD with momentum) that checkpoints at step 2, as the Trainer does.

Usage: accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml fsdp2_resume.py OUT_DIR {full,kill,resume}
``full`` trains 4 steps; ``kill`` exits (code 17, every rank) right after the step-2 checkpoint; ``resume`` loads it
and trains steps 3-4, skipping the batches already trained on. The checkpoint goes through accelerate's
``save_fsdp_model`` / ``save_fsdp_optimizer`` (``SHARDED_STATE_DICT``: torch.distributed.checkpoint directories),
the functions ``Trainer._save_checkpoint`` calls under FSDP, and back through ``load_fsdp_model`` /
``load_fsdp_optimizer``. The end of each run saves with :func:`trl_edge.trainer.sharded_save.save_plain_model`.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from fsdp2_same_update import ACCUMULATION, build_trainer, shard  # noqa: E402

from trl_edge.pipeline.checkpoints import checkpoint_problem  # noqa: E402
from trl_edge.trainer.sharded_save import save_plain_model  # noqa: E402

STEPS, CHECKPOINT_AT = 4, 2


def main(out_dir, mode):
    from accelerate.utils.fsdp_utils import load_fsdp_model, load_fsdp_optimizer, save_fsdp_model, save_fsdp_optimizer

    trainer = build_trainer(out_dir, "kd", world=2)
    trainer.args.max_steps = STEPS
    model = shard(trainer)
    accelerator, plugin = trainer.accelerator, trainer.accelerator.state.fsdp_plugin
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    checkpoint = os.path.join(out_dir, "run", f"checkpoint-{CHECKPOINT_AT}")
    iterator = iter(trainer.get_train_dataloader())
    first = 0
    if mode == "resume":
        load_fsdp_model(plugin, accelerator, model, checkpoint)
        load_fsdp_optimizer(plugin, accelerator, optimizer, model, checkpoint)
        first = json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"]
        for _ in range(first * ACCUMULATION):  # what Trainer's skip_first_batches does on resume
            next(iterator)
    model.train()
    for step in range(first, STEPS):
        trainer.state.global_step = step
        samples, num_items = trainer.get_batch_samples(iterator, ACCUMULATION, trainer.args.device)
        for inputs in samples:
            trainer.training_step(model, inputs, num_items)
        optimizer.step()
        optimizer.zero_grad()
        if step + 1 == CHECKPOINT_AT and mode != "resume":
            save_fsdp_model(plugin, accelerator, model, checkpoint)
            save_fsdp_optimizer(plugin, accelerator, optimizer, model, checkpoint)
            if accelerator.is_main_process:  # the rest of a Trainer checkpoint, trainer_state.json last
                torch.save({}, os.path.join(checkpoint, "scheduler.pt"))
                torch.save({}, os.path.join(checkpoint, "rng_state_0.pth"))
                json.dump({"global_step": CHECKPOINT_AT}, open(os.path.join(checkpoint, "trainer_state.json"), "w"))
            accelerator.wait_for_everyone()
            if mode == "kill":
                sys.stdout.flush()
                os._exit(17)
    trainer.is_fsdp_enabled = True  # what an FSDP launch sets: the final save must gather the shards
    wrote = save_plain_model(trainer, os.path.join(out_dir, "final"))
    if accelerator.is_main_process:
        json.dump({"wrote": wrote, "checkpoint_problem": checkpoint_problem(checkpoint) if mode != "full" else None},
                  open(os.path.join(out_dir, "record.json"), "w"))  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:])
