"""The one boundary between grpcio's asyncio thread and the daemon's trio loop.

grpc.aio serves on an asyncio loop in a thread of its own; handlers must run on trio, where
every other part of the daemon lives. ``TrioPortal.call`` (awaited on the asyncio loop)
starts the handler as a task in a trio nursery (``TrioToken.run_sync_soon``: no thread is
blocked while it runs) and resolves an asyncio future with its outcome. A gRPC call that is
cancelled (the client went away, its deadline passed) cancels the trio task's scope.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio

from engine.errors import Unavailable

T = TypeVar("T")


class TrioPortal:
    def __init__(self, token: trio.lowlevel.TrioToken, nursery: trio.Nursery) -> None:
        self.token = token
        self.nursery = nursery

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on trio; called from the asyncio loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[outcome.Outcome[T]] = loop.create_future()
        scope = trio.CancelScope()

        def deliver(result: outcome.Outcome[T]) -> None:
            if not future.done():
                future.set_result(result)

        async def task() -> None:
            result: outcome.Outcome[T] = outcome.Error(
                Unavailable("the daemon is shutting down; the request was not completed"))
            try:
                with scope:
                    try:
                        result = outcome.Value(await fn(*args))
                    except Exception as e:  # the handler's error is the caller's answer
                        result = outcome.Error(e)
            finally:
                try:
                    loop.call_soon_threadsafe(deliver, result)
                except RuntimeError:
                    pass  # the asyncio loop is closed: nobody is waiting any more

        try:
            self.token.run_sync_soon(lambda: self.nursery.start_soon(task))
        except trio.RunFinishedError:
            raise Unavailable("the daemon is shutting down") from None
        try:
            result = await future
        except asyncio.CancelledError:
            try:
                self.token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
            raise
        return result.unwrap()
