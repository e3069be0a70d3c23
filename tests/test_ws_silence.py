"""The WebSocket transport's silence timer: one timer per job, the meaning of one per wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from marsconn.run.ws_transport import _Silence


class Messages:
    """Stands in for a websockets connection: recv() returns what was put, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()

    async def recv(self) -> str:
        return await self.queue.get()


def ws(messages: Messages) -> Any:
    return messages


async def test_messages_within_the_limit() -> None:
    messages = Messages()
    silence = _Silence()
    for i in range(100):
        messages.queue.put_nowait(f"m{i}")
        assert await silence.recv(ws(messages), 5.0) == f"m{i}"
    silence.close()


async def test_silence_is_a_timeout_and_leaves_the_task_uncancelled() -> None:
    messages = Messages()
    silence = _Silence()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await silence.recv(ws(messages), 0.05)
    assert loop.time() >= started + 0.05
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    # The connection is still usable: a message put now is the next one.
    messages.queue.put_nowait("late")
    assert await silence.recv(ws(messages), 5.0) == "late"
    silence.close()


async def test_time_between_waits_does_not_count() -> None:
    # A log handler that takes longer than the limit between two messages.
    messages = Messages()
    silence = _Silence()
    messages.queue.put_nowait("first")
    assert await silence.recv(ws(messages), 0.05) == "first"
    await asyncio.sleep(0.15)  # the handler; the timer fires meanwhile and does nothing
    asyncio.get_running_loop().call_later(0.01, messages.queue.put_nowait, "second")
    assert await silence.recv(ws(messages), 0.05) == "second"
    silence.close()


async def test_a_timer_set_for_an_earlier_wait_moves_to_the_current_deadline() -> None:
    messages = Messages()
    silence = _Silence()
    loop = asyncio.get_running_loop()
    messages.queue.put_nowait("quick")
    assert await silence.recv(ws(messages), 0.04) == "quick"
    # The timer armed for the first wait fires during this one, before its
    # deadline: it must move, not expire.
    await asyncio.sleep(0.02)
    started = loop.time()
    with pytest.raises(TimeoutError):
        await silence.recv(ws(messages), 0.08)
    assert loop.time() >= started + 0.08
    silence.close()


async def test_a_shorter_limit_moves_the_timer_earlier() -> None:
    # From the long wait for "started" to the shorter liveness: the pending
    # timer is later than the new deadline, so it is replaced.
    messages = Messages()

    async def job() -> str:
        silence = _Silence()  # in the task that waits, as in the transport
        try:
            messages.queue.put_nowait("started")
            assert await silence.recv(ws(messages), 3600.0) == "started"
            try:
                await silence.recv(ws(messages), 0.05)
            except TimeoutError:
                return "timeout"
            return "message"
        finally:
            silence.close()

    # Bounded, so that a timer left at an hour fails the test instead of hanging it.
    assert await asyncio.wait_for(job(), 30) == "timeout"


async def test_outside_cancellation_stays_a_cancellation() -> None:
    messages = Messages()

    async def waiter() -> str | bytes:
        silence = _Silence()
        try:
            return await silence.recv(ws(messages), 5.0)
        finally:
            silence.close()

    task = asyncio.ensure_future(waiter())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_outside_cancellation_at_expiry_stays_a_cancellation() -> None:
    messages = Messages()
    outcome: list[str] = []

    async def waiter() -> None:
        silence = _Silence()
        try:
            await silence.recv(ws(messages), 0.05)
        except TimeoutError:
            outcome.append("timeout")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    task = asyncio.ensure_future(waiter())
    loop = asyncio.get_running_loop()
    # Cancel from outside in the same loop iteration as the expiry.
    loop.call_at(loop.time() + 0.05, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_close_disarms() -> None:
    messages = Messages()
    silence = _Silence()
    messages.queue.put_nowait("x")
    await silence.recv(ws(messages), 0.01)
    silence.close()
    silence.close()
    await asyncio.sleep(0.03)  # nothing fires into this task
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
