"""A dedicated thread pool for CPU-bound inference, off the event loop, with a bounded queue.

Torch already spreads one forward pass over all the configured threads, so a few workers are enough; more only
oversubscribe the cores. When more than ``max_pending`` requests wait, new ones get 503 at once (back-pressure)
instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from service.errors import BusyError

T = TypeVar("T")


class SharedExclusiveLock:
    """Many holders in shared mode (inference calls) or one in exclusive mode (building a backbone during a hot
    reload: torch.fx tracing patches nn.Module for every thread). A waiting exclusive holder goes before new shared
    ones, so a reload cannot starve under a steady load."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._exclusive and not self._shared)
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class InferenceRunner:
    def __init__(self, workers: int, max_pending: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self.max_pending = max_pending
        self.pending = 0  # touched only on the event loop thread
        self.model_lock = SharedExclusiveLock()  # inference shares it; a backbone build takes it alone

    async def run(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run fn(*args, **kwargs, submitted=<perf_counter at submission>) on a worker."""
        if self.pending >= self.max_pending:
            raise BusyError(f"{self.pending} requests are already waiting for inference; retry shortly")
        self.pending += 1
        try:
            call = partial(self._shared_call, partial(fn, *args, **kwargs, submitted=time.perf_counter()))
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        finally:
            self.pending -= 1

    def _shared_call(self, call: Callable[[], T]) -> T:
        with self.model_lock.shared():
            return call()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
