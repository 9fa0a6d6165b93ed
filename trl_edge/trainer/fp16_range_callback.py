"""Fp16RangeCallback: watch the student's activations against the fp16 range while it trains.

A student meant for an fp16-only edge part (``edge_target``) must keep every activation well inside fp16
(max 65504). This callback records the largest absolute output of every decoder layer and of the final norm over
each logging window; the trainer logs it as ``edge/max_activation`` (and its share of the fp16 range), and it
warns once when it passes ``warn_fraction`` of the range.
"""

from __future__ import annotations

import warnings

import torch
from transformers import TrainerCallback

from ..devices import FP16_MAX


class Fp16RangeCallback(TrainerCallback):
    def __init__(self, warn_fraction: float = 0.125):
        self.warn_fraction = warn_fraction
        self.max_abs = 0.0
        self.worst = ""
        self._handles = []
        self._warned = False

    def _hook(self, name):
        def record(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if isinstance(hidden, torch.Tensor) and hidden.is_floating_point():
                value = float(hidden.detach().abs().max())
                if value > self.max_abs:
                    self.max_abs, self.worst = value, name

        return record

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, module in model.named_modules():
            if name.endswith(("layers", "h")) or not hasattr(module, "forward"):
                continue
            if type(module).__name__.endswith(("DecoderLayer", "RMSNorm")) and ".mlp" not in name:
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def add_to_logs(self, logs: dict, edge_target: str) -> None:
        """Put the window's largest activation into ``logs`` (the trainer's ``log`` calls this) and start a new one."""
        if not self.max_abs:
            return
        logs["edge/max_activation"] = self.max_abs
        logs["edge/fp16_range_used"] = self.max_abs / FP16_MAX
        if self.max_abs > self.warn_fraction * FP16_MAX and not self._warned:
            warnings.warn(
                f"Activation {self.max_abs:.0f} in {self.worst} uses {100 * self.max_abs / FP16_MAX:.0f}% of the fp16 "
                f"range ({edge_target}): the exported student may overflow. Lower the learning rate, add weight "
                "decay, or check the data.",
                stacklevel=3,
            )
            self._warned = True
        self.max_abs, self.worst = 0.0, ""

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles = []
