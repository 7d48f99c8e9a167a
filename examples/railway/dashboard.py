"""The trading desk: positions, the trade tape and prices of the last minutes,
live from engine.py through the switchyard gateway.

The gateway runs it as DASHBOARD_COMMAND (`streamlit run dashboard.py`, with
the settings in .streamlit/config.toml) and serves it on its own port, so the
page and the gateway's /ws share one origin. Each ``@st.fragment`` below holds
a ``live()`` subscription and reruns alone when its events arrive; the trade
tape is drawn in the browser with no Python run at all. ``history=`` makes the
charts and the tape start with what the gateway still holds from before the
page opened.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from switchyard.streamlit import live, live_table

#: How much price history the chart keeps (per browser session).
CHART_MINUTES = 5

st.set_page_config(page_title="Trading desk", layout="wide")
st.title("Trading desk")
st.caption("A simulated engine publishes through switchyard; this page follows it live.")


@st.fragment
def book() -> None:
    """Positions and P&L, from the retained ``positions/*`` and ``engine/status``."""
    state = live(["positions/#", "engine/#"], key="book", max_reruns_per_sec=2)
    positions = [
        data
        for topic, data in sorted(state.items())
        if topic.startswith("positions/") and isinstance(data, dict)
    ]
    engine: dict[str, Any] = state.get("engine/status") or {}

    pnl, open_positions, trades = st.columns(3)
    pnl.metric("P&L", f"{sum(p.get('pnl', 0) for p in positions):,.2f}")
    open_positions.metric("Open positions", sum(1 for p in positions if p.get("qty")))
    trades.metric("Trades", engine.get("trades", 0))
    st.dataframe(
        pd.DataFrame(positions, columns=["symbol", "qty", "avg_px", "ltp", "pnl"]),
        hide_index=True,
        column_config={
            "symbol": "Symbol",
            "qty": st.column_config.NumberColumn("Qty"),
            "avg_px": st.column_config.NumberColumn("Avg price", format="%.2f"),
            "ltp": st.column_config.NumberColumn("Last", format="%.2f"),
            "pnl": st.column_config.NumberColumn("P&L", format="%.2f"),
        },
    )
    if engine:
        st.caption(
            f"engine pid {engine.get('pid')} · tick #{engine.get('ticks')} · "
            f"at {str(engine.get('ts', ''))[11:23]} UTC · feed {state.status}"
        )
    else:
        st.caption(f"waiting for the engine · feed {state.status}")


@st.fragment
def prices() -> None:
    """Each instrument's price over the last CHART_MINUTES minutes."""
    # history: the chart starts with the ticks the gateway still holds (about
    # a minute of them), not empty.
    state = live(["ticks/#"], key="prices", max_reruns_per_sec=0.5, history=1000)
    points: deque[tuple[float, str, float]] = st.session_state.setdefault("points", deque())
    last_ts: dict[str, float] = st.session_state.setdefault("last_ts", {})
    for event in state.events:
        tick = event.data
        if not (isinstance(tick, dict) and {"ts", "symbol", "px"} <= tick.keys()):
            continue
        # One point per instrument and second is plenty for a 5-minute chart.
        if float(tick["ts"]) - last_ts.get(tick["symbol"], 0.0) >= 1.0:
            last_ts[tick["symbol"]] = float(tick["ts"])
            points.append((float(tick["ts"]), str(tick["symbol"]), float(tick["px"])))
    cutoff = time.time() - CHART_MINUTES * 60
    while points and points[0][0] < cutoff:
        points.popleft()

    ticks = {topic.removeprefix("ticks/"): data for topic, data in sorted(state.items())}
    if not ticks:
        st.info("No prices yet.")
        return
    frame = pd.DataFrame(list(points), columns=["ts", "symbol", "px"])
    frame["time"] = pd.to_datetime(frame["ts"], unit="s")
    for column, (symbol, last) in zip(st.columns(len(ticks)), ticks.items(), strict=True):
        series = frame[frame["symbol"] == symbol]
        first = float(series["px"].iloc[0]) if len(series) else float(last["px"])
        column.metric(symbol, f"{last['px']:,.2f}", f"{last['px'] - first:+,.2f}")
        if len(series) > 1:
            column.altair_chart(price_chart(series), width="stretch")


def price_chart(series: pd.DataFrame) -> alt.Chart:
    """A line of one instrument's price; the axis fits the prices, not zero."""
    chart: alt.Chart = (
        alt.Chart(series, height=150)
        .mark_line()
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%H:%M:%S")),
            y=alt.Y("px:Q", title=None, scale=alt.Scale(zero=False)),
        )
    )
    return chart


book()
st.subheader(f"Prices, last {CHART_MINUTES} minutes")
prices()
st.subheader("Trades")
live_table(
    ["trades/#"],
    key="trades",
    columns=["id", "symbol", "side", "qty", "px"],
    max_rows=100,
    height=320,
    history=50,  # a new page starts with the last 50 trades
)
