"""Events: what happened to containers, images, networks and the daemon.

The bus keeps the most recent events (for ``events --since``) and fans each new one out to
subscribers through bounded channels. A subscriber that falls ``SUBSCRIBER_BUFFER`` events
behind is cut off (its channel closes with a "lagged" marker) rather than slowing the
daemon or growing memory without bound.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import trio

HISTORY = 2048
SUBSCRIBER_BUFFER = 1024


@attrs.frozen
class Event:
    type: str  # container | image | network | volume | daemon
    action: str  # create, start, die, restart, pull, tag, ...
    id: str
    time: float = attrs.field(factory=time.time)
    attributes: dict[str, Any] = attrs.field(factory=dict)

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

    def offer(self, event: Event) -> None:
        if self.filter is not None and not self.filter(event):
            return
        try:
            self.send.send_nowait(event)
        except trio.WouldBlock:
            self.lagged = True
            self.bus.unsubscribe(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.bus.unsubscribe(self)

    def close(self) -> None:
        self.send.close()


class EventBus:
    def __init__(self) -> None:
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self._subscribers: set[Subscription] = set()
        self._observers: list[Callable[[Event], None]] = []

    def publish(self, event: Event) -> None:
        self.history.append(event)
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
