"""A server's stop ends however its gallery health ping is timed (a real server on loopback, its real SQLite
gallery and health watch).

Twice on a loaded machine a stop outlasted its 150 s bound: the stop cancels the watch's ping loop, and on
Python < 3.12 asyncio.wait_for swallows a cancel that arrives when the awaited ping has just finished
(CPython gh-86296), so the loop pinged on and the stop awaited it forever. Here that moment is made exact:
the ping is held until the stop is queued right behind its answer."""

import asyncio
import threading

from helpers import serving


def test_a_stop_that_lands_as_a_health_ping_finishes_still_ends(bundle, tmp_path):
    entered, release = threading.Event(), threading.Event()
    with serving(bundle, tmp_path) as server:
        running = server.running
        watch, gallery = running.watch, running.gallery
        real_ping = gallery.ping

        def held_ping():
            entered.set()
            release.wait(30)
            real_ping()

        gallery.ping = held_ping  # the real ping, once the stop is ready to land behind it
        assert entered.wait(30), "the gallery's health ping never ran"

        async def stop_as_the_ping_answers():
            marker = watch._pool.submit(lambda: None)  # one worker: done once the ping's answer is queued
            release.set()
            marker.result(timeout=30)  # blocks this loop on purpose: the answer now waits in its queue
            stop = asyncio.ensure_future(running.stop(grace=0))  # cancels the watch right behind it
            await asyncio.wait_for(asyncio.shield(stop), 60)

        stopping = asyncio.run_coroutine_threadsafe(stop_as_the_ping_answers(), server._loop)
        stopping.result(timeout=120)  # before the fix: TimeoutError (the watch's loop never ended)
    assert watch._task.done()
