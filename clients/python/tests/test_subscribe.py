"""Subscriber against the real gateway: state, callbacks, exactly-once across
cut connections and restarts, polling fallback, tokens."""

from __future__ import annotations

import threading
import time

from conftest import SECRET, Gateway, MakeGateway, RelayTo, wait_for

from switchyard import Event, Publisher, Subscriber, mint_token


def test_state_and_callbacks(gateway: Gateway) -> None:
    publisher = Publisher(gateway.publish_url)
    publisher.publish("positions/a", {"qty": 1}, retain=True)
    publisher.publish("orders/a", {"qty": 2}, retain=True)
    seen: list[Event] = []
    with Subscriber(["positions/#"], url=gateway.ws_url) as sub:
        sub.on("positions/+", seen.append)
        assert sub.wait_ready(10)
        assert sub.state == {"positions/a": {"qty": 1}}
        publisher.publish("positions/b", {"qty": 3}, retain=True)
        publisher.publish("orders/b", {"qty": 4})
        publisher.publish("positions/a", None, retain=True)  # deletes its state
        wait_for(lambda: len(seen) == 2, what="two position events")
        assert [e.topic for e in seen] == ["positions/b", "positions/a"]
        assert sub.state == {"positions/b": {"qty": 3}}
        assert sub.status == "open"
    assert sub.status == "closed"


def test_exactly_once_across_cut_connections(gateway: Gateway, relay_to: RelayTo) -> None:
    relay = relay_to(gateway.port)
    publisher = Publisher(gateway.publish_url)
    seqs: list[int] = []
    resets: list[dict[str, object]] = []
    with Subscriber(["ticks"], url=f"ws://127.0.0.1:{relay.port}/ws") as sub:
        sub.on("ticks", lambda e: seqs.append(e.data))
        sub.on_reset(resets.append)
        assert sub.wait_ready(10)
        stop = threading.Event()

        def cutter() -> None:
            while not stop.wait(0.15):
                relay.cut()

        thread = threading.Thread(target=cutter)
        thread.start()
        # At least 300 events, and on until the subscriber has been cut off
        # and has come back several times (its backoff decides how often).
        published = 0
        deadline = time.monotonic() + 60
        while published < 300 or (relay.connections < 5 and time.monotonic() < deadline):
            publisher.publish("ticks", published)
            published += 1
            time.sleep(0.002)
        stop.set()
        thread.join()
        wait_for(lambda: len(seqs) >= published, timeout=30, what="every event")
        time.sleep(0.3)
    assert relay.connections >= 5, "connections were really cut"
    assert seqs == list(range(published)), "every event exactly once, in order"
    assert resets == []


def test_a_gateway_restart_is_a_reset_not_a_hole(gateway: Gateway) -> None:
    Publisher(gateway.publish_url).publish("positions/a", 1, retain=True)
    resets: list[dict[str, object]] = []
    with Subscriber(["#"], url=gateway.ws_url) as sub:
        sub.on_reset(resets.append)
        assert sub.wait_ready(10)
        old_epoch, _ = sub.position
        gateway.restart()  # the in-process hub starts a new epoch, empty
        Publisher(gateway.publish_url).publish("positions/b", 2, retain=True)
        wait_for(lambda: sub.state == {"positions/b": 2}, timeout=20, what="the new state")
        assert resets, "the subscriber was told its state was replaced"
        assert sub.position[0] != old_epoch


def test_falls_back_to_long_polling(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(WEBSOCKET_ENABLED="false")
    publisher = Publisher(gateway.publish_url)
    publisher.publish("positions/a", 1, retain=True)
    seen: list[int] = []
    with Subscriber(["positions/#"], url=gateway.ws_url) as sub:
        sub.on("positions/#", lambda e: seen.append(e.data))
        assert sub.wait_ready(10)
        assert sub.state == {"positions/a": 1}
        for n in range(2, 12):
            publisher.publish("positions/a", n, retain=True)
        wait_for(lambda: seen[-1:] == [11], what="the last polled event")
        assert seen == list(range(2, 12))
        assert sub.status == "polling"


def test_tokens_scope_and_refusal(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(AUTH_SECRET=SECRET, PUBLISH_TOKEN="engine")
    publisher = Publisher(gateway.publish_url, token="engine")
    publisher.publish("positions/a", 1, retain=True)
    publisher.publish("orders/a", 2, retain=True)
    calls: list[int] = []

    def token() -> str:
        calls.append(1)
        return mint_token(subscribe=["positions/#"], ttl=60, secret=SECRET)

    with Subscriber([], url=gateway.ws_url, token=token) as sub:
        assert sub.wait_ready(10)
        assert sub.state == {"positions/a": 1}, "no topics: the token's own patterns"
    statuses: list[str] = []
    bad = Subscriber(["#"], url=gateway.ws_url, token="not-a-token")
    bad.on_status(statuses.append)
    wait_for(lambda: bad.status == "unauthorized", what="unauthorized status")
    bad.close()
    assert calls
