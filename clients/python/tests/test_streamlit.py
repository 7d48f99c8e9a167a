"""switchyard.streamlit: the Python side of live() and live_table().

The bookkeeping (each event handed out once, acknowledgements, resets, the
page's overflow, tokens) is driven directly through Feed and through
Streamlit's AppTest, which runs a real script with the real component: the
payload the page would send is put where Streamlit puts it (the component's
state in session_state) and what goes back to the page is read from the
element. Tokens are checked against the real gateway. The browser half is
tests/e2e/live_e2e.py.
"""

from __future__ import annotations

import json
import time
import urllib.error
from typing import Any

import pytest
from conftest import SECRET, MakeGateway
from streamlit.testing.v1 import AppTest

from switchyard import Event, Publisher
from switchyard._token import token_expiry
from switchyard.streamlit import TOKEN_REFRESH_SECS, TOKEN_TTL_SECS, LiveState, live
from switchyard.streamlit._feed import Feed, token_ttl


def payload(instance: str = "page-1", events: range = range(0), **extra: Any) -> dict[str, Any]:
    """What live.js sends: unacknowledged events numbered n, the whole state."""
    listed = [
        {"n": n, "topic": "px/a", "data": {"i": n}, "seq": 100 + n, "retain": True, "epoch": "E"}
        for n in events
    ]
    body: dict[str, Any] = {
        "instance": instance,
        "upto": max(events, default=0),
        "events": listed,
        "base": 0,
        "resets": 0,
        "state": {"px/a": listed[-1]["data"]} if listed else {},
        "epoch": "E",
        "seq": 100 + max(events, default=0),
        "status": "open",
        "error": None,
        "want_token": None,
    }
    body.update(extra)
    return body


# ------------------------------------------------------------------ Feed


def test_live_state_is_a_dict_of_the_data_with_the_new_events() -> None:
    state = Feed().take(payload(events=range(1, 3)))
    assert isinstance(state, dict) and isinstance(state, LiveState)
    assert state == {"px/a": {"i": 2}}  # the data itself, no {seq, data} wrapper
    assert state["px/a"]["i"] == 2
    assert state.events == [
        Event("px/a", {"i": 1}, 101, "E", retain=True),
        Event("px/a", {"i": 2}, 102, "E", retain=True),
    ]
    assert (state.status, state.epoch, state.seq, state.reset, state.missed) == (
        "open",
        "E",
        102,
        False,
        0,
    )


def test_each_event_is_handed_out_once_across_overlapping_payloads() -> None:
    feed = Feed()
    assert [e.data["i"] for e in feed.take(payload(events=range(1, 4))).events] == [1, 2, 3]
    assert feed.acknowledgement() == {"instance": "page-1", "n": 3, "sent": 0}
    # A rerun for another reason sees the same payload: nothing new.
    again = feed.take(payload(events=range(1, 4)))
    assert again.events == [] and again == {"px/a": {"i": 3}}
    # The page sent again before our acknowledgement reached it: 2..5.
    assert [e.data["i"] for e in feed.take(payload(events=range(2, 6))).events] == [4, 5]
    assert feed.acknowledgement() == {"instance": "page-1", "n": 5, "sent": 0}
    # A run with no payload at all keeps the last state, with no events.
    quiet = feed.take(None)
    assert quiet == {"px/a": {"i": 5}} and quiet.events == [] and quiet.status == "open"


def test_every_send_is_acknowledged_even_with_no_new_event() -> None:
    # The page sends again what no run acknowledged (Streamlit reruns one
    # fragment per batch of widget updates): the number of each send taken
    # goes back, events or not.
    feed = Feed()
    feed.take(payload(events=range(1, 3), sent=1))
    assert feed.acknowledgement() == {"instance": "page-1", "n": 2, "sent": 1}
    status_only = feed.take(payload(events=range(1, 3), sent=2, status="fallback-sse"))
    assert status_only.events == [] and status_only.status == "fallback-sse"
    assert feed.acknowledgement() == {"instance": "page-1", "n": 2, "sent": 2}


def test_a_new_page_subscription_starts_its_numbering_over() -> None:
    feed = Feed()
    feed.take(payload("page-1", range(1, 8)))
    fresh = feed.take(payload("page-2", range(1, 3)))
    assert [e.data["i"] for e in fresh.events] == [1, 2]
    assert feed.acknowledgement() == {"instance": "page-2", "n": 2, "sent": 0}


def test_reset_and_overflow_are_reported_once() -> None:
    feed = Feed()
    feed.take(payload(events=range(1, 3)))
    # The gateway restarted (the page's first reset), one event after it.
    after = feed.take(payload(events=range(3, 4), resets=1))
    assert after.reset and [e.data["i"] for e in after.events] == [3]
    assert not feed.take(payload(events=range(3, 4), resets=1)).reset
    # 1250 arrived before an acknowledgement: the page kept the newest 1000
    # (254..1253); the 250 numbers in between are missed, counted once.
    flood = feed.take(payload(events=range(254, 1254), resets=1))
    assert not flood.reset and flood.missed == 250 and len(flood.events) == 1000
    assert feed.take(payload(events=range(254, 1254), resets=1)).missed == 0
    # Dropped ones this session had already taken are not missed.
    overlap = feed.take(payload(events=range(1100, 2100), resets=1))
    assert overlap.missed == 0 and overlap.events[0].data["i"] == 1254


def test_a_new_session_starts_after_what_an_earlier_one_took() -> None:
    # Streamlit restarted: the page's subscription lives on, its events up
    # to 40 went to the old session; the new one gets the rest, none missed.
    fresh = Feed().take(payload(events=range(41, 44), base=40, resets=1))
    assert [e.data["i"] for e in fresh.events] == [41, 42, 43]
    assert fresh.missed == 0 and fresh.reset


def test_garbage_from_the_page_changes_nothing() -> None:
    feed = Feed()
    feed.take(payload(events=range(1, 3)))
    for junk in ("x", 5, {"instance": 7}, {"upto": 9}):
        state = feed.take(junk)
        assert state.events == [] and state == {"px/a": {"i": 2}}
    assert feed.acknowledgement() == {"instance": "page-1", "n": 2, "sent": 0}
    odd = feed.take(payload(events=range(3, 4), events_extra=1, state="nope", status=None))
    assert odd == {} and odd.status == "connecting" and len(odd.events) == 1


def test_session_token_only_with_auth_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTH_SECRET", raising=False)
    assert Feed().session_token(["px/#"], sub="s") is None
    monkeypatch.setenv("AUTH_SECRET", SECRET)
    feed = Feed()
    first = feed.session_token(["px/#"], sub="s")
    assert first is not None
    assert token_expiry(first) == pytest.approx(time.time() + TOKEN_TTL_SECS, abs=2)
    # Kept while it has more than TOKEN_REFRESH_SECS left...
    assert feed.session_token(["px/#"], sub="s") == first
    # ...then a fresh one (tokens are minted with a whole-second exp: wait
    # one so the fresh token differs)...
    feed.token_expires = time.time() + TOKEN_REFRESH_SECS - 1
    time.sleep(1.1)
    second = feed.session_token(["px/#"], sub="s")
    assert second not in (None, first)
    assert feed.session_token(["px/#"], sub="s") == second
    # ...and at once when the page reports it spent.
    time.sleep(1.1)
    third = feed.session_token(["px/#"], sub="s", spent=second)
    assert third not in (None, first, second)


def test_token_lifetime_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", SECRET)
    monkeypatch.setenv("SWITCHYARD_TOKEN_TTL", "30")
    feed = Feed()
    token = feed.session_token(["px/#"], sub="s")
    assert token is not None
    assert token_expiry(token) == pytest.approx(time.time() + 30, abs=2)
    # Refreshed when a third of it is left (not TOKEN_REFRESH_SECS, longer
    # than the token): kept on the next run.
    assert feed.session_token(["px/#"], sub="s") == token
    for bad in ("5", "soon", ""):
        monkeypatch.setenv("SWITCHYARD_TOKEN_TTL", bad)
        assert token_ttl() == TOKEN_TTL_SECS


# ------------------------------------------------------------------ AppTest


def fragment_app() -> None:
    import streamlit as st

    from switchyard.streamlit import live

    st.session_state.page_runs = st.session_state.get("page_runs", 0) + 1

    @st.fragment
    def prices() -> None:
        state = live(["px/#"], key="prices", max_reruns_per_sec=2)
        st.session_state.seen = st.session_state.get("seen", []) + [
            e.data["i"] for e in state.events
        ]
        st.metric("px", str(state.get("px/a", {}).get("i", "-")))
        st.text(f"status={state.status} reset={state.reset}")

    prices()


def sent_to_page(at: AppTest, kind: str = "switchyard.live") -> dict[str, Any]:
    for element in at.get("bidi_component"):
        if element.proto.component_name == kind:
            data: dict[str, Any] = json.loads(element.proto.json)
            return data
    raise AssertionError(f"no {kind} element")


def from_page(at: AppTest, body: dict[str, Any]) -> None:
    """Where Streamlit puts a setStateValue("feed", body) from the page."""
    at.session_state["switchyard-live-prices"] = {"feed": body}


def test_live_in_a_fragment_acknowledges_with_the_same_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AUTH_SECRET", raising=False)
    at = AppTest.from_function(fragment_app).run()
    assert not at.exception
    first = sent_to_page(at)
    assert first["topics"] == ["px/#"] and first["key"] == "prices"
    assert first["client_js"] == "/_switchyard/client.js?esm"
    assert first["max_reruns_per_sec"] == 2 and first["token"] is None
    assert first["ack"] == {"instance": None, "n": 0, "sent": 0}
    assert at.metric[0].value == "-" and at.text[0].value == "status=connecting reset=False"

    from_page(at, payload(events=range(1, 4)))
    at.run()
    assert at.metric[0].value == "3"
    assert at.session_state.seen == [1, 2, 3]
    # The acknowledgement goes out with the run that took the events.
    assert sent_to_page(at)["ack"] == {"instance": "page-1", "n": 3, "sent": 0}

    at.run()  # a rerun for some other reason: the same payload, no event twice
    assert at.session_state.seen == [1, 2, 3]
    # Events 4 and 5 and a reset (the gateway restarted).
    from_page(at, payload(events=range(3, 6), resets=1))
    at.run()
    assert at.session_state.seen == [1, 2, 3, 4, 5]
    assert at.text[0].value == "status=open reset=True"
    assert sent_to_page(at)["ack"]["n"] == 5
    at.run()
    assert at.text[0].value == "status=open reset=False"


def test_a_run_stopped_at_the_element_hands_the_events_out_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Streamlit stops a run that a newer rerun request overtakes at its next
    # element, before sending it (RerunException): stand-in, an exception
    # from the mount. Nothing of that run may count.
    import switchyard.streamlit as module

    monkeypatch.delenv("AUTH_SECRET", raising=False)
    mount = module._live_component
    stops = [True]

    def stopped_once(**kwargs: Any) -> Any:
        if stops and stops.pop():
            raise RuntimeError("stopped for a rerun")
        return mount(**kwargs)

    at = AppTest.from_function(fragment_app).run()
    monkeypatch.setattr(module, "_live_component", stopped_once)
    from_page(at, payload(events=range(1, 4)))
    at.run()
    assert at.exception and at.session_state.seen == []
    at.run()
    assert at.session_state.seen == [1, 2, 3]
    assert sent_to_page(at)["ack"] == {"instance": "page-1", "n": 3, "sent": 0}


def test_live_mints_a_scoped_token_per_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", SECRET)
    at = AppTest.from_function(fragment_app).run()
    token = sent_to_page(at)["token"]
    assert isinstance(token, str)
    claims = json.loads(_b64decode(token.split(".")[1]))
    assert claims["subscribe"] == ["px/#"] and "publish" not in claims
    assert claims["sub"] == "streamlit:prices"
    at.run()
    assert sent_to_page(at)["token"] == token  # one per session, not per run
    from_page(at, payload(events=range(1, 2), want_token=token))
    time.sleep(1.1)  # a whole-second exp: the fresh token differs
    at.run()
    fresh = sent_to_page(at)["token"]
    assert fresh != token and json.loads(_b64decode(fresh.split(".")[1]))["exp"] >= claims["exp"]
    # Another session (another browser tab) mints its own, same scope.
    other = AppTest.from_function(fragment_app).run()
    other_claims = json.loads(_b64decode(sent_to_page(other)["token"].split(".")[1]))
    assert other_claims["subscribe"] == ["px/#"]


def test_an_explicit_token_and_url_are_passed_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_SECRET", SECRET)

    def app() -> None:
        from switchyard.streamlit import live

        live(
            "px/a",
            key="k",
            url="https://gw.example.com/_switchyard/client.js",
            token="given.token.here",
        )

    at = AppTest.from_function(app).run()
    data = sent_to_page(at)
    assert data["token"] == "given.token.here" and data["topics"] == ["px/a"]
    assert data["client_js"] == "https://gw.example.com/_switchyard/client.js?esm"


def test_live_table_sends_its_options_and_refreshes_its_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AUTH_SECRET", SECRET)

    def app() -> None:
        import streamlit as st

        from switchyard.streamlit import live_table

        st.session_state.runs = st.session_state.get("runs", 0) + 1
        live_table(["tape/#"], key="tape", columns=["i", "px"], max_rows=50, latest=True)

    at = AppTest.from_function(app).run()
    data = sent_to_page(at, "switchyard.live_table")
    assert data["columns"] == ["i", "px"] and data["max_rows"] == 50 and data["latest"]
    token = data["token"]
    assert isinstance(token, str)
    at.run()
    assert sent_to_page(at, "switchyard.live_table")["token"] == token
    # The page's one trigger: this token is nearly spent.
    at.session_state["switchyard-table-tape"] = {"token": token}
    time.sleep(1.1)
    at.run()
    assert sent_to_page(at, "switchyard.live_table")["token"] != token


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topics": []}, "at least one"),
        ({"topics": ["bad topic"]}, "not a topic pattern"),
        ({"topics": ["a/#"], "max_reruns_per_sec": 0}, "positive"),
        ({"topics": ["a/#"], "url": "gw.example.com"}, "url"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        live(key="k", **kwargs)


# ------------------------------------------------------------------ gateway


def test_the_session_token_reads_its_topics_and_nothing_else(
    make_gateway: MakeGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = make_gateway(AUTH_SECRET=SECRET, PUBLISH_TOKEN="engine")
    engine = Publisher(gateway.publish_url, token="engine")
    engine.publish("px/a", {"i": 1}, retain=True)
    engine.publish("orders/a", {"qty": 5}, retain=True)
    monkeypatch.setenv("AUTH_SECRET", SECRET)
    at = AppTest.from_function(fragment_app).run()
    token = sent_to_page(at)["token"]
    state = gateway.get_json("/_switchyard/state?topics=px/%23", token=token)
    assert state["state"] == {"px/a": {"seq": 1, "data": {"i": 1}}}
    with pytest.raises(urllib.error.HTTPError) as refused:
        gateway.get_json("/_switchyard/state?topics=orders/%23", token=token)
    assert refused.value.code == 403
    # The control: an admin token reads orders/#, so the 403 is the scope.
    admin = gateway.get_json("/_switchyard/state?topics=orders/%23", token=_admin())
    assert set(admin["state"]) == {"orders/a"}


def _admin() -> str:
    from switchyard import mint_token

    return mint_token(admin=True, ttl=60, secret=SECRET)


def _b64decode(part: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
