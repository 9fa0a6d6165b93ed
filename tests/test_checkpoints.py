"""An interrupted training stage resumes from the newest checkpoint that was completely written, not the newest one.

A real CurriculumSFTTrainer writes checkpoint-1 and checkpoint-2; each case then damages checkpoint-2 the way a kill
(or a full disk) during its save would leave it, and the stage must resume from checkpoint-1 and finish.
"""

import json
import shutil

import pytest
from conftest import make_dataset, training_args

from trl_edge import CurriculumSFTTrainer
from trl_edge.pipeline.checkpoints import checkpoint_problem, resumable_checkpoint
from trl_edge.testing import build_tiny_model


def _truncate(name, keep=0.5):
    def damage(checkpoint):
        path = checkpoint / name
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])

    return damage


def _remove(name):
    return lambda checkpoint: (checkpoint / name).unlink()


def _rewrite_state(**changes):
    def damage(checkpoint):
        path = checkpoint / "trainer_state.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    return damage


DAMAGE = {
    "killed before trainer_state.json": (_remove("trainer_state.json"), "no trainer_state.json"),
    "trainer_state.json cut mid-write": (_truncate("trainer_state.json"), "trainer_state.json is truncated"),
    "trainer_state.json of another step": (_rewrite_state(global_step=1), "says step 1"),
    "weights truncated": (_truncate("model.safetensors"), "model.safetensors is truncated"),
    "weights cut inside the header": (_truncate("model.safetensors", keep=0.0001), "model.safetensors is truncated"),
    "no weights": (_remove("model.safetensors"), "no model weights"),
    "optimizer truncated": (_truncate("optimizer.pt"), "optimizer.pt is truncated"),
    "optimizer missing": (_remove("optimizer.pt"), "optimizer.pt is missing"),
    "scheduler truncated": (_truncate("scheduler.pt", keep=0.9), "scheduler.pt is truncated"),
    "rng state missing": (_remove("rng_state.pth"), "rng_state.pth is missing"),
    "rng state truncated": (_truncate("rng_state.pth"), "rng_state.pth is truncated"),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A run's output directory with two complete checkpoints (steps 1 and 2) and its final model."""
    root = tmp_path_factory.mktemp("run")
    args = training_args(root, max_steps=2, save_strategy="steps", save_steps=1, curriculum_pacing="none")
    CurriculumSFTTrainer(build_tiny_model(tokenizer), args=args, train_dataset=make_dataset(16),
                         processing_class=tokenizer).train()  # fmt: skip
    return root / "out"


def test_complete_checkpoints_are_complete(checkpoints):
    assert checkpoint_problem(checkpoints / "checkpoint-1") is None
    assert checkpoint_problem(checkpoints / "checkpoint-2") is None
    assert resumable_checkpoint(checkpoints) == (str(checkpoints / "checkpoint-2"), [])


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(case, checkpoints, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpoints, out)
    damage, reason = DAMAGE[case]
    damage(out / "checkpoint-2")
    chosen, skipped = resumable_checkpoint(out)
    assert chosen == str(out / "checkpoint-1")
    assert [path for path, _ in skipped] == [str(out / "checkpoint-2")] and reason in skipped[0][1]


def test_no_complete_checkpoint_means_a_fresh_start(checkpoints, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(checkpoints, out)
    _remove("trainer_state.json")(out / "checkpoint-1")
    _truncate("optimizer.pt")(out / "checkpoint-2")
    chosen, skipped = resumable_checkpoint(out)
    assert chosen is None and len(skipped) == 2
    assert resumable_checkpoint(tmp_path / "nothing-here") == (None, [])


def test_the_trainer_resumes_from_the_fallback_and_not_from_the_damaged_one(checkpoints, tmp_path, tokenizer):
    out = tmp_path / "out"
    shutil.copytree(checkpoints, out)
    _truncate("trainer_state.json")(out / "checkpoint-2")

    def trainer():
        args = training_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=1, curriculum_pacing="none")
        return CurriculumSFTTrainer(build_tiny_model(tokenizer), args=args, train_dataset=make_dataset(16),
                                    processing_class=tokenizer)  # fmt: skip

    with pytest.raises(json.JSONDecodeError):  # what resuming from the newest checkpoint did
        trainer().train(resume_from_checkpoint=str(out / "checkpoint-2"))
    chosen, _ = resumable_checkpoint(out)
    resumed = trainer()
    resumed.train(resume_from_checkpoint=chosen)
    assert resumed.state.global_step == 2
