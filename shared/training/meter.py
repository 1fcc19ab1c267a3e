"""Throughput and input-pipeline health: images per second and the time spent waiting for data."""
from __future__ import annotations

import time
from contextlib import contextmanager


class Throughput:
    def __init__(self):
        self._reset()

    def _reset(self) -> None:
        self.start = time.perf_counter()
        self.waited = 0.0
        self.samples = 0

    @contextmanager
    def waiting(self):
        t = time.perf_counter()
        yield
        self.waited += time.perf_counter() - t

    def add(self, samples: int) -> None:
        self.samples += samples

    def read(self) -> dict[str, float]:
        """Figures since the last read. Call it right after a host sync (a logged loss) so
        queued GPU work is counted in the interval it belongs to."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {"images_per_s": self.samples / elapsed, "data_wait_fraction": self.waited / elapsed}
        self._reset()
        return out
