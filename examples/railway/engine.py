"""A simulated trading engine: prices, trades and positions, published live.

The gateway runs it as WORKER_COMMAND and restarts it if it dies; it can also
run on its own (`python engine.py`) next to a gateway on port 8080. Every
quarter second it moves the prices and publishes one all-or-nothing batch:

- ``ticks/<SYMBOL>``      the last price (retained: a new page has it at once)
- ``trades/<SYMBOL>``     a fill, now and then
- ``positions/<SYMBOL>``  quantity, average price, last price and P&L
                          (retained; a flat position keeps its realized P&L)
- ``engine/status``       who is publishing and how much (retained)

Every event carries an id fixed before the first attempt, so a retry after a
lost answer is never published twice. When the gateway cannot be reached (it
is restarting, or not started yet) the engine waits with backoff and sends
the same batch again: it never crashes on a refused connection. On start it
picks up the positions, prices and counters the gateway still holds, so a
restart of the engine alone loses nothing.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from types import FrameType
from typing import Any

from switchyard import Publisher, PublishError, Subscriber

log = logging.getLogger("engine")

#: Instrument -> (opening price, lot size).
INSTRUMENTS: dict[str, tuple[float, int]] = {
    "NIFTY24DEC24000CE": (112.35, 75),
    "BANKNIFTY24DEC52000PE": (241.80, 30),
    "RELIANCE": (1287.40, 10),
    "INFY": (1893.15, 10),
}
TICK_SECS = float(os.environ.get("ENGINE_TICK_SECS", "0.25"))
#: Positions are marked to market (republished with the last price) this often.
MARK_SECS = 1.0
TRADES_PER_SEC = 0.8
#: Longest wait between two attempts while the gateway is unreachable.
MAX_BACKOFF_SECS = 5.0


@dataclass
class Position:
    """A net position in one instrument (negative quantity: short)."""

    qty: int = 0
    avg_px: float = 0.0
    realized: float = 0.0

    def fill(self, qty: int, px: float) -> None:
        """Applies a fill of ``qty`` (negative: sell) at ``px``."""
        if self.qty == 0 or (self.qty > 0) == (qty > 0):
            total = self.qty + qty
            self.avg_px = (self.avg_px * self.qty + px * qty) / total
            self.qty = total
            return
        closing = qty if abs(qty) <= abs(self.qty) else -self.qty
        self.realized += -closing * (px - self.avg_px)
        self.qty += qty
        if self.qty == 0:
            self.avg_px = 0.0
        elif abs(qty) > abs(closing):  # flipped: the rest opens at px
            self.avg_px = px

    def as_data(self, symbol: str, ltp: float) -> dict[str, Any]:
        """What ``positions/<symbol>`` holds."""
        return {
            "symbol": symbol,
            "qty": self.qty,
            "avg_px": round(self.avg_px, 2) if self.qty else None,
            "ltp": round(ltp, 2),
            "pnl": round(self.realized + self.qty * (ltp - self.avg_px), 2),
        }


class Engine:
    """The simulation and its publishing loop."""

    def __init__(self, publisher: Publisher, stop: threading.Event) -> None:
        self.publisher = publisher
        self.stop = stop
        self.prices = {symbol: px for symbol, (px, _) in INSTRUMENTS.items()}
        self.positions = {symbol: Position() for symbol in INSTRUMENTS}
        self.ticks = 0
        self.trades = 0
        #: Prefix of every event id: unique to this run, so ids never repeat
        #: across restarts, while a retry inside the run reuses its ids.
        self.run = uuid.uuid4().hex[:12]
        self.next_id = 0
        self.started = _now()

    # -- state that survives an engine restart ---------------------------

    def restore(self, state: dict[str, Any]) -> None:
        """Picks up prices, positions and counters from the retained state."""
        for topic, data in state.items():
            if not isinstance(data, dict):
                continue
            symbol = topic.partition("/")[2]
            if topic.startswith("ticks/") and symbol in self.prices:
                self.prices[symbol] = float(data.get("px", self.prices[symbol]))
            elif topic.startswith("positions/") and symbol in self.positions:
                position = self.positions[symbol]
                position.qty = int(data.get("qty", 0))
                position.avg_px = float(data.get("avg_px") or 0.0)
                ltp = float(data.get("ltp", position.avg_px))
                unrealized = position.qty * (ltp - position.avg_px)
                position.realized = float(data.get("pnl", 0.0)) - unrealized
            elif topic == "engine/status":
                self.ticks = int(data.get("ticks", 0))
                self.trades = int(data.get("trades", 0))

    # -- the simulation ----------------------------------------------------

    def step(self, mark: bool) -> list[dict[str, Any]]:
        """Moves the prices one tick; returns the batch to publish."""
        self.ticks += 1
        now = _now()
        batch: list[dict[str, Any]] = []
        for symbol, px in self.prices.items():
            px = max(0.05, px * (1 + random.gauss(0, 0.0008)))
            self.prices[symbol] = px
            data = {"symbol": symbol, "px": round(px, 2), "ts": time.time(), "n": self.ticks}
            batch.append(self._event(f"ticks/{symbol}", data, retain=True))
        if random.random() < TRADES_PER_SEC * TICK_SECS:
            symbol = self._trade(batch, now)
            if not mark:  # the traded position right away; all of them below
                batch.append(self._position(symbol))
        if mark:
            batch.extend(self._position(symbol) for symbol in self.positions)
        status = {
            "pid": os.getpid(),
            "started": self.started,
            "ticks": self.ticks,
            "trades": self.trades,
            "ts": now,
        }
        batch.append(self._event("engine/status", status, retain=True))
        return batch

    def _trade(self, batch: list[dict[str, Any]], now: str) -> str:
        symbol = random.choice(list(INSTRUMENTS))
        lot = INSTRUMENTS[symbol][1]
        position = self.positions[symbol]
        lots = random.randint(1, 4)
        # Lean against a large position so the book stays bounded.
        sell = random.random() < 0.5 + max(-0.4, min(0.4, position.qty / (lot * 40)))
        qty = -lots * lot if sell else lots * lot
        px = round(self.prices[symbol], 2)
        position.fill(qty, px)
        self.trades += 1
        trade = {
            "id": f"T{self.trades:06d}",
            "time": now[11:19],
            "symbol": symbol,
            "side": "SELL" if sell else "BUY",
            "qty": abs(qty),
            "px": px,
        }
        batch.append(self._event(f"trades/{symbol}", trade))
        return symbol

    def _position(self, symbol: str) -> dict[str, Any]:
        data = self.positions[symbol].as_data(symbol, self.prices[symbol])
        return self._event(f"positions/{symbol}", data, retain=True)

    def _event(self, topic: str, data: Any, retain: bool = False) -> dict[str, Any]:
        self.next_id += 1
        return {"topic": topic, "data": data, "retain": retain, "id": f"{self.run}-{self.next_id}"}

    # -- publishing ----------------------------------------------------------

    def send(self, batch: list[dict[str, Any]]) -> None:
        """Publishes ``batch``, retrying (same ids) until it lands or we stop.

        An unreachable gateway, a 503 (Redis down) or a 5xx is waited out with
        backoff; a refusal (400, 413: this batch is wrong) drops the batch;
        a missing or wrong token (401, 403) is retried slowly, logged each time.
        """
        delay = 0.2
        down_since: float | None = None
        while not self.stop.is_set():
            try:
                self.publisher.publish_many(batch)
            except PublishError as error:
                if error.status in (400, 413):
                    log.error("gateway refused a batch, dropped: %s", error)
                    return
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("cannot publish (%s); retrying with backoff", error)
                elif error.status in (401, 403):
                    log.error("publishing refused: %s (check PUBLISH_TOKEN)", error)
                self.stop.wait(random.uniform(delay / 2, delay))
                delay = min(MAX_BACKOFF_SECS, delay * 2)
                continue
            if down_since is not None:
                log.info("publishing again after %.1f s", time.monotonic() - down_since)
            return

    def run_forever(self) -> None:
        next_tick = time.monotonic()
        next_mark = next_tick
        while not self.stop.is_set():
            now = time.monotonic()
            mark = now >= next_mark
            if mark:
                next_mark = now + MARK_SECS
            self.send(self.step(mark))
            next_tick += TICK_SECS
            # After an outage, carry on from now rather than catching up.
            next_tick = max(next_tick, time.monotonic())
            self.stop.wait(next_tick - time.monotonic())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def retained_state(timeout: float) -> dict[str, Any]:
    """What the gateway still holds for us (empty if it cannot say in time)."""
    with Subscriber(["ticks/#", "positions/#", "engine/#"]) as subscriber:
        if subscriber.wait_ready(timeout):
            return subscriber.state
    log.info("no state from the gateway within %.0f s: starting flat", timeout)
    return {}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    engine = Engine(Publisher(retries=0), stop)
    engine.restore(retained_state(timeout=5))
    open_positions = sum(1 for p in engine.positions.values() if p.qty)
    log.info(
        "engine %s (pid %d) publishing to %s: %d open positions, %d trades so far",
        engine.run,
        os.getpid(),
        engine.publisher.url,
        open_positions,
        engine.trades,
    )
    engine.run_forever()
    log.info("stopped after %d ticks", engine.ticks)


if __name__ == "__main__":
    main()
