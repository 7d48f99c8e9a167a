"""Publisher against the real gateway: receipts, errors, retries without duplicates."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from conftest import Gateway, MakeGateway, RelayTo, free_port

from switchyard import AsyncPublisher, NotJSONError, Publisher, PublishError


def test_publish_returns_consecutive_receipts(gateway: Gateway) -> None:
    publisher = Publisher(gateway.publish_url)
    first = publisher.publish("positions/NIFTY", {"qty": 50}, retain=True)
    second = publisher.publish("trades", {"px": 1})
    assert second.epoch == first.epoch
    assert second.seq == first.seq + 1
    assert not first.duplicate
    state = gateway.get_json("/_switchyard/state")
    assert state["state"]["positions/NIFTY"]["data"] == {"qty": 50}


def test_publish_many_is_one_request(gateway: Gateway) -> None:
    receipts = Publisher(gateway.publish_url).publish_many(
        [{"topic": "a", "data": 1}, {"topic": "b", "data": 2, "retain": True}]
    )
    assert [r.seq for r in receipts] == [receipts[0].seq, receipts[0].seq + 1]
    # All or nothing: one bad topic refuses the whole batch.
    with pytest.raises(PublishError) as refused:
        Publisher(gateway.publish_url).publish_many(
            [{"topic": "c", "data": 1}, {"topic": "bad topic", "data": 2}]
        )
    assert refused.value.status == 400
    assert "topic" in refused.value.message
    assert gateway.get_json("/_switchyard/state")["seq"] == receipts[-1].seq


def test_trading_types_are_json_and_nan_is_refused(gateway: Gateway) -> None:
    publisher = Publisher(gateway.publish_url)
    when = datetime(2026, 11, 29, 9, 15, tzinfo=timezone.utc)
    publisher.publish("ticks", {"at": when, "px": Decimal("101.25"), "tags": {"x"}}, retain=True)
    data = gateway.get_json("/_switchyard/state")["state"]["ticks"]["data"]
    assert data == {"at": "2026-11-29T09:15:00+00:00", "px": 101.25, "tags": ["x"]}
    before = gateway.get_json("/_switchyard/state")["seq"]
    with pytest.raises(NotJSONError):
        publisher.publish("ticks", {"px": math.nan})
    with pytest.raises(NotJSONError):
        publisher.publish("ticks", object())
    assert gateway.get_json("/_switchyard/state")["seq"] == before


def test_refusals_raise_with_status_and_message(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(PUBLISH_TOKEN="engine-token")
    with pytest.raises(PublishError) as refused:
        Publisher(gateway.publish_url, token="wrong").publish("a", 1)
    assert refused.value.status == 401
    assert "token" in refused.value.message
    assert Publisher(gateway.publish_url, token="engine-token").publish("a", 1).seq == 1


def test_unreachable_gateway_raises_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}/_switchyard/publish"
    publisher = Publisher(url, retries=2, backoff=0.01)
    with pytest.raises(PublishError) as failed:
        publisher.publish("a", 1)
    assert failed.value.status is None
    assert "cannot reach" in failed.value.message


def test_a_lost_reply_is_retried_and_applied_once(gateway: Gateway, relay_to: RelayTo) -> None:
    relay = relay_to(gateway.port)
    relay.swallow_replies = 1  # the first request arrives; its answer is lost
    publisher = Publisher(f"http://127.0.0.1:{relay.port}/_switchyard/publish", backoff=0.01)
    receipt = publisher.publish("orders/1", {"qty": 5}, retain=True)
    assert relay.connections >= 2, "the publisher retried"
    assert receipt.duplicate, "the retry was answered with the original receipt"
    state = gateway.get_json(f"/_switchyard/state?topics=orders/%23&epoch={receipt.epoch}&since=0")
    assert [e["topic"] for e in state["events"]] == ["orders/1"], state
    assert receipt.seq == state["seq"]


def test_async_publisher(gateway: Gateway) -> None:
    async def run() -> list[int]:
        publisher = AsyncPublisher(gateway.publish_url)
        one = await publisher.publish("a", 1)
        many = await publisher.publish_many([{"topic": "b", "data": 2}])
        return [one.seq, many[0].seq]

    assert asyncio.run(run()) == [1, 2]
