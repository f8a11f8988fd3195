"""Pipeline calls taken in turn: fair between people, with searches behind single images.

The engine runs one pipeline call at a time (``TurnLock``). Calls made inside ``in_background()`` (a search's)
let waiting single images go first, a bounded number of times; calls made ``on_behalf_of(session)`` (a browser
session) are served the session served longest ago first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["FORGET_AFTER_GRANTS", "TurnLock", "in_background", "on_behalf_of"]


_BACKGROUND: ContextVar[bool] = ContextVar("tmpdiff_background", default=False)


@contextmanager
def in_background() -> Iterator[None]:
    """Pipeline calls made in the block (a search's) wait behind people's single images (see ``TurnLock``)."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


_PARTY: ContextVar[str | None] = ContextVar("tmpdiff_party", default=None)


FORGET_AFTER_GRANTS = 1024  # a party's last turn is kept this many turns (see TurnLock._forget_long_served)


@contextmanager
def on_behalf_of(party: str | None) -> Iterator[None]:
    """Turns asked in the block are one party's (a browser session's): see ``TurnLock``."""
    token = _PARTY.set(party)
    try:
        yield
    finally:
        _PARTY.reset(token)


class TurnLock:
    """A lock taken in turn: in the order asked for (``threading.Lock`` lets a thread that releases and asks
    again cut in line, so a search could starve everyone's images), except that

    - a background call (a search's, see ``in_background``) lets waiting single images go first, at most
      ``yield_turns`` times, so it is never starved either;
    - among waiting images of several parties (``on_behalf_of``: browser sessions), the party served longest ago
      goes first, so one user's queued images do not hold up another's one image; a party's own turns, and
      calls of no party, keep the order asked.

    Re-entrant for the thread that holds it."""

    def __init__(self, yield_turns: int = 4) -> None:
        self.yield_turns = yield_turns
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._waiting: dict[int, tuple[bool, str | None]] = {}  # ticket -> (background, party)
        self._given_up: dict[int, int] = {}  # background ticket -> turns it let images take
        self._served: dict[str, int] = {}  # party -> the grant that last served it
        self._grants = 0
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> TurnLock:
        me = threading.get_ident()
        with self._changed:
            if self._owner == me:
                self._depth += 1
                return self
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting[ticket] = (_BACKGROUND.get(), _PARTY.get())
            self._changed.wait_for(lambda: self._owner is None and self._next_up() == ticket)
            _, party = self._waiting.pop(ticket)
            self._given_up.pop(ticket, None)
            for other, (background, _) in self._waiting.items():  # a background call asked earlier gave up its turn
                if background and other < ticket:
                    self._given_up[other] = self._given_up.get(other, 0) + 1
            self._grants += 1
            if party is not None:
                self._served[party] = self._grants
            if len(self._served) > 2 * FORGET_AFTER_GRANTS:  # a long-lived app meets endless sessions
                self._forget_long_served()
            self._owner, self._depth = me, 1
        return self

    @property
    def taken(self) -> bool:
        """Whether someone holds the lock or waits for it (a newcomer would wait)."""
        with self._changed:
            return self._owner is not None or bool(self._waiting)

    def _next_up(self) -> int:
        """The first ticket asked, unless images wait: then the image of the party served longest ago (a
        background call first asked goes after them until it has given up its turns)."""
        first = min(self._waiting)
        images = [t for t, (background, _) in self._waiting.items() if not background]
        first_is_background = self._waiting[first][0]
        if not images or (first_is_background and self._given_up.get(first, 0) >= self.yield_turns):
            return first
        return min(images, key=self._fair_order)

    def _forget_long_served(self) -> None:
        """Drops parties not served in the last ``FORGET_AFTER_GRANTS`` grants: all such would go before every
        party still remembered anyway, as one never served does."""
        horizon = self._grants - FORGET_AFTER_GRANTS
        self._served = {party: grant for party, grant in self._served.items() if grant > horizon}

    def _fair_order(self, ticket: int) -> tuple[int, int]:
        party = self._waiting[ticket][1]
        return (self._served.get(party, 0) if party is not None else 0, ticket)

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._changed.notify_all()

