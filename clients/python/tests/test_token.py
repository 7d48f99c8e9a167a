"""mint_token against the real gateway's AUTH_SECRET checks."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from conftest import SECRET, MakeGateway

from switchyard import Publisher, mint_token


def test_minted_tokens_are_accepted_and_scoped(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(AUTH_SECRET=SECRET, PUBLISH_TOKEN="engine")
    Publisher(gateway.publish_url, token="engine").publish("positions/a", 1, retain=True)
    Publisher(gateway.publish_url, token="engine").publish("orders/a", 2, retain=True)
    reader = mint_token(subscribe=["positions/#"], ttl=60, secret=SECRET, sub="alice")
    state = gateway.get_json("/_switchyard/state", token=reader)
    assert set(state["state"]) == {"positions/a"}
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        gateway.get_json("/_switchyard/state")
    assert anonymous.value.code == 401
    writer = mint_token(publish=["orders/+"], ttl=60, secret=SECRET)
    assert Publisher(gateway.publish_url, token=writer).publish("orders/b", 3).seq == 3


def test_a_token_from_another_secret_is_refused(make_gateway: MakeGateway) -> None:
    gateway = make_gateway(AUTH_SECRET=SECRET)
    forged = mint_token(subscribe=["#"], ttl=60, secret="x" * 32)
    request = urllib.request.Request(gateway.url("/_switchyard/state"))
    request.add_header("Authorization", f"Bearer {forged}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 401


def test_short_secret_and_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="AUTH_SECRET"):
        mint_token(subscribe=["#"], secret="short")
    with pytest.raises(TypeError):
        mint_token(subscribe="positions/#", secret=SECRET)
    with pytest.raises(ValueError):
        mint_token(subscribe=["#"], ttl=0, secret=SECRET)
