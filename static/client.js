/*! switchyard client: live events from a switchyard gateway, in the browser.
 *
 *   <script src="/_switchyard/client.js"></script>            (global Switchyard)
 *   import Switchyard from "/_switchyard/client.js?esm";       (ES module)
 *
 *   const sy = Switchyard.connect({ topics: ["positions/#"] });
 *   sy.on("positions/+", (data, event) => { ... });
 *   sy.onStatus((status) => { ... });   // connecting | open | fallback-sse | fallback-poll | closed
 *   sy.onReset((state) => { ... });     // the gateway's history broke: state replaced
 *   sy.state                            // { topic: { seq, data } }, kept live
 *   sy.publish("orders/1", { qty: 5 }, { retain: true });   // needs a token (or loopback)
 *   sy.close();
 *
 * Transports, in order: WebSocket, then Server-Sent Events, then polling,
 * as /_switchyard/config allows. Every reconnect resumes from the last
 * (epoch, seq) seen, so a dropped connection loses no event; when the
 * gateway cannot resume (it restarted), the state is replaced and onReset
 * fires: never a silent hole. No dependencies.
 */
(function (root) {
  "use strict";

  var MIN_BACKOFF_MS = 500;
  var MAX_BACKOFF_MS = 30000;
  var POLL_WAIT_SECS = 25;

  /** Where the gateway is: an explicit url, else this page's origin (from
   *  inside a Streamlit components.html iframe, the parent's). */
  function gatewayOrigin(url) {
    if (url) return String(url).replace(/\/+$/, "");
    var loc = root.location;
    if (loc && /^https?:$/.test(loc.protocol)) return loc.origin;
    try {
      return root.parent.location.origin;
    } catch (e) {
      throw new Error("switchyard: cannot find the gateway; pass {url: 'https://…'}");
    }
  }

  /** MQTT-style match: `+` one level, `#` the rest (a/# matches a). */
  function matches(pattern, topic) {
    var p = pattern.split("/");
    var t = topic.split("/");
    for (var i = 0; i < p.length; i++) {
      if (p[i] === "#") return true;
      if (i >= t.length) return false;
      if (p[i] !== "+" && p[i] !== t[i]) return false;
    }
    return p.length === t.length;
  }

  function query(params) {
    var parts = [];
    for (var key in params) {
      if (params[key] !== undefined && params[key] !== null && params[key] !== "") {
        parts.push(key + "=" + encodeURIComponent(params[key]));
      }
    }
    return parts.length ? "?" + parts.join("&") : "";
  }

  function connect(options) {
    options = options || {};
    var origin = gatewayOrigin(options.url);
    var topics = (options.topics && options.topics.length ? options.topics : ["#"]).slice();
    var token = options.token || null;

    var handlers = []; // [pattern, fn]
    var statusHandlers = [];
    var resetHandlers = [];
    var outbox = []; // publishes waiting for a connection, in order
    var epoch = null;
    var seq = 0;
    var status = null;
    var closed = false;
    var failures = 0;
    var transport = null; // { close() }
    var timer = null;
    var config = null;
    var everOpened = { websocket: false, sse: false };
    // Attempts of a transport that ended before its hello since it last
    // worked: two, and the next transport down is tried instead.
    var misses = { websocket: 0, sse: 0 };

    var client = {
      state: {},
      on: function (pattern, fn) {
        handlers.push([pattern, fn]);
        return client;
      },
      onStatus: function (fn) {
        statusHandlers.push(fn);
        if (status) fn(status);
        return client;
      },
      onReset: function (fn) {
        resetHandlers.push(fn);
        return client;
      },
      publish: function (topic, data, opts) {
        outbox.push({ type: "publish", topic: topic, data: data, retain: !!(opts && opts.retain) });
        flush();
        return client;
      },
      close: function () {
        closed = true;
        clearTimeout(timer);
        if (transport) transport.close();
        setStatus("closed");
      },
      /** Where the stream is: resume point of the next reconnect. */
      position: function () {
        return { epoch: epoch, seq: seq };
      },
      get status() {
        return status;
      },
    };

    function setStatus(next) {
      if (next === status) return;
      status = next;
      statusHandlers.forEach(function (fn) {
        fn(next);
      });
    }

    function replaceState(nextEpoch, nextSeq, state, isReset) {
      var hadHistory = epoch !== null;
      epoch = nextEpoch;
      seq = nextSeq;
      client.state = state || {};
      if (hadHistory || isReset) {
        resetHandlers.forEach(function (fn) {
          fn(client.state, { epoch: epoch, seq: seq });
        });
      }
    }

    /** Applies one server frame, whatever transport carried it. */
    function apply(frame) {
      switch (frame.type) {
        case "hello":
          if (!(frame.resumed && frame.epoch === epoch)) {
            // A fresh start: what we had is replaced (resumed: the missed
            // events follow as ordinary event frames).
            replaceState(frame.epoch, frame.seq, frame.state, false);
          }
          break;
        case "reset":
          replaceState(frame.epoch, frame.seq, frame.state, true);
          break;
        case "subscribed":
          for (var topic in frame.state || {}) client.state[topic] = frame.state[topic];
          break;
        case "event":
          if (frame.seq <= seq) return; // already seen (defensive)
          seq = frame.seq;
          if (frame.retain) {
            if (frame.data === null) delete client.state[frame.topic];
            else client.state[frame.topic] = { seq: frame.seq, data: frame.data };
          }
          handlers.forEach(function (h) {
            if (matches(h[0], frame.topic)) {
              try {
                h[1](frame.data, frame);
              } catch (e) {
                if (root.console) root.console.error("switchyard handler failed", e);
              }
            }
          });
          break;
        case "error":
          if (root.console) root.console.warn("switchyard:", frame.message);
          break;
      }
    }

    function resumeParams() {
      var params = { topics: topics.join(",") };
      if (epoch !== null) {
        params.epoch = epoch;
        params.since = seq;
      }
      return params;
    }

    function retry() {
      if (closed) return;
      failures += 1;
      // Jittered exponential backoff: half the ceiling plus up to half again.
      var ceiling = Math.min(MAX_BACKOFF_MS, MIN_BACKOFF_MS * Math.pow(2, failures - 1));
      var delay = ceiling / 2 + Math.random() * (ceiling / 2);
      clearTimeout(timer);
      timer = setTimeout(start, delay);
    }

    /** WebSocket first, unless the gateway says it is off or it never
     *  worked here; then SSE; then polling. */
    function choose() {
      var wsAllowed = !config || config.websocket_enabled;
      if (wsAllowed && root.WebSocket && misses.websocket < 2) return "websocket";
      if (root.EventSource && misses.sse < 2) return "sse";
      return "poll";
    }

    function start() {
      if (closed) return;
      if (!config) {
        fetch(origin + "/_switchyard/config")
          .then(function (r) {
            return r.json();
          })
          .then(function (c) {
            config = c;
            start();
          })
          .catch(function () {
            config = { websocket_enabled: true, websocket_path: "/ws" };
            start();
          });
        return;
      }
      var kind = choose();
      setStatus(status === null || status === "connecting" ? "connecting" : status);
      if (kind === "websocket") openWebSocket();
      else if (kind === "sse") openEventSource();
      else poll();
    }

    /** One frame from a streaming transport; on its hello, that transport
     *  counts as working. True for a hello. */
    function receive(kind, openStatus, data) {
      var frame;
      try {
        frame = JSON.parse(data);
      } catch (e) {
        return false;
      }
      apply(frame);
      if (frame.type !== "hello") return false;
      // Status after the hello is applied, so listeners see the state.
      everOpened[kind] = true;
      misses[kind] = 0;
      failures = 0;
      setStatus(openStatus);
      flush();
      return true;
    }

    function openWebSocket() {
      var params = resumeParams();
      if (token) params.token = token;
      var url = origin.replace(/^http/, "ws") + (config.websocket_path || "/ws") + query(params);
      var socket;
      try {
        socket = new root.WebSocket(url);
      } catch (e) {
        return retry();
      }
      transport = {
        kind: "websocket",
        send: function (frame) {
          if (socket.readyState !== 1) return false;
          socket.send(JSON.stringify(frame));
          return true;
        },
        close: function () {
          socket.onclose = null;
          socket.close(1000);
        },
      };
      var greeted = false;
      socket.onmessage = function (message) {
        if (receive("websocket", "open", message.data)) greeted = true;
      };
      socket.onclose = function () {
        transport = null;
        if (!greeted) misses.websocket += 1;
        if (closed) return;
        setStatus("connecting");
        retry();
      };
    }

    function openEventSource() {
      var source = new root.EventSource(origin + (config.events_url || "/_switchyard/events") + query(resumeParams()));
      transport = {
        kind: "sse",
        send: function () {
          return false;
        },
        close: function () {
          source.close();
        },
      };
      function onFrame(message) {
        if (receive("sse", "fallback-sse", message.data)) greeted = true;
      }
      source.addEventListener("hello", onFrame);
      source.addEventListener("event", onFrame);
      source.addEventListener("reset", onFrame);
      var greeted = false;
      source.onerror = function () {
        if (!greeted) misses.sse += 1;
        // EventSource would reconnect with Last-Event-ID by itself; we
        // reconnect ourselves so the resume point and backoff stay ours.
        source.close();
        transport = null;
        if (closed) return;
        retry();
      };
    }

    function poll() {
      var params = resumeParams();
      if (epoch !== null) params.wait = POLL_WAIT_SECS;
      var controller = root.AbortController ? new root.AbortController() : null;
      transport = {
        kind: "poll",
        send: function () {
          return false;
        },
        close: function () {
          if (controller) controller.abort();
        },
      };
      fetch(origin + (config.state_url || "/_switchyard/state") + query(params), {
        signal: controller ? controller.signal : undefined,
      })
        .then(function (r) {
          if (!r.ok) throw new Error("state " + r.status);
          return r.json();
        })
        .then(function (answer) {
          failures = 0;
          // Polling works. If a faster transport worked here before, the
          // outage was the gateway's: try it again next time. If it never
          // did, it is blocked on this network: keep polling.
          if (everOpened.websocket) misses.websocket = 0;
          if (everOpened.sse) misses.sse = 0;
          if (answer.resumed) {
            (answer.events || []).forEach(apply);
            if (answer.epoch === epoch) seq = Math.max(seq, answer.seq);
          } else {
            replaceState(answer.epoch, answer.seq, answer.state, false);
          }
          setStatus("fallback-poll");
          flush();
          transport = null;
          if (!closed) timer = setTimeout(start, 0);
        })
        .catch(function () {
          transport = null;
          retry();
        });
    }

    /** Sends queued publishes in order: over the WebSocket when open, else
     *  with POST. Stops at the first that cannot go yet. */
    var posting = false;
    function flush() {
      if (posting) return;
      while (outbox.length) {
        var frame = outbox[0];
        if (transport && transport.send(frame)) {
          outbox.shift();
          continue;
        }
        if (!status || status === "connecting" || status === "closed") return;
        posting = true;
        var headers = { "content-type": "application/json" };
        if (token) headers.authorization = "Bearer " + token;
        fetch(origin + "/_switchyard/publish", {
          method: "POST",
          headers: headers,
          body: JSON.stringify({ topic: frame.topic, data: frame.data, retain: frame.retain }),
        })
          .then(function (r) {
            posting = false;
            if (r.status === 202 || r.status === 400 || r.status === 401 || r.status === 413) {
              outbox.shift(); // done, or never going to work: do not block the rest
              flush();
            } else {
              setTimeout(flush, 1000);
            }
          })
          .catch(function () {
            posting = false;
            setTimeout(flush, 1000);
          });
        return;
      }
    }

    setStatus("connecting");
    start();
    return client;
  }

  var Switchyard = { connect: connect, matches: matches };
  root.Switchyard = Switchyard;
})(typeof globalThis !== "undefined" ? globalThis : this);
