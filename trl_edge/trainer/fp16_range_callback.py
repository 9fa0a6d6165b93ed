"""Fp16RangeCallback: watch the student's activations against the fp16 range while it trains.

A student meant for an fp16-only edge part (``edge_target``) must keep every activation well inside fp16
(max 65504). This callback records the largest absolute output of every decoder layer and of the final norm over
each logging window; the trainer logs it as ``edge/max_activation`` (and its share of the fp16 range), and it
warns once when it passes ``warn_fraction`` of the range.

The running maxima stay on the device (one small tensor per watched module, updated in place): the host reads them
once per log, never inside a forward pass, so the watch costs no device synchronisation per layer.
"""

from __future__ import annotations

import warnings

import torch
from transformers import TrainerCallback

from ..devices import FP16_MAX


class Fp16RangeCallback(TrainerCallback):
    def __init__(self, warn_fraction: float = 0.125):
        self.warn_fraction = warn_fraction
        self._maxima: dict[str, torch.Tensor] = {}  # module name -> running max |activation|, on the device
        self._handles = []
        self._warned = False

    def _hook(self, name):
        def record(module, inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if isinstance(hidden, torch.Tensor) and hidden.is_floating_point():
                value = hidden.detach().abs().amax().float()
                running = self._maxima.get(name)
                if running is None:
                    self._maxima[name] = value
                else:
                    torch.maximum(running, value, out=running)

        return record

    def window_max(self) -> tuple[float, str]:
        """The largest activation since the last log and the module it came from (one host read for all modules)."""
        if not self._maxima:
            return 0.0, ""
        names = list(self._maxima)
        values = torch.stack([self._maxima[n].to(self._maxima[names[0]].device) for n in names]).cpu()
        best = int(values.argmax())
        return float(values[best]), names[best]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, module in model.named_modules():
            if name.endswith(("layers", "h")) or not hasattr(module, "forward"):
                continue
            if type(module).__name__.endswith(("DecoderLayer", "RMSNorm")) and ".mlp" not in name:
                self._handles.append(module.register_forward_hook(self._hook(name)))

    def add_to_logs(self, logs: dict, edge_target: str) -> None:
        """Put the window's largest activation into ``logs`` (the trainer's ``log`` calls this) and start a new one."""
        max_abs, worst = self.window_max()
        self._maxima = {}
        if not max_abs:
            return
        logs["edge/max_activation"] = max_abs
        logs["edge/fp16_range_used"] = max_abs / FP16_MAX
        if max_abs > self.warn_fraction * FP16_MAX and not self._warned:
            warnings.warn(
                f"Activation {max_abs:.0f} in {worst} uses {100 * max_abs / FP16_MAX:.0f}% of the fp16 "
                f"range ({edge_target}): the exported student may overflow. Lower the learning rate, add weight "
                "decay, or check the data.",
                stacklevel=3,
            )
            self._warned = True

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self._handles:
            handle.remove()
        self._handles = []
