"""Failure semantics for load balancers: the gallery database watched, health reported from it.

A replica whose database cannot be reached is no use to a load balancer: `GalleryWatch` pings the gallery
every INTERVAL_S (on a thread of its own, with a deadline) and sets the gRPC health status NOT_SERVING at
the first failed ping, SERVING again at the first good one. So NOT_SERVING follows an outage within about
INTERVAL_S + TIMEOUT_S (< 2 s) and SERVING its end within INTERVAL_S. Calls during the outage are answered
UNAVAILABLE (cloud/service.py); the cause is logged once per incident, here, and the end with its length.
"""

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from grpc_health.v1 import health_pb2

log = logging.getLogger("ppfr.cloud")

INTERVAL_S = 0.5
TIMEOUT_S = 1.2
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GalleryWatch:
    def __init__(self, gallery, health_servicer, names, metrics=None):
        self.gallery, self.health, self.names, self.metrics = gallery, health_servicer, tuple(names), metrics
        self.down_since: float | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ppfr-gallery-ping")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._status = SERVING  # what the health service says (the server starts it SERVING)

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, err: BaseException) -> None:
        """Marks an incident; only its first failure is logged (with the cause)."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "gallery database unavailable: %s (answering UNAVAILABLE, health NOT_SERVING)", _cause(err)
            )
            if self.metrics is not None:
                self.metrics.gallery_up.set(0)

    def recovered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "gallery database reachable again after %.1fs: serving", time.monotonic() - self.down_since
            )
            self.down_since = None
            if self.metrics is not None:
                self.metrics.gallery_up.set(1)

    async def check(self) -> bool:
        """One ping; updates the state and the health status. True when the database answered."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._pool, self.gallery.ping), TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - whatever the driver raises, the database did not answer
            self.failed(err)
            await self._set(NOT_SERVING)
            return False
        self.recovered()
        await self._set(SERVING)
        return True

    async def _set(self, status) -> None:
        """The health status, when it changes (a failing call may have marked the incident first)."""
        if status != self._status:
            self._status = status
            for name in self.names:
                await self.health.set(name, status)

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(INTERVAL_S)
            await self.check()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        # The flag, not the cancel alone, ends the loop: before Python 3.12, wait_for swallows a cancel that
        # lands just as the ping answers (CPython gh-86296), and the loop pinged on while the server's stop
        # awaited it forever (seen twice on a loaded machine; tests/test_server_stop.py).
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._pool.shutdown(wait=False, cancel_futures=True)


def _cause(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {TIMEOUT_S:g}s"
    return str(err) or type(err).__name__
