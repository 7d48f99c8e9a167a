"""Publishing: one event or an all-or-nothing batch, retried without duplicates.

Standard library only (urllib): publishing is one small POST, and the engine
beside the gateway should not need an HTTP client package for it. Every
event gets an id (a random one unless you give your own), so a retry after
a 503 or a lost reply is answered with the original receipt instead of
being published twice (the gateway remembers ids for its dedup window).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import _json

__all__ = ["AsyncPublisher", "PublishError", "Publisher", "Receipt"]

DEFAULT_PUBLISH_URL = "http://127.0.0.1:8080/_switchyard/publish"

#: Longest event id the gateway accepts.
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class Receipt:
    """Where an event landed: its ``seq`` within ``epoch``.

    ``duplicate`` is true when the gateway had already accepted this id
    (a retry): nothing was published again.
    """

    epoch: str
    seq: int
    duplicate: bool = False


class PublishError(Exception):
    """The gateway refused the publish, or could not be reached.

    ``status`` is the HTTP status (None when no answer came) and
    ``message`` the gateway's own explanation.
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"{status or 'no answer'}: {message}")
        self.status = status
        self.message = message


def _event(topic: str, data: Any, retain: bool = False, id: str | None = None) -> dict[str, Any]:
    if not isinstance(topic, str) or not topic:
        raise ValueError("topic must be a non-empty string")
    event_id = id if id is not None else uuid.uuid4().hex
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_ID_CHARS:
        raise ValueError(f"id must be a string of 1-{MAX_ID_CHARS} characters")
    event: dict[str, Any] = {"topic": topic, "data": data, "id": event_id}
    if retain:
        event["retain"] = True
    return event


class Publisher:
    """Publishes to a switchyard gateway.

    ``url`` is the full publish endpoint; it defaults to
    ``SWITCHYARD_PUBLISH_URL`` (set for a dashboard the gateway supervises),
    else ``http://127.0.0.1:8080/_switchyard/publish``. ``token`` defaults to
    ``PUBLISH_TOKEN`` (none is needed from loopback when the gateway has no
    PUBLISH_TOKEN). 503 answers and connection errors are retried
    ``retries`` times with jittered backoff; other refusals raise at once.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 5,
        *,
        retries: int = 4,
        backoff: float = 0.2,
    ) -> None:
        self.url = url or os.environ.get("SWITCHYARD_PUBLISH_URL") or DEFAULT_PUBLISH_URL
        self.token = token if token is not None else os.environ.get("PUBLISH_TOKEN") or None
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff

    def publish(
        self, topic: str, data: Any, retain: bool = False, id: str | None = None
    ) -> Receipt:
        """Publishes one event; ``retain`` keeps it as the topic's state
        (``data=None`` with ``retain=True`` deletes that state)."""
        answer, duplicate = self._post(_json.dumps(_event(topic, data, retain, id)))
        return Receipt(str(answer["epoch"]), int(answer["seq"]), duplicate)

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[Receipt]:
        """Publishes several events in one all-or-nothing request. Each is a
        mapping with ``topic``, ``data`` and optionally ``retain`` and ``id``."""
        batch = [
            _event(e["topic"], e.get("data"), bool(e.get("retain", False)), e.get("id"))
            for e in events
        ]
        if not batch:
            return []
        answer, duplicate = self._post(_json.dumps(batch))
        epoch = str(answer["epoch"])
        return [Receipt(epoch, int(seq), duplicate) for seq in answer["seqs"]]

    def _post(self, body: str) -> tuple[dict[str, Any], bool]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        attempt = 0
        while True:
            request = urllib.request.Request(
                self.url, data=body.encode(), headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    answer = json.loads(response.read() or b"{}")
                    return answer, response.status == 200
            except urllib.error.HTTPError as error:
                failure = PublishError(error.code, _message(error.read()))
                if error.code != 503:
                    raise failure from None
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                failure = PublishError(None, f"cannot reach {self.url}: {reason}")
            if attempt >= self.retries:
                raise failure
            time.sleep(_delay(self.backoff, attempt))
            attempt += 1


class AsyncPublisher:
    """:class:`Publisher` for asyncio code: the same arguments and methods,
    awaited. Each request runs on a worker thread, so the event loop never
    blocks on the network."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 5,
        *,
        retries: int = 4,
        backoff: float = 0.2,
    ) -> None:
        self._sync = Publisher(url, token, timeout, retries=retries, backoff=backoff)

    @property
    def url(self) -> str:
        return self._sync.url

    async def publish(
        self, topic: str, data: Any, retain: bool = False, id: str | None = None
    ) -> Receipt:
        event = _event(topic, data, retain, id)  # the id is fixed before any retry
        return await asyncio.to_thread(
            self._sync.publish, event["topic"], event["data"], retain, event["id"]
        )

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> list[Receipt]:
        batch = [dict(e, id=e.get("id") or uuid.uuid4().hex) for e in events]
        return await asyncio.to_thread(self._sync.publish_many, batch)


def _message(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:200]
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return str(parsed)[:200]


def _delay(base: float, attempt: int) -> float:
    """Exponential backoff with full jitter, at most 5 s."""
    return float(random.uniform(0, min(5.0, base * 2**attempt)))
