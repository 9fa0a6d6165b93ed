"""A stopwatch that adds the seconds between laps to named totals, synchronising the device first.

The scorers (``backends``) and the cache writer both report where their time goes (forward, top-k, encoding,
writing) into one ``timings`` dict.
"""

from __future__ import annotations

import time


class Clock:
    """Adds elapsed seconds to ``timings[key]`` at each lap (synchronising the device first); a no-op without."""

    def __init__(self, timings: dict[str, float] | None, device=None):
        self.timings, self.device = timings, device
        self.last = 0.0

    def start(self) -> None:
        if self.timings is not None:
            self._sync()
            self.last = time.perf_counter()

    def lap(self, key: str) -> None:
        if self.timings is not None:
            self._sync()
            now = time.perf_counter()
            self.timings[key] = self.timings.get(key, 0.0) + now - self.last
            self.last = now

    def _sync(self) -> None:
        if self.device is not None and self.device.type != "cpu":
            import torch

            getattr(torch, self.device.type).synchronize()
