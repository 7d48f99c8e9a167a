"""What one ``live()`` key remembers between runs of a Streamlit session.

The page side (live.js) numbers every event it receives and sends Python the
events not acknowledged yet, with the whole current state. :class:`Feed`
takes such a payload: it hands out each event once (those numbered past the
last acknowledgement), remembers the new acknowledgement for the page, and
keeps the session's access token fresh. No Streamlit here: the component
itself is in ``__init__``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._subscribe import Event
from .._token import mint_token

__all__ = ["TOKEN_REFRESH_SECS", "TOKEN_TTL_SECS", "Feed", "LiveState"]

#: Lifetime of the token minted for a session (AUTH_SECRET set); the
#: SWITCHYARD_TOKEN_TTL environment variable (seconds) overrides it.
TOKEN_TTL_SECS = 600
#: A run mints a fresh token when the current one has less than this (or a
#: third of its lifetime, if less) left.
TOKEN_REFRESH_SECS = 180


def token_ttl() -> float:
    """TOKEN_TTL_SECS, or SWITCHYARD_TOKEN_TTL when it is a number ≥ 10."""
    raw = os.environ.get("SWITCHYARD_TOKEN_TTL", "")
    try:
        chosen = float(raw)
    except ValueError:
        return TOKEN_TTL_SECS
    return chosen if chosen >= 10 else TOKEN_TTL_SECS


class LiveState(dict[str, Any]):
    """The retained state of the subscribed topics, ``topic -> data``.

    Attributes beyond the mapping:

    - ``events``: the events received since the previous run, oldest first
      (each a :class:`switchyard.Event`; retained and plain ones alike).
    - ``reset``: the gateway replaced the state since the previous run (it
      restarted or lost its history): the mapping is the new state, and
      ``events`` may hold events from before the reset.
    - ``missed``: events that never reached this run because more than the
      page's buffer (1000) arrived unacknowledged; the state is still exact.
    - ``status``: where the page's subscription is. ``connecting``; ``open``
      (WebSocket); ``fallback-sse`` / ``fallback-poll`` (WebSocket off or
      blocked); ``unauthorized`` / ``forbidden`` (the token was refused /
      does not cover the topics: final); ``closed``; ``wrong-port`` (the page
      was opened on Streamlit's own port, not through the gateway: ``error``
      says which address to open, and ``live()`` shows it as a warning);
      ``failed`` (client.js could not be loaded for another reason).
    - ``error``: the code of the last ``error`` frame, or the load failure's
      message, or None.
    - ``epoch`` / ``seq``: the page's position in the gateway's history.
    """

    def __init__(
        self,
        state: Mapping[str, Any] | None = None,
        *,
        events: Sequence[Event] = (),
        reset: bool = False,
        missed: int = 0,
        status: str = "connecting",
        error: str | None = None,
        epoch: str | None = None,
        seq: int = 0,
    ) -> None:
        super().__init__(state or {})
        self.events: list[Event] = list(events)
        self.reset = reset
        self.missed = missed
        self.status = status
        self.error = error
        self.epoch = epoch
        self.seq = seq

    def __repr__(self) -> str:
        return (
            f"LiveState({dict.__repr__(self)}, events={len(self.events)}, "
            f"reset={self.reset}, status={self.status!r})"
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _event(raw: Mapping[str, Any]) -> Event:
    ts = raw.get("ts")
    epoch = raw.get("epoch")
    return Event(
        topic=str(raw.get("topic", "")),
        data=raw.get("data"),
        seq=_int(raw.get("seq")),
        epoch=epoch if isinstance(epoch, str) else "",
        retain=bool(raw.get("retain", False)),
        ts=ts if isinstance(ts, str) else None,
        history=raw.get("history") is True,
    )


@dataclass
class Feed:
    """Bookkeeping for one ``live()`` key in one Streamlit session."""

    #: The page subscription the acknowledgement refers to (live.js makes a
    #: new one when the page reloads or the topics change).
    instance: str | None = None
    #: Number of the last event handed out (the page numbers them 1, 2, 3…).
    ack: int = 0
    #: The page's count of resets, as last seen.
    resets_seen: int = 0
    #: Number of the last payload taken (the page sends it again when no
    #: run acknowledges it: Streamlit reruns one fragment per update batch).
    sent: int = 0
    #: The last state handed out (kept for runs with no new payload).
    last: LiveState = field(default_factory=LiveState)
    token: str | None = None
    token_expires: float = 0.0

    def take(self, payload: Any) -> LiveState:
        """The state for this run from the page's latest payload (or None)."""
        if not isinstance(payload, Mapping):
            return LiveState(
                self.last,
                status=self.last.status,
                error=self.last.error,
                epoch=self.last.epoch,
                seq=self.last.seq,
            )
        instance = payload.get("instance")
        if not isinstance(instance, str):
            return self.take(None)
        if instance != self.instance:
            # A subscription this session has not seen: what an earlier
            # session took (after Streamlit restarted) is not missed here.
            self.instance, self.ack, self.resets_seen = instance, _int(payload.get("base")), 0
            self.sent = 0
        raw_events = payload.get("events")
        numbered = [
            (_int(raw.get("n")), raw)
            for raw in (raw_events if isinstance(raw_events, list) else [])
            if isinstance(raw, Mapping)
        ]
        numbered = [(n, raw) for n, raw in numbered if n > self.ack]
        fresh = [_event(raw) for _, raw in numbered]
        # Numbers are gap-free: the ones between the last taken and the
        # first sent were dropped by the page (more than 1000 waited).
        upto = _int(payload.get("upto"))
        first = min((n for n, _ in numbered), default=upto + 1)
        missed = max(0, first - self.ack - 1)
        resets = _int(payload.get("resets"))
        reset = resets > self.resets_seen
        self.resets_seen = max(self.resets_seen, resets)
        self.ack = max(self.ack, upto)
        self.sent = max(self.sent, _int(payload.get("sent")))
        state = payload.get("state")
        epoch = payload.get("epoch")
        error = payload.get("error")
        self.last = LiveState(
            state if isinstance(state, Mapping) else {},
            events=fresh,
            reset=reset,
            missed=missed,
            status=str(payload.get("status") or "connecting"),
            error=error if isinstance(error, str) else None,
            epoch=epoch if isinstance(epoch, str) else None,
            seq=_int(payload.get("seq")),
        )
        return self.last

    def acknowledgement(self) -> dict[str, Any]:
        """What the page needs to drop the events handed out."""
        return {"instance": self.instance, "n": self.ack, "sent": self.sent}

    def session_token(
        self,
        topics: Iterable[str],
        *,
        sub: str,
        spent: Any = None,
    ) -> str | None:
        """A token scoped to ``topics`` when AUTH_SECRET is set, else None.

        Minted once per session (lifetime: :func:`token_ttl`) and again when
        less than TOKEN_REFRESH_SECS (or a third of the lifetime) is left or
        the page reports this token as nearly spent (``spent``).
        """
        secret = os.environ.get("AUTH_SECRET")
        if not secret:
            return None
        now = time.time()
        ttl = token_ttl()
        if (
            self.token is None
            or self.token_expires - now < min(TOKEN_REFRESH_SECS, ttl / 3)
            or (spent is not None and spent == self.token)
        ):
            self.token = mint_token(subscribe=list(topics), ttl=ttl, secret=secret, sub=sub)
            self.token_expires = now + ttl
        return self.token
