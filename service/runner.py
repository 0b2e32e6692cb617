"""A dedicated thread pool for CPU-bound inference, off the event loop, with a bounded queue.

Torch already spreads one forward pass over all the configured threads, so a few workers are enough; more only
oversubscribe the cores. When more than ``max_pending`` requests wait, new ones get 503 at once (back-pressure)
instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from service.errors import BusyError

T = TypeVar("T")


class InferenceRunner:
    def __init__(self, workers: int, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self.max_pending = max_pending
        self.pending = 0  # touched only on the event loop thread

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run fn(*args, **kwargs, submitted=<perf_counter at submission>) on a worker."""
        if self.pending >= self.max_pending:
            raise BusyError(f"{self.pending} requests are already waiting for inference; retry shortly")
        self.pending += 1
        try:
            call = partial(fn, *args, **kwargs, submitted=time.perf_counter())
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
