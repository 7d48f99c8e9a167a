"""The Streamlit page live_e2e.py drives: switchyard.streamlit.live() inside
an @st.fragment, a counter outside it, and a live_table().

Everything the test measures is rendered as text: page runs (outside the
fragment), fragment runs with their start times, the events handed to
Python (with any gap or repeat in the `live/price` sequence), resets, and
the client's status.
"""

import json
import os
import time

import streamlit as st

from switchyard.streamlit import live, live_table

st.set_page_config(page_title="switchyard live", layout="wide")
st.title("switchyard live")

ss = st.session_state
ss.page_runs = ss.get("page_runs", 0) + 1
st.markdown(f"page runs: **{ss.page_runs}** · streamlit pid {os.getpid()}")
st.button("rerun the page")  # a full rerun: live() must keep its subscription


@st.fragment
def prices() -> None:
    state = live(["live/#"], key="prices", max_reruns_per_sec=4)
    ss.frag_runs = ss.get("frag_runs", 0) + 1
    ss.run_times = (ss.get("run_times", []) + [round(time.time(), 3)])[-400:]
    ss.events_seen = ss.get("events_seen", 0) + len(state.events)
    ss.resets = ss.get("resets", 0) + int(state.reset)
    ss.missed = ss.get("missed", 0) + state.missed
    for event in state.events:
        if event.topic != "live/price" or not isinstance(event.data, dict):
            continue
        value = event.data.get("i")
        last = ss.get("last_i")
        if isinstance(value, int) and isinstance(last, int):
            if value <= last:
                ss.repeats = ss.get("repeats", 0) + 1
            elif value > last + 1:
                ss.gaps = ss.get("gaps", 0) + value - last - 1
        ss.last_i = value

    price = state.get("live/price")
    st.metric("price", value=str(price["value"]) if isinstance(price, dict) else "-")
    st.dataframe(
        [{"topic": topic, "data": json.dumps(data)} for topic, data in sorted(state.items())],
        hide_index=True,
    )
    st.markdown(
        f"fragment runs: **{ss.frag_runs}** · events: **{ss.events_seen}** · "
        f"resets: **{ss.resets}** · gaps: **{ss.get('gaps', 0)}** · "
        f"repeats: **{ss.get('repeats', 0)}** · missed: **{ss.missed}** · "
        f"status: **{state.status}** · error: **{state.error}** · "
        f"topics: **{','.join(sorted(state)) or 'none'}**"
    )
    st.code(json.dumps(ss.run_times), language=None)


prices()


@st.fragment
def bulk() -> None:
    # A slow one (a batch every 2 s) for the check of the page's 1000 bound.
    state = live(["bulk/#"], key="bulk", max_reruns_per_sec=0.5)
    ss.bulk_events = ss.get("bulk_events", 0) + len(state.events)
    ss.bulk_missed = ss.get("bulk_missed", 0) + state.missed
    ss.bulk_resets = ss.get("bulk_resets", 0) + int(state.reset)
    last = state.get("bulk/x")
    st.markdown(
        f"bulk events: **{ss.bulk_events}** · bulk missed: **{ss.bulk_missed}** · "
        f"bulk resets: **{ss.bulk_resets}** · bulk last: **{last['i'] if last else '-'}**"
    )


bulk()


@st.fragment
def trades() -> None:
    # history=5: a page opened after some trades starts with the last five.
    state = live(["trades/#"], key="trades", history=5)
    earlier = [e.data.get("n") for e in state.events if e.history and isinstance(e.data, dict)]
    ss.trade_history = ss.get("trade_history", []) + earlier
    ss.trade_live = ss.get("trade_live", 0) + sum(1 for e in state.events if not e.history)
    shown = ",".join(str(n) for n in ss.trade_history) or "none"
    st.markdown(f"trade history: **{shown}** · trade live: **{ss.trade_live}**")


trades()

st.subheader("tape (drawn in the browser, no rerun)")
live_table(["tape/#"], key="tape", columns=["i", "px"], max_rows=50, height=240, history=20)
