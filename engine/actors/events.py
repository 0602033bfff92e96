"""Events: what happened to containers, images, networks and the daemon.

The bus keeps the most recent events (for ``events --since``: at most ``HISTORY`` of them
and ``HISTORY_BYTES`` of their text) and fans each new one out to subscribers through
bounded channels. A subscriber that falls ``SUBSCRIBER_BUFFER`` events or
``SUBSCRIBER_BYTES`` behind is cut off (its channel closes with a "lagged" marker) rather
than slowing the daemon or growing memory without bound.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

HISTORY = 2048
HISTORY_BYTES = 8 * 1024 * 1024
SUBSCRIBER_BUFFER = 1024
SUBSCRIBER_BYTES = 2 * HISTORY_BYTES  # a replay of the whole history must fit
EVENT_OVERHEAD = 256  # bytes an event costs besides its attributes' text


def event_size(attributes: dict[str, Any]) -> int:
    """About what an event holds in memory: its attributes' text (labels can be large)."""
    return EVENT_OVERHEAD + sum(len(str(k)) + len(str(v)) for k, v in attributes.items())


@attrs.frozen
class Event:
    type: str  # container | image | network | volume | daemon
    action: str  # create, start, die, restart, pull, tag, ...
    id: str
    time: float = attrs.field(factory=time.time)
    attributes: dict[str, Any] = attrs.field(factory=dict)
    size: int = attrs.field(init=False, eq=False, repr=False)

    @size.default
    def _size(self) -> int:
        return event_size(self.attributes)

    def to_wire(self) -> dict[str, Any]:
        return {
            "Type": self.type,
            "Action": self.action,
            "Actor": {"ID": self.id, "Attributes": self.attributes},
            "time": int(self.time),
            "timeNano": int(self.time * 1e9),
        }


EventFilter = Callable[[Event], bool]


class Subscription:
    def __init__(self, bus: EventBus, flt: EventFilter | None) -> None:
        self.bus = bus
        self.filter = flt
        self.send, self.receive = trio.open_memory_channel[Event | None](SUBSCRIBER_BUFFER)
        self.lagged = False
        self.pending_bytes = 0  # of events offered and not yet taken

    def offer(self, event: Event) -> None:
        if self.filter is not None and not self.filter(event):
            return
        if self.pending_bytes + event.size > SUBSCRIBER_BYTES:
            self.lagged = True
            self.bus.unsubscribe(self)
            return
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self.bus.unsubscribe(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.bus.unsubscribe(self)
        else:
            self.pending_bytes += event.size

    def taken(self, event: Event) -> None:
        """The consumer has ``event`` out of the channel: it no longer counts as pending."""
        self.pending_bytes -= event.size

    def close(self) -> None:
        self.send.close()


class EventBus:
    def __init__(self) -> None:
        self.history: deque[Event] = deque()
        self.history_bytes = 0
        self._subscribers: set[Subscription] = set()
        self._observers: list[Callable[[Event], None]] = []

    def publish(self, event: Event) -> None:
        self.history.append(event)
        self.history_bytes += event.size
        while len(self.history) > HISTORY or self.history_bytes > HISTORY_BYTES:
            self.history_bytes -= self.history.popleft().size
        for observer in self._observers:
            observer(event)
        for sub in list(self._subscribers):
            sub.offer(event)

    def observe(self, callback: Callable[[Event], None]) -> None:
        """A part of the daemon that must see every event (log rotation): called at once
        for each, never dropped, not counted among the subscribers. It must not block."""
        self._observers.append(callback)

    def emit(self, type: str, action: str, id: str, **attributes: Any) -> Event:
        event = Event(type, action, id, attributes=attributes)
        self.publish(event)
        return event

    def subscribe(self, flt: EventFilter | None = None, since: float | None = None) -> Subscription:
        sub = Subscription(self, flt)
        if since is not None:
            for event in list(self.history):
                if event.time >= since:
                    sub.offer(event)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)
        sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
