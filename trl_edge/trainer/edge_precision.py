"""The edge-precision policy as a piece any trainer composes: its config field, and the fp16-range watch it adds.

A student meant for an fp16-only edge part (``edge_target``) trains without bf16, in fp16 mixed precision where the
training device has it, and has its activations logged against the fp16 range (``Fp16RangeCallback``).
``EdgePrecisionArguments`` also gives trl-edge's configs TRL's activation-checkpointing default under the name
transformers no longer deprecates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..devices import EDGE_TARGETS, apply_precision_policy
from .fp16_range_callback import Fp16RangeCallback


@dataclass
class EdgePrecisionArguments:
    """``edge_target`` and the precision policy of a trl-edge training config."""

    edge_target: str | None = field(
        default=None,
        metadata={
            "help": "The fp16-only edge part the student is for (e.g. `atlas-200i-a2`): no bf16, fp16 mixed "
            "precision where the training device has it, and activations logged against the fp16 range.",
            "choices": [None, *EDGE_TARGETS],
        },
    )
    # TRL turns checkpointing on by default through `gradient_checkpointing`, which transformers deprecates (with a
    # warning on every run): the same default, under its current name.
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Enable activation checkpointing to trade compute for memory (about 20% slower, much less "
            "activation memory). Default: on, as in TRL.",
            "nargs": "?",
            "const": True,
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (transformers)."}
    )

    def _apply_edge_defaults(self) -> None:
        """Before TRL's ``__post_init__``: choose bf16/fp16 (TRL would make bf16 the default on every device), and
        turn checkpointing on by its current name unless either name was set."""
        apply_precision_policy(self)
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True


class EdgePrecisionMixin:
    """Adds the fp16-range watch to a trainer whose config sets ``edge_target``; logs ``edge/max_activation``."""

    def _init_edge_precision(self) -> None:
        self.fp16_range = None
        if self.args.edge_target is not None:
            self.fp16_range = Fp16RangeCallback()
            self.add_callback(self.fp16_range)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.fp16_range is not None and self.model.training and "loss" in logs:
            self.fp16_range.add_to_logs(logs, self.args.edge_target)
        super().log(logs, start_time)
