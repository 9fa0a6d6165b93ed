"""How on-policy a KD round still is: how far the student has moved from the policy that sampled its rollouts.

The rollouts store the log-prob of every sampled token under the sampling distribution. Re-scoring those tokens
with the student being trained, under the same distribution (temperature, top-k, top-p), gives
``drift = mean(stored - current)`` over the sampled tokens: a per-token estimate of KL(sampling policy || student)
(zero at the start of a round whose rollouts this student sampled, growing as it trains). Tokens the current
student's top-k/top-p would no longer sample are counted apart (``outside_support``). Measured at the start and the
end of the round's training, it says whether the rollouts should be refreshed more often.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import TrainerCallback

from ..backends.transformers_backend import warp_logits
from ..model_loading import input_device


@dataclass
class DriftMeasure:
    drift: float  # mean(stored - current) log-prob per sampled token, inside the current support
    outside_support: float  # share of sampled tokens the current sampling distribution gives no mass
    tokens: int


class OnPolicyDrift:
    """Re-scores the first ``num_samples`` rollouts of a student-rollout cache with the model being trained."""

    def __init__(self, rollouts, sampling: dict, num_samples: int):
        rows = rollouts.to_dataset().select(range(min(num_samples, len(rollouts))))
        columns = zip(rows["prompt_ids"], rows["completion_ids"], rows["logprobs"])
        self.samples = [(list(p), list(c), np.asarray(lp, np.float64)) for p, c, lp in columns if c]
        self.temperature = float(sampling.get("temperature", 1.0)) or 1.0  # greedy rollouts: no distribution
        self.top_k, self.top_p = sampling.get("top_k"), float(sampling.get("top_p", 1.0))

    @classmethod
    def for_cache(cls, cache, num_samples: int) -> OnPolicyDrift | None:
        """The drift probe of a cache of student rollouts whose rollout set is still where it was scored."""
        from ..rollout import RolloutSet

        meta = cache.metadata
        if num_samples < 1 or meta.written_by() != "student" or not RolloutSet.is_rollout_set(meta.source_path):
            return None
        return cls(RolloutSet(meta.source_path), meta.source.get("sampling", {}), num_samples)

    @torch.no_grad()
    def measure(self, model) -> DriftMeasure:
        was_training = model.training
        model.eval()
        device = input_device(model)
        diffs, outside = [], 0
        for prompt, completion, stored in self.samples:
            ids = torch.tensor([prompt + completion], device=device)
            logits = model(input_ids=ids, logits_to_keep=len(completion) + 1, use_cache=False).logits[0, :-1]
            logprobs = torch.log_softmax(warp_logits(logits, self.temperature, self.top_k, self.top_p), dim=-1)
            current = logprobs.gather(-1, torch.tensor(completion, device=device)[:, None])[:, 0].double().cpu()
            current = current.numpy()
            inside = np.isfinite(current) & np.isfinite(stored)
            outside += int((~inside).sum())
            diffs.append(stored[inside] - current[inside])
        model.train(was_training)
        tokens = sum(len(c) for _, c, _ in self.samples)
        values = np.concatenate(diffs) if diffs else np.zeros(0)
        return DriftMeasure(float(values.mean()) if values.size else 0.0, outside / max(tokens, 1), tokens)


class OnPolicyDriftCallback(TrainerCallback):
    """Logs ``onpolicy_drift`` (and ``onpolicy_outside_support``) at the start and the end of training, per probe."""

    def __init__(self, trainer, probes: dict[str, OnPolicyDrift]):
        self.trainer, self.probes = trainer, probes
        self.results: dict[str, dict[str, float]] = {}

    def _measure(self, when: str) -> None:
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        for path, probe in self.probes.items():
            m = probe.measure(model)
            self.results.setdefault(path, {}).update(
                {f"drift_{when}": m.drift, f"outside_support_{when}": m.outside_support, "tokens": m.tokens}
            )
            if self.trainer.accelerator.is_main_process:
                print(f"On-policy drift at the {when} of training, {path}: {m.drift:.4f} nats/token "
                      f"({m.outside_support:.1%} of {m.tokens} sampled tokens outside the support)")
        first = next(iter(self.results.values()))
        self.trainer.log({f"onpolicy_drift_{when}": first[f"drift_{when}"],
                          f"onpolicy_outside_support_{when}": first[f"outside_support_{when}"]})  # fmt: skip
        self.trainer.write_sources_record()

    def on_train_begin(self, args, state, control, **kwargs):
        self._measure("start")

    def on_train_end(self, args, state, control, **kwargs):
        self._measure("end")
