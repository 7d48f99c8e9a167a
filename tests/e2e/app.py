"""A small, real Streamlit app for switchyard's end-to-end test.

It renders a title, a table and an HTML component whose script opens a
WebSocket to the gateway's broadcaster (same origin: the page is served
through switchyard) and lists every event it receives.
"""

import os

import streamlit as st
import streamlit.components.v1 as components

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

WS_PATH = "/ws"
TOPICS = "e2e/%23"

components.html(
    """
<!doctype html>
<html>
<head>
<style>
  body { font-family: sans-serif; font-size: 14px; margin: 0 4px; }
  #status { font-weight: bold; }
  #status.open { color: #1a7f37; }
  #status.closed { color: #cf222e; }
  #events { margin: 6px 0; padding-left: 20px; }
  #events li { font-family: monospace; }
</style>
</head>
<body>
  <div>switchyard WebSocket: <span id="status" class="closed">connecting</span>
       <span id="hello"></span></div>
  <ul id="events"></ul>
<script>
(function () {
  var WS_PATH = "%(ws_path)s";
  var TOPICS = "%(topics)s";
  var statusEl = document.getElementById("status");
  var helloEl = document.getElementById("hello");
  var listEl = document.getElementById("events");

  function baseLocation() {
    // The component is an iframe (srcdoc, same origin when allowed): prefer
    // the parent page's location, fall back to our own.
    try {
      var p = window.parent.location;
      if (p && p.host) { return p; }
    } catch (e) { /* cross-origin parent */ }
    return window.location;
  }

  function wsUrl() {
    var loc = baseLocation();
    var scheme = loc.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + loc.host + WS_PATH + "?topics=" + TOPICS;
  }

  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = cls;
  }

  var delay = 500;
  function connect() {
    var url = wsUrl();
    setStatus("connecting", "closed");
    var ws;
    try { ws = new WebSocket(url); } catch (e) {
      setStatus("error: " + e, "closed");
      setTimeout(connect, delay);
      return;
    }
    ws.onopen = function () { delay = 500; setStatus("open", "open"); };
    ws.onmessage = function (msg) {
      var frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame.type === "hello") {
        helloEl.textContent = "(epoch " + frame.epoch + ", seq " + frame.seq + ")";
      } else if (frame.type === "event") {
        var li = document.createElement("li");
        li.className = "event";
        li.textContent = frame.topic + " " + JSON.stringify(frame.data);
        listEl.appendChild(li);
      }
    };
    ws.onclose = function (ev) {
      // Kept for the test: the gateway closes with 1001 when it shuts down.
      window.closeCodes = (window.closeCodes || []).concat([ev.code]);
      setStatus("closed (" + ev.code + ")", "closed");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 5000);
    };
    ws.onerror = function () { /* onclose follows */ };
  }
  connect();
})();
</script>
</body>
</html>
"""
    % {"ws_path": WS_PATH, "topics": TOPICS},
    height=320,
    scrolling=True,
)
