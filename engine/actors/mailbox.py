"""A container actor's mailbox: a bounded queue of commands and a queue of notices.

Notices (an exit seen, a restart timer, an exec that ended) come from the actor's own tasks,
at most a few per run, and are never dropped: they go first. Commands come from clients and
are bounded: a full mailbox refuses a new command at once instead of growing.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

from engine.actors.commands import Command, Notice
from engine.errors import Conflict, EngineError


@attrs.define(eq=False)
class Envelope:
    """A command and the reply its caller waits for."""

    command: Command
    done: trio.Event = attrs.field(factory=trio.Event)
    result: Any = None
    error: BaseException | None = None

    def reply(self, result: Any) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()

    def fail(self, error: BaseException) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class MailboxClosed(Exception):
    pass


class Mailbox:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._commands: deque[Envelope] = deque()
        self._notices: deque[Notice] = deque()
        self._wakeup = trio.Event()
        self._closed: EngineError | None = None

    def put(self, envelope: Envelope, *, name: str) -> None:
        if self._closed is not None:
            raise self._closed
        if len(self._commands) >= self.capacity:
            raise Conflict(f"container {name} has {self.capacity} commands pending; retry later")
        self._commands.append(envelope)
        self._wakeup.set()

    def notify(self, notice: Notice) -> None:
        if self._closed is None:
            self._notices.append(notice)
            self._wakeup.set()

    async def get(self) -> Envelope | Notice:
        return await self._next(commands=True)

    async def get_notice(self) -> Notice:
        """The next notice only, for a command that waits on news of the actor's own tasks
        (a start waiting for a copy's end); the commands keep their turn in the queue."""
        item = await self._next(commands=False)
        assert not isinstance(item, Envelope)
        return item

    async def _next(self, *, commands: bool) -> Envelope | Notice:
        while True:
            if self._notices:
                return self._notices.popleft()
            if commands and self._commands:
                return self._commands.popleft()
            if self._closed is not None:
                raise MailboxClosed
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    def close(self, error: EngineError) -> list[Envelope]:
        """Refuse every later command with ``error``; the queued ones, to be failed."""
        self._closed = error
        pending = list(self._commands)
        self._commands.clear()
        self._notices.clear()
        self._wakeup.set()
        return pending

    def __len__(self) -> int:
        return len(self._commands)
