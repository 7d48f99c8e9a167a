"""Subscribing: one background connection that keeps a live copy of the state.

A :class:`Subscriber` holds one WebSocket (the ``websockets`` library, on a
thread of its own) to the gateway, resumes from the last ``(epoch, seq)`` it
saw after any disconnect, and so receives every event exactly once, or is
told to reset (the gateway restarted or lost its history) and gets the
whole state again. When the gateway's WebSocket is disabled it long-polls
``/_switchyard/state`` instead, with the same guarantee.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from ._token import token_expiry

__all__ = ["Event", "Subscriber", "TokenSource", "matches"]

log = logging.getLogger("switchyard")

DEFAULT_WS_URL = "ws://127.0.0.1:8080/ws"

#: A token, or a function that returns a fresh one (called again before
#: the current one expires, and after the gateway refuses it).
TokenSource = str | Callable[[], str]

#: WebSocket close codes the gateway uses for access refusals.
CLOSE_UNAUTHORIZED = 4001
CLOSE_FORBIDDEN = 4003

_MIN_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_POLL_WAIT = 25


@dataclass(frozen=True)
class Event:
    """One event as the gateway delivered it."""

    topic: str
    data: Any
    seq: int
    epoch: str
    retain: bool = False
    ts: str | None = None
    #: Published before the page subscribed: one of the last events that
    #: ``live(..., history=N)`` starts with.
    history: bool = False


def matches(pattern: str, topic: str) -> bool:
    """MQTT-style match: ``+`` is one level, ``#`` the rest (``a/#`` matches ``a``)."""
    want = pattern.split("/")
    have = topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


class _Refused(Exception):
    """The gateway refused our token (status: unauthorized or forbidden)."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class _WebSocketDisabled(Exception):
    pass


class Subscriber:
    """A live subscription to ``topics`` on a switchyard gateway.

    ``url`` is the full WebSocket endpoint; it defaults to
    ``SWITCHYARD_WS_URL`` (set for a dashboard the gateway supervises), else
    ``ws://127.0.0.1:8080/ws``. ``token`` is needed when the gateway has
    AUTH_SECRET: a string, or a function returning a fresh token.

    Callbacks run on the subscriber's own thread, in event order; keep them
    short. ``state`` is a copy, safe to read from any thread. Safe to keep
    in ``st.cache_resource``; use it as a context manager or call
    :meth:`close`.
    """

    def __init__(
        self,
        topics: Iterable[str] | str = ("#",),
        url: str | None = None,
        token: TokenSource | None = None,
        *,
        recent: int = 1000,
        state_url: str | None = None,
        open_timeout: float = 10,
    ) -> None:
        import os

        self.topics = [topics] if isinstance(topics, str) else list(topics)
        self.url = url or os.environ.get("SWITCHYARD_WS_URL") or DEFAULT_WS_URL
        self.state_url = state_url or _state_url(self.url)
        self._token_source = token
        self._open_timeout = open_timeout
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._epoch: str | None = None
        self._seq = 0
        self._recent: deque[Event] = deque(maxlen=max(1, recent))
        self._handlers: list[tuple[str, Callable[[Event], None]]] = []
        self._reset_handlers: list[Callable[[dict[str, Any]], None]] = []
        self._status_handlers: list[Callable[[str], None]] = []
        self._status = "connecting"
        #: Whether the current connection got as far as the gateway's state.
        self._opened = False
        self._ready = threading.Event()
        self._closed = threading.Event()
        self._socket: ClientConnection | None = None
        self._thread = threading.Thread(target=self._run, name="switchyard-subscriber", daemon=True)
        self._thread.start()

    # -- what callers use -------------------------------------------------

    def on(self, pattern: str, callback: Callable[[Event], None] | None = None) -> Any:
        """Calls ``callback(event)`` for each event whose topic matches
        ``pattern``. Usable as a decorator: ``@sub.on("positions/+")``."""

        def register(fn: Callable[[Event], None]) -> Callable[[Event], None]:
            with self._lock:
                self._handlers.append((pattern, fn))
            return fn

        return register(callback) if callback is not None else register

    def on_reset(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """Calls ``callback(state)`` when the gateway could not resume and the
        state was replaced (a restart, or Redis lost its history)."""
        with self._lock:
            self._reset_handlers.append(callback)

    def on_status(self, callback: Callable[[str], None]) -> None:
        """Calls ``callback(status)``: connecting, open, polling, reconnecting,
        unauthorized, forbidden, closed."""
        with self._lock:
            self._status_handlers.append(callback)

    @property
    def state(self) -> dict[str, Any]:
        """The retained state, topic → data (a copy)."""
        with self._lock:
            return dict(self._state)

    @property
    def position(self) -> tuple[str | None, int]:
        """The last ``(epoch, seq)`` seen."""
        with self._lock:
            return self._epoch, self._seq

    @property
    def status(self) -> str:
        return self._status

    def recent(self) -> list[Event]:
        """The most recent events (up to ``recent``), oldest first."""
        with self._lock:
            return list(self._recent)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Waits for the first state from the gateway; True when it came."""
        return self._ready.wait(timeout)

    def close(self) -> None:
        """Stops the subscription and waits briefly for its thread."""
        self._closed.set()
        socket = self._socket
        if socket is not None:
            try:
                socket.close()
            except Exception:  # closing is best effort
                pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
        self._set_status("closed")

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- the connection thread ---------------------------------------------

    def _run(self) -> None:
        backoff = _MIN_BACKOFF
        polling = False
        token_tries = 0
        while not self._closed.is_set():
            self._opened = False
            try:
                if polling:
                    self._poll_once()
                else:
                    self._websocket_session()
            except _WebSocketDisabled:
                log.info("switchyard: WebSocket disabled on the gateway; long-polling")
                polling = True
                continue
            except _Refused as refusal:
                # A function token may give a fresh one; a fixed one will not.
                token_tries += 1
                if not callable(self._token_source) or token_tries > 3:
                    log.warning("switchyard: %s; not reconnecting", refusal)
                    self._set_status(refusal.status)
                    return
            except Exception as error:  # any failure means: reconnect
                if self._closed.is_set():
                    break
                log.info("switchyard: connection lost (%s); reconnecting", error)
            else:
                if polling:
                    backoff = _MIN_BACKOFF
                    continue
            if self._closed.is_set():
                break
            if self._opened:
                # It was serving: this is a new failure, not the same one again.
                backoff = _MIN_BACKOFF
                token_tries = 0
            self._set_status("reconnecting")
            self._closed.wait(random.uniform(0, backoff))
            backoff = min(_MAX_BACKOFF, backoff * 2)
        self._set_status("closed")

    def _token(self) -> str | None:
        source = self._token_source
        if source is None:
            return None
        return source() if callable(source) else source

    def _query(self, extra: dict[str, str] | None = None) -> str:
        params = {"topics": ",".join(self.topics)}
        with self._lock:
            if self._epoch is not None:
                params["epoch"] = self._epoch
                params["since"] = str(self._seq)
        params.update(extra or {})
        return urllib.parse.urlencode(params, safe="/+:,")

    def _websocket_session(self) -> None:
        separator = "&" if "?" in self.url else "?"
        uri = f"{self.url}{separator}{self._query()}"
        token = self._token()
        try:
            with connect(uri, open_timeout=self._open_timeout, max_size=None) as socket:
                self._socket = socket
                try:
                    self._serve(socket, token)
                finally:
                    self._socket = None
        except InvalidStatus as error:
            status = error.response.status_code
            if status == 404:
                raise _WebSocketDisabled from None
            if status in (401, 403):
                raise _Refused(
                    "unauthorized" if status == 401 else "forbidden", f"gateway answered {status}"
                ) from None
            raise
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
            if code == CLOSE_UNAUTHORIZED:
                raise _Refused("unauthorized", f"closed {code}: {closed.rcvd}") from None
            if code == CLOSE_FORBIDDEN:
                raise _Refused("forbidden", f"closed {code}: {closed.rcvd}") from None
            raise

    def _serve(self, socket: ClientConnection, token: str | None) -> None:
        """Authenticates (when there is a token), then handles frames until
        the connection ends or :meth:`close` is called."""
        if token is not None:
            socket.send(json.dumps({"type": "auth", "token": token}))
        refresh_at = _refresh_time(token) if callable(self._token_source) else None
        while not self._closed.is_set():
            if refresh_at is not None and time.time() >= refresh_at:
                token = self._token()
                if token is not None:
                    socket.send(json.dumps({"type": "auth", "token": token}))
                refresh_at = _refresh_time(token)
            try:
                message = socket.recv(timeout=1.0)
            except TimeoutError:
                continue
            self._frame(json.loads(message))

    def _poll_once(self) -> None:
        token = self._token()
        first = self._epoch is None
        extra = {} if first else {"wait": str(_POLL_WAIT)}
        request = urllib.request.Request(f"{self.state_url}?{self._query(extra)}")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=_POLL_WAIT + 10) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code in (401, 403):
                status = "unauthorized" if error.code == 401 else "forbidden"
                raise _Refused(status, f"gateway answered {error.code}") from None
            raise
        self._set_status("polling")
        self._opened = True
        if answer.get("resumed"):
            for frame in answer.get("events", []):
                self._frame(frame)
            with self._lock:
                self._seq = max(self._seq, int(answer.get("seq", self._seq)))
        else:
            self._replace(answer, reset=not first)

    # -- frames ------------------------------------------------------------

    def _frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "hello":
            self._opened = True
            self._set_status("open")
            if frame.get("resumed"):
                # The missed events follow as event frames; the hello's seq
                # is the gateway's current one, not ours.
                self._ready.set()
            else:
                self._replace(frame, reset=self._epoch is not None)
        elif kind == "event":
            self._event(frame)
        elif kind == "reset":
            self._replace(frame, reset=True)
        elif kind == "subscribed":
            with self._lock:
                for topic, entry in frame.get("state", {}).items():
                    self._state[topic] = entry.get("data")
        elif kind == "error":
            log.warning("switchyard: gateway error %s: %s", frame.get("code"), frame.get("message"))

    def _replace(self, frame: dict[str, Any], *, reset: bool) -> None:
        state = {topic: entry.get("data") for topic, entry in frame.get("state", {}).items()}
        with self._lock:
            self._state = state
            self._epoch = str(frame["epoch"])
            self._seq = int(frame["seq"])
            handlers = list(self._reset_handlers) if reset else []
        self._ready.set()
        for handler in handlers:
            _call(handler, dict(state))

    def _event(self, frame: dict[str, Any]) -> None:
        seq = int(frame["seq"])
        with self._lock:
            if seq <= self._seq:
                return  # already seen: exactly once
            self._seq = seq
            event = Event(
                topic=str(frame["topic"]),
                data=frame.get("data"),
                seq=seq,
                epoch=self._epoch or "",
                retain=bool(frame.get("retain", False)),
                ts=frame.get("ts"),
            )
            if event.retain:
                if event.data is None:
                    self._state.pop(event.topic, None)
                else:
                    self._state[event.topic] = event.data
            self._recent.append(event)
            handlers = [fn for pattern, fn in self._handlers if matches(pattern, event.topic)]
        for handler in handlers:
            _call(handler, event)

    def _set_status(self, status: str) -> None:
        if status == self._status:
            return
        self._status = status
        with self._lock:
            handlers = list(self._status_handlers)
        for handler in handlers:
            _call(handler, status)


def _call(handler: Callable[[Any], None], value: Any) -> None:
    try:
        handler(value)
    except Exception:
        log.exception("switchyard: a callback raised")


def _refresh_time(token: str | None) -> float | None:
    """When to ask for a fresh token: 30 s before exp, or at 3/4 of what is
    left when that is sooner."""
    exp = token_expiry(token) if token else None
    if exp is None:
        return None
    now = time.time()
    left = max(0.0, exp - now)
    return now + min(max(0.0, left - 30), left * 0.75)


def _state_url(ws_url: str) -> str:
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/_switchyard/state", "", ""))
