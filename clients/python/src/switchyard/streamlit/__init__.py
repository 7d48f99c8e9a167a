"""Live Streamlit elements over a switchyard gateway (Streamlit custom
components v2, no iframe, no hand-written JavaScript).

- :func:`live` hands Python the retained state of some topics and the events
  since the previous run, and reruns its enclosing ``@st.fragment`` (not the
  whole page) when events arrive, at most ``max_reruns_per_sec`` times a
  second.
- :func:`live_table` draws events in the browser as they arrive, with no
  Python rerun at all, for feeds too fast for a rerun per batch.

Both load ``/_switchyard/client.js`` from the page's origin (the dashboard is
served through the gateway) and keep one subscription per ``key`` open across
reruns. With ``AUTH_SECRET`` in the dashboard's environment they mint a
short-lived token scoped to the topics for each session and refresh it.
The per-session bookkeeping is in :mod:`switchyard.streamlit._feed`; the page
side is ``live.js`` and ``table.js`` next to this file.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib import resources

import streamlit as st

from ._feed import TOKEN_REFRESH_SECS, TOKEN_TTL_SECS, Feed, LiveState

__all__ = ["TOKEN_REFRESH_SECS", "TOKEN_TTL_SECS", "LiveState", "live", "live_table"]

#: Where client.js is, relative to the page (the gateway serves both).
CLIENT_JS = "/_switchyard/client.js?esm"

_PATTERN = re.compile(r"^[A-Za-z0-9_.:/+#-]{1,256}$")

#: Most events ``history=`` may ask for (the gateway's own limit).
MAX_HISTORY = 1000


def _history(history: int) -> int:
    if isinstance(history, bool) or not isinstance(history, int) or not 0 <= history <= MAX_HISTORY:
        raise ValueError(f"history: give a whole number of events from 0 to {MAX_HISTORY}")
    return history


def _asset(name: str) -> str:
    """A component's module text: ``common.js`` (what both share) then ``name``."""
    folder = resources.files(__package__)
    return "\n".join(
        folder.joinpath(part).read_text(encoding="utf-8") for part in ("common.js", name)
    )


_live_component = st.components.v2.component("switchyard.live", js=_asset("live.js"))
_table_component = st.components.v2.component(
    "switchyard.live_table",
    js=_asset("table.js"),
    css="""
.sy-live-table { font-size: 0.875rem; overflow: auto; }
.sy-live-table .sy-status { opacity: 0.7; margin-bottom: 0.25rem; }
.sy-live-table table { border-collapse: collapse; width: 100%; }
.sy-live-table th, .sy-live-table td {
  text-align: left; padding: 0.15rem 0.5rem;
  border-bottom: 1px solid rgba(128, 128, 128, 0.25);
  font-variant-numeric: tabular-nums; white-space: nowrap;
}
""",
)


def _topics(topics: str | Iterable[str]) -> list[str]:
    chosen = [topics] if isinstance(topics, str) else list(topics)
    if not chosen:
        raise ValueError("topics: give at least one topic pattern (e.g. 'positions/#')")
    for pattern in chosen:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ValueError(
                f"topics: {pattern!r} is not a topic pattern "
                "(1-256 chars of A-Z a-z 0-9 _ . : / - and the wildcards + #)"
            )
    return chosen


def _client_js(url: str | None) -> str:
    """client.js's URL: ``url`` (a full endpoint) or the page's own gateway."""
    if url is None:
        return CLIENT_JS
    if not url.startswith(("http://", "https://", "/")):
        raise ValueError(f"url: {url!r} is not http(s)://…/_switchyard/client.js")
    return url if "?" in url else url + "?esm"


def _gateway_page() -> str | None:
    """Where the page should be opened: the gateway's public address, from the
    ``WEBSOCKET_PUBLIC_URI`` the gateway gives the dashboard it runs (``None``
    when something else runs it). Shown when the page was opened on
    Streamlit's own port."""
    parts = urllib.parse.urlsplit(os.environ.get("WEBSOCKET_PUBLIC_URI", ""))
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        return None
    return f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}/"


def _feed(slot: str) -> Feed:
    feed = st.session_state.get(slot)
    if not isinstance(feed, Feed):
        feed = Feed()
        st.session_state[slot] = feed
    return feed


def _noop() -> None:
    """Component state callbacks must exist for the values to reach Python."""


def live(
    topics: str | Iterable[str],
    *,
    key: str,
    max_reruns_per_sec: float = 4,
    history: int = 0,
    url: str | None = None,
    token: str | None = None,
) -> LiveState:
    """The live retained state of ``topics`` (a dict topic → data).

    Put it inside an ``@st.fragment``: when events arrive the page reruns that
    fragment only, at most ``max_reruns_per_sec`` times a second, and the
    returned :class:`LiveState`'s ``.events`` lists what arrived since the
    previous run (no event is handed out twice, none is skipped while fewer
    than 1000 wait; past that ``.missed`` counts the dropped ones). Outside a
    fragment it reruns the whole page. Fragment reruns wait for the run in
    progress; a full-page rerun (a widget outside fragments) stops it: stopped
    at ``live()``'s element, the next run gets the same events again, stopped
    later in the fragment, that run's events are not handed out again (the
    state always is).

    ``history=N`` starts with the last N matching events the gateway still
    holds (published before the page opened): the first ``.events`` lists
    them, oldest first, each with ``history=True``, before any live event.

    ``key`` names the subscription: it stays open across reruns. ``url`` is
    the full URL of the gateway's ``client.js`` when the page is not served
    through the gateway. ``token`` is an access token to use as is; without
    it, and with ``AUTH_SECRET`` set, one scoped to ``topics`` is minted for
    the session (lifetime TOKEN_TTL_SECS, 10 min, or SWITCHYARD_TOKEN_TTL
    seconds) and refreshed on a rerun when it nears expiry (the page asks
    for that rerun itself).
    """
    patterns = _topics(topics)
    if not max_reruns_per_sec > 0:
        raise ValueError("max_reruns_per_sec must be positive")
    history = _history(history)
    element_key = f"switchyard-live-{key}"
    slot = f"_switchyard_live_feed_{key}"
    # Taken on a copy, kept only once the element is out: Streamlit stops a
    # run that a newer rerun request overtakes at its next element, before
    # sending it; then neither this copy nor its acknowledgement counts, and
    # the next run gets the same events again.
    feed = replace(_feed(slot))
    # What the page sent last, read before mounting so this run's
    # acknowledgement goes out with this run's element.
    stored = st.session_state.get(element_key)
    payload = stored.get("feed") if isinstance(stored, dict) else None
    state = feed.take(payload)
    spent = payload.get("want_token") if isinstance(payload, dict) else None
    session_token = (
        token
        if token is not None
        else feed.session_token(patterns, sub=f"streamlit:{key}", spent=spent)
    )
    result = _live_component(
        key=element_key,
        data={
            "key": key,
            "topics": patterns,
            "client_js": _client_js(url),
            "max_reruns_per_sec": max_reruns_per_sec,
            "history": history,
            "gateway": _gateway_page(),
            "ack": feed.acknowledgement(),
            "token": session_token,
        },
        height="content",
        on_feed_change=_noop,
    )
    mounted = result.get("feed")
    if mounted is not payload and mounted != payload and isinstance(mounted, dict):
        # Not visible before mounting (first run of a key): take it now; the
        # page gets this acknowledgement with the next run.
        state = feed.take(mounted)
    st.session_state[slot] = feed
    if state.status == "wrong-port" and state.error:
        st.warning(state.error)  # nothing on this page can be live: say why
    return state


def live_table(
    topics: str | Iterable[str],
    *,
    key: str,
    columns: Sequence[str] | None = None,
    max_rows: int = 200,
    latest: bool = False,
    history: int = 0,
    url: str | None = None,
    token: str | None = None,
    height: int | None = None,
) -> None:
    """A table of ``topics``' events drawn in the browser, with no Python rerun.

    Newest first, at most ``max_rows`` rows, seeded with the retained state;
    ``latest=True`` keeps one row per topic, updated in place;
    ``history=N`` starts with the last N matching events published before
    the page opened (a trade tape that is not empty on a new page). ``columns``
    picks fields of dict payloads (default: the first event's keys). ``url``
    and ``token`` as for :func:`live`; a minted token is refreshed by a single
    rerun shortly before it expires.
    """
    patterns = _topics(topics)
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    history = _history(history)
    element_key = f"switchyard-table-{key}"
    feed = _feed(f"_switchyard_table_feed_{key}")
    stored = st.session_state.get(element_key)
    spent = stored.get("token") if isinstance(stored, dict) else None
    session_token = (
        token
        if token is not None
        else feed.session_token(patterns, sub=f"streamlit:{key}", spent=spent)
    )
    _table_component(
        key=element_key,
        data={
            "key": key,
            "topics": patterns,
            "client_js": _client_js(url),
            "columns": list(columns) if columns is not None else None,
            "max_rows": max_rows,
            "latest": latest,
            "history": history,
            "gateway": _gateway_page(),
            "token": session_token,
        },
        height=height if height is not None else "content",
        on_token_change=_noop,
    )
