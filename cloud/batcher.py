"""Dynamic batching: concurrent requests are gathered, up to max_batch or until the oldest has waited
max_delay, into one runtime call. The runtime runs on one dedicated engine thread so the event loop stays
free to accept, validate and answer other calls meanwhile. max_batch <= 1 or max_delay <= 0 turns
gathering off (one runtime call per request). `engines` > 1 runs that many runtime calls at once, each on
its own engine thread (the runtime must allow concurrent calls: ONNX Runtime sessions do, TensorRT
serialises them); a batch is gathered only once an engine is free to take it, as with one engine."""

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger("ppfr.cloud")


class BatcherClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


class DynamicBatcher:
    def __init__(self, runtime, max_batch: int = 8, max_delay_ms: float = 2.0, engines: int = 1):
        self.runtime = runtime
        self.max_batch = max(
            1, min(int(max_batch), int(getattr(runtime, "max_batch", max_batch) or max_batch))
        )
        self.max_delay = max(0.0, float(max_delay_ms)) / 1000.0
        self.enabled = self.max_batch > 1 and self.max_delay > 0
        self.engines = max(1, int(engines))
        self._engine = ThreadPoolExecutor(max_workers=self.engines, thread_name_prefix="ppfr-engine")
        self._free = asyncio.Semaphore(self.engines)  # engines not running a batch
        self._running: set[asyncio.Task] = set()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False
        self._local = threading.local()  # each engine thread's reused batch buffer
        # Batch sizes run so far (for GetServerInfo-style introspection and tests).
        self.batches = 0
        self.items = 0
        self.on_batch = None  # called with each batch's size (the server's metrics)

    async def embed(self, tensor: np.ndarray) -> np.ndarray:
        """[1, C, H, W] -> [D] embedding of one face."""
        if self._closed:
            raise BatcherClosed("server is shutting down")
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self._count(1)
            return (await loop.run_in_executor(self._engine, self._embed_batch, [tensor]))[0]
        if self._worker is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="ppfr-batcher")
        future = loop.create_future()
        self._queue.put_nowait((loop.time(), tensor, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            await self._free.acquire()  # gather the next batch only once an engine can take it
            item = await self._queue.get()
            if item is None:
                break
            arrived, tensor, future = item
            batch = [(tensor, future)]
            deadline = arrived + self.max_delay
            while len(batch) < self.max_batch:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = self._queue.get_nowait()
                if item is None:
                    stopping = True
                    break
                batch.append((item[1], item[2]))
            # Callers whose deadline passed (or who went away) have cancelled their future: skip them.
            live = [(t, f) for t, f in batch if not f.done()]
            if not live:
                self._free.release()
                continue
            task = asyncio.create_task(self._dispatch(loop, live))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        if self._running:  # shutting down: batches already on an engine are still answered
            await asyncio.gather(*self._running)

    async def _dispatch(self, loop, live) -> None:
        try:
            await self._run_batch(loop, live)
        finally:
            self._free.release()

    async def _run_batch(self, loop, live) -> None:
        try:
            out = await loop.run_in_executor(self._engine, self._embed_batch, [t for t, _ in live])
        except Exception as err:  # hand the failure to every caller of this batch
            for _, f in live:
                if not f.done():
                    f.set_exception(err)
            return
        self._count(len(live))
        for (_, f), row in zip(live, out):
            if not f.done():
                f.set_result(row)

    def _count(self, size: int) -> None:
        self.batches += 1
        self.items += size
        if self.on_batch is not None:
            self.on_batch(size)

    def queue_depth(self) -> int:
        """Faces waiting for the engine."""
        return self._queue.qsize() if self._queue is not None else 0

    def _embed_batch(self, tensors: list[np.ndarray]) -> np.ndarray:
        """Runs on the engine thread: one runtime call for the whole batch, stacked into a reused buffer."""
        if len(tensors) == 1:
            batch = tensors[0]
        else:
            first = tensors[0]
            shape = (self.max_batch, *first.shape[1:])
            buffer = getattr(self._local, "buffer", None)
            if buffer is None or buffer.shape != shape or buffer.dtype != first.dtype:
                buffer = self._local.buffer = np.empty(shape, dtype=first.dtype)
            batch = buffer[: len(tensors)]
            np.concatenate(tensors, axis=0, out=batch)
        out = self.runtime.embed(batch)
        if out.shape[0] != len(tensors):
            raise RuntimeError(f"runtime returned {out.shape[0]} embeddings for a batch of {len(tensors)}")
        return out

    async def close(self) -> None:
        """Stop taking work; requests already queued are still answered, then the engine thread ends."""
        self._closed = True
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._engine.shutdown, True)
