"""A small, real Streamlit app for switchyard's end-to-end test.

It renders a title, a table and a switchyard.streamlit live_table that
lists every e2e/# event (client.js over the gateway's broadcaster, same
origin: the page is served through switchyard).
"""

import os

import streamlit as st

from switchyard.streamlit import live_table

st.set_page_config(page_title="switchyard e2e", layout="wide")
st.title("switchyard e2e")

st.table(
    [
        {"symbol": "NIFTY24DEC24000CE", "qty": 50, "ltp": 112.35},
        {"symbol": "BANKNIFTY24DEC51000PE", "qty": 15, "ltp": 287.10},
        {"symbol": "RELIANCE", "qty": 10, "ltp": 1287.45},
    ]
)

# The server's pid lets the test tell a page rendered by a restarted
# Streamlit from the stale page of the killed one.
st.caption(
    "streamlit pid %d; PORT=%s; SWITCHYARD_WS_URL=%s"
    % (os.getpid(), os.environ.get("PORT", "?"), os.environ.get("SWITCHYARD_WS_URL", "?"))
)

# An interactive widget: a click goes to the server over Streamlit's own
# /_stcore/stream WebSocket and the rerun's output comes back on it.
if "presses" not in st.session_state:
    st.session_state.presses = 0
if st.button("press me"):
    st.session_state.presses += 1
st.write("presses: %d" % st.session_state.presses)

# Rows drawn in the browser as events arrive (no iframe, no Python rerun).
live_table(["e2e/#"], key="events", max_rows=200, height=320)
