/*! switchyard client: live events from a switchyard gateway, in the browser.
 *
 *   <script src="/_switchyard/client.js"></script>            (global Switchyard)
 *   import Switchyard from "/_switchyard/client.js?esm";       (ES module)
 *
 *   const sy = Switchyard.connect({ topics: ["positions/#"], token: "<jwt>" });
 *                                       // no topics: all (a scoped token: its own patterns)
 *                                       // history: N  starts with the last N matching events
 *                                       //   (handlers see them first, with event.history = true)
 *   sy.on("positions/+", (data, event) => { ... });
 *   sy.onStatus((status) => { ... });   // connecting | open | fallback-sse | fallback-poll | closed
 *                                       // | unauthorized | forbidden  (final: no reconnect)
 *   sy.onReset((state) => { ... });     // the gateway's history broke: state replaced
 *   sy.onError((error) => { ... });     // an `error` frame: { code, message }
 *   sy.state                            // { topic: { seq, data } }, kept live
 *   sy.publish("orders/1", { qty: 5 }, { retain: true });   // needs a token (or loopback)
 *   sy.close();
 *
 * Transports, in order: WebSocket, then Server-Sent Events, then polling,
 * as /_switchyard/config allows. Every reconnect resumes from the last
 * (epoch, seq) seen, so a dropped connection loses no event; when the
 * gateway cannot resume (it restarted), the state is replaced and onReset
 * fires: never a silent hole. No dependencies.
 *
 * Tokens (a gateway with AUTH_SECRET; /_switchyard/config says
 * `auth_required`). `token` is a string, or a function returning one (or a
 * Promise of one), e.g. `token: () => fetch("/my-token").then(r => r.text())`.
 * - WebSocket: sent as the first frame, {"type":"auth","token":…}, so it
 *   never appears in a URL. SSE and polling: `?token=` (EventSource cannot
 *   set headers). Publishing with a token: POST with `Authorization: Bearer`.
 * - Refresh (function tokens only): the JWT's `exp` is read (not verified)
 *   and the function is called again 30 s before it (at 3/4 of the lifetime
 *   for tokens of 2 minutes or less); the fresh token goes to the open
 *   WebSocket as a new auth frame, and an SSE stream reconnects with it,
 *   resuming from the last event. A `token_expired` error frame also
 *   triggers a refresh.
 * - Refused: a 401 or close 4001 (missing, invalid or expired token) makes
 *   a function token be called once more; if that gives no usable token (the
 *   same one, an expired one, none, an exception) or is refused again, the
 *   status becomes "unauthorized". A 403 or close 4003 (the token does not
 *   cover the topics) makes it "forbidden". Both are final: the client
 *   stops reconnecting (no retry storm against a gateway that will say no);
 *   create a new connection with a new token. A gateway that needs a token
 *   and none was given: "unauthorized" at once.
 */
(function (root) {
  "use strict";

  var MIN_BACKOFF_MS = 500;
  // `history`: at most this many events (the gateway's own limit), read
  // for at most this long before live events go ahead without them; live
  // frames held back meanwhile are bounded too.
  var MAX_HISTORY = 1000;
  var HISTORY_WAIT_MS = 5000;
  var MAX_HELD = 10000;
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

  /** base64url JSON of a JWT's payload; null when it is not one. */
  function jwtPayload(token) {
    var parts = String(token).split(".");
    if (parts.length !== 3) return null;
    try {
      var b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      while (b64.length % 4) b64 += "=";
      return JSON.parse(root.atob(b64));
    } catch (e) {
      return null;
    }
  }

  /** The `token` option: a string, or a function returning a string or a
   *  Promise of one. `usable()` gives the current token, calling the
   *  function when there is none yet or it expires within 2 s (the refresh
   *  timer normally got there first); `fresh()` always calls it (one call
   *  at a time). */
  function tokenSource(option) {
    var fn = typeof option === "function" ? option : null;
    var source = {
      given: !!option,
      renewable: !!fn,
      current: fn ? null : option ? String(option) : null,
      pending: null,
      /** When the token expires (ms since the epoch), or null. */
      expiresAt: function (token) {
        var payload = token ? jwtPayload(token) : null;
        return payload && typeof payload.exp === "number" ? payload.exp * 1000 : null;
      },
      expired: function (token) {
        var exp = source.expiresAt(token);
        return exp !== null && exp <= Date.now();
      },
      fresh: function () {
        if (!fn) return Promise.resolve(source.current);
        if (!source.pending) {
          source.pending = Promise.resolve()
            .then(fn)
            .then(
              function (token) {
                source.pending = null;
                if (token) source.current = String(token);
                return token ? String(token) : null;
              },
              function (e) {
                source.pending = null;
                throw e;
              }
            );
        }
        return source.pending;
      },
      usable: function () {
        var exp = source.expiresAt(source.current);
        if (fn && (!source.current || (exp !== null && exp - Date.now() < 2000))) return source.fresh();
        return Promise.resolve(source.current);
      },
    };
    return source;
  }

  function connect(options) {
    options = options || {};
    var origin = gatewayOrigin(options.url);
    // No topics: everything, or, with a scoped token, what the token covers
    // (the gateway decides; no `topics` parameter is sent).
    var topics = options.topics && options.topics.length ? options.topics.slice() : null;
    var tokens = tokenSource(options.token);
    var historyWanted = Math.max(0, Math.min(MAX_HISTORY, Math.floor(Number(options.history) || 0)));
    // Frames that arrive while the history is read, applied after it in
    // order (null: not reading), so handlers see events in seq order.
    var held = null;

    var handlers = []; // [pattern, fn]
    var statusHandlers = [];
    var resetHandlers = [];
    var errorHandlers = [];
    // unauthorized / forbidden: final, no more reconnects.
    var halted = false;
    // Refusals (401 / 4001) since the last hello: the second one is final.
    var refusals = 0;
    var refreshTimer = null;
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
      onError: function (fn) {
        errorHandlers.push(fn);
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
        clearTimeout(refreshTimer);
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

    /** Hands one event to the handlers that match its topic. */
    function deliver(frame) {
      handlers.forEach(function (h) {
        if (matches(h[0], frame.topic)) {
          try {
            h[1](frame.data, frame);
          } catch (e) {
            if (root.console) root.console.error("switchyard handler failed", e);
          }
        }
      });
    }

    /** `history`: once, after the first fresh hello, the last N matching
     *  events up to that hello's seq (`?history=N`), handed to the handlers
     *  with `history: true` before any live event. The state is not touched:
     *  the hello's state already holds their effect. */
    function readHistory(atEpoch, atSeq) {
      var limit = historyWanted;
      historyWanted = 0; // once per connect()
      held = [];
      var done = false;
      var finish = function (answer) {
        if (done) return;
        done = true;
        if (answer && answer.epoch === atEpoch) {
          (answer.history || []).forEach(function (frame) {
            if (frame.type === "event" && frame.seq <= atSeq) {
              frame.history = true;
              deliver(frame);
            }
          });
        }
        var waiting = held;
        held = null;
        (waiting || []).forEach(apply);
      };
      setTimeout(finish, HISTORY_WAIT_MS);
      var params = { topics: topics ? topics.join(",") : null, history: limit };
      tokens
        .usable()
        .then(function (token) {
          var headers = {};
          if (token && authOn()) headers.authorization = "Bearer " + token;
          return fetch(origin + (config.state_url || "/_switchyard/state") + query(params), { headers: headers });
        })
        .then(function (r) {
          return r.ok ? r.json() : null;
        })
        .then(finish, function () {
          finish(null);
        });
    }

    /** Applies one server frame, whatever transport carried it. */
    function apply(frame) {
      if (held !== null) {
        if (held.length < MAX_HELD) return held.push(frame);
        var waiting = held; // too much at once: live events go ahead
        held = null;
        waiting.forEach(apply);
      }
      switch (frame.type) {
        case "hello":
          if (!(frame.resumed && frame.epoch === epoch)) {
            // A fresh start: what we had is replaced (resumed: the missed
            // events follow as ordinary event frames).
            replaceState(frame.epoch, frame.seq, frame.state, false);
            if (historyWanted) readHistory(frame.epoch, frame.seq);
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
          deliver(frame);
          break;
        case "error":
          if (root.console) root.console.warn("switchyard:", frame.code || "error", frame.message);
          errorHandlers.forEach(function (fn) {
            try {
              fn({ code: frame.code, message: frame.message });
            } catch (e) {
              if (root.console) root.console.error("switchyard error handler failed", e);
            }
          });
          // The server warns before it closes: refresh now, whatever the
          // timer said (a throttled background tab may have missed it).
          if (frame.code === "token_expired") refreshToken();
          break;
      }
    }

    function resumeParams() {
      var params = { topics: topics ? topics.join(",") : null };
      if (epoch !== null) {
        params.epoch = epoch;
        params.since = seq;
      }
      return params;
    }

    /** Whether requests carry the token: the gateway needs one, or (config
     *  unreadable) one was given. */
    function authOn() {
      return !!(config && config.auth_required);
    }

    /** unauthorized / forbidden: final. */
    function halt(why) {
      halted = true;
      clearTimeout(timer);
      clearTimeout(refreshTimer);
      if (transport) transport.close();
      transport = null;
      setStatus(why);
    }

    /** A 401 / close 4001 (forbidden: a 403 / close 4003) for `used`. A
     *  function token gets one more call; the next connection uses what it
     *  returns, unless it is nothing new. */
    function refused(forbidden, used) {
      if (closed || halted) return;
      if (forbidden) return halt("forbidden");
      refusals += 1;
      if (!tokens.renewable || refusals > 1) return halt("unauthorized");
      tokens.fresh().then(
        function (fresh) {
          if (closed || halted) return;
          if (!fresh || fresh === used || tokens.expired(fresh)) return halt("unauthorized");
          setStatus("connecting");
          retry();
        },
        function () {
          halt("unauthorized");
        }
      );
    }

    /** Schedules the next refresh of a function token from its `exp`. */
    function scheduleRefresh() {
      clearTimeout(refreshTimer);
      if (!tokens.renewable || closed || halted) return;
      var exp = tokens.expiresAt(tokens.current);
      if (exp === null) return;
      var left = exp - Date.now();
      var wait = left > 120000 ? left - 30000 : left * 0.75;
      refreshTimer = setTimeout(refreshToken, Math.max(1000, wait));
    }

    /** Calls the token function again and hands the fresh token to the
     *  live transport: an auth frame on the WebSocket, a reconnect of the
     *  SSE stream (polls pick it up by themselves). */
    function refreshToken() {
      if (!tokens.renewable || closed || halted) return;
      tokens.fresh().then(
        function (fresh) {
          if (closed || halted || !fresh) return;
          scheduleRefresh();
          if (!transport || !authOn()) return;
          if (transport.kind === "websocket") transport.authenticate(fresh);
          else if (transport.kind === "sse") {
            transport.close();
            transport = null;
            clearTimeout(timer);
            start();
          }
        },
        function (e) {
          // The old token stays in force until it runs out; then the
          // gateway refuses and refused() decides.
          if (root.console) root.console.warn("switchyard: token refresh failed", e);
        }
      );
    }

    function retry() {
      if (closed || halted) return;
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
      if (closed || halted) return;
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
            // Unreadable: assume a token is needed if one was given.
            config = { websocket_enabled: true, websocket_path: "/ws", auth_required: tokens.given };
            start();
          });
        return;
      }
      if (authOn() && !tokens.given) {
        if (root.console) root.console.warn("switchyard: this gateway needs a token; pass {token: …}");
        return halt("unauthorized");
      }
      var kind = choose();
      setStatus(status === null || status === "connecting" ? "connecting" : status);
      if (!authOn()) return open(kind, null);
      tokens.usable().then(
        function (token) {
          if (closed || halted) return;
          if (!token) return halt("unauthorized");
          scheduleRefresh();
          open(kind, token);
        },
        function (e) {
          if (root.console) root.console.warn("switchyard: the token function failed", e);
          halt("unauthorized");
        }
      );
    }

    function open(kind, token) {
      if (kind === "websocket") openWebSocket(token);
      else if (kind === "sse") openEventSource(token);
      else poll(token);
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
      refusals = 0;
      setStatus(openStatus);
      flush();
      return true;
    }

    /** `token`: sent as the first frame once open (never in the URL). */
    function openWebSocket(token) {
      var url = origin.replace(/^http/, "ws") + (config.websocket_path || "/ws") + query(resumeParams());
      var socket;
      try {
        socket = new root.WebSocket(url);
      } catch (e) {
        return retry();
      }
      var used = token;
      transport = {
        kind: "websocket",
        send: function (frame) {
          if (socket.readyState !== 1) return false;
          socket.send(JSON.stringify(frame));
          return true;
        },
        /** A fresh token for the live connection. */
        authenticate: function (fresh) {
          if (socket.readyState !== 1) return;
          used = fresh;
          socket.send(JSON.stringify({ type: "auth", token: fresh }));
        },
        close: function () {
          socket.onclose = null;
          socket.close(1000);
        },
      };
      socket.onopen = function () {
        if (token) socket.send(JSON.stringify({ type: "auth", token: token }));
      };
      var greeted = false;
      socket.onmessage = function (message) {
        if (receive("websocket", "open", message.data)) greeted = true;
      };
      socket.onclose = function (ev) {
        transport = null;
        if (closed || halted) return;
        if (ev.code === 4001 || ev.code === 4003) {
          // Refused by the gateway: not a transport that fails here.
          setStatus("connecting");
          return refused(ev.code === 4003, used);
        }
        if (!greeted) misses.websocket += 1;
        setStatus("connecting");
        retry();
      };
    }

    /** After an SSE or poll error before any data: asks the state route
     *  (no wait) whether the token is refused, since EventSource hides the
     *  status. Calls back with 401, 403 or another status (0: unreachable). */
    function probe(token, then) {
      var params = { topics: topics ? topics.join(",") : null };
      if (token) params.token = token;
      fetch(origin + (config.state_url || "/_switchyard/state") + query(params))
        .then(function (r) {
          then(r.status);
        })
        .catch(function () {
          then(0);
        });
    }

    function openEventSource(token) {
      var params = resumeParams();
      if (token) params.token = token;
      var source = new root.EventSource(origin + (config.events_url || "/_switchyard/events") + query(params));
      var me = (transport = {
        kind: "sse",
        send: function () {
          return false;
        },
        close: function () {
          source.close();
        },
      });
      function onFrame(message) {
        if (receive("sse", "fallback-sse", message.data)) greeted = true;
      }
      source.addEventListener("hello", onFrame);
      source.addEventListener("event", onFrame);
      source.addEventListener("reset", onFrame);
      var greeted = false;
      var expired = false;
      source.onerror = function (ev) {
        if (typeof ev.data === "string") {
          // The server's own `event: error` (e.g. token_expired before it
          // ends the stream), not a connection error.
          var frame = null;
          try {
            frame = JSON.parse(ev.data);
          } catch (e) {
            /* not JSON */
          }
          if (frame) {
            frame.type = "error";
            if (frame.code === "token_expired") expired = true;
            apply(frame);
          }
          return;
        }
        // EventSource would reconnect with Last-Event-ID by itself; we
        // reconnect ourselves so the resume point and backoff stay ours.
        source.close();
        if (transport === me) transport = null;
        if (closed || halted) return;
        if (expired || (!greeted && authOn())) {
          probe(token, function (code) {
            if (closed || halted) return;
            if (code === 401 || code === 403) return refused(code === 403, token);
            if (!greeted) misses.sse += 1;
            retry();
          });
          return;
        }
        if (!greeted) misses.sse += 1;
        retry();
      };
    }

    function poll(token) {
      var params = resumeParams();
      if (token) params.token = token;
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
          if (r.status === 401 || r.status === 403) return { refused: r.status };
          if (!r.ok) throw new Error("state " + r.status);
          return r.json();
        })
        .then(function (answer) {
          if (answer.refused) {
            transport = null;
            return refused(answer.refused === 403, token);
          }
          failures = 0;
          refusals = 0;
          // Polling works. If a faster transport worked here before, the
          // outage was the gateway's: try it again next time. If it never
          // did, it is blocked on this network: keep polling.
          if (everOpened.websocket) misses.websocket = 0;
          if (everOpened.sse) misses.sse = 0;
          if (answer.resumed) {
            (answer.events || []).forEach(apply);
            // (While the history is read the events wait in `held`; the
            // next poll then asks from the last one applied.)
            if (answer.epoch === epoch && held === null) seq = Math.max(seq, answer.seq);
          } else {
            replaceState(answer.epoch, answer.seq, answer.state, false);
          }
          setStatus("fallback-poll");
          flush();
          transport = null;
          if (!closed && !halted) timer = setTimeout(start, 0);
        })
        .catch(function () {
          transport = null;
          retry();
        });
    }

    /** Sends queued publishes in order: without a token over the
     *  WebSocket when open, else (and always with a token, which stays in
     *  the Authorization header) with POST. Stops at the first that cannot
     *  go yet. */
    var posting = false;
    function flush() {
      if (posting) return;
      while (outbox.length) {
        var frame = outbox[0];
        if (!tokens.given && transport && transport.send(frame)) {
          outbox.shift();
          continue;
        }
        if (!status || status === "connecting" || status === "closed") return;
        posting = true;
        tokens
          .usable()
          .then(function (token) {
            var headers = { "content-type": "application/json" };
            if (token) headers.authorization = "Bearer " + token;
            return fetch(origin + ((config && config.publish_url) || "/_switchyard/publish"), {
              method: "POST",
              headers: headers,
              body: JSON.stringify({ topic: frame.topic, data: frame.data, retain: frame.retain }),
            });
          })
          .then(function (r) {
            posting = false;
            if (r.status === 401 && tokens.renewable && !frame.retried) {
              // Perhaps only expired: once more with a fresh token.
              frame.retried = true;
              tokens.fresh().then(flush, flush);
            } else if (r.status === 202 || (r.status >= 400 && r.status < 500 && r.status !== 429)) {
              // Done, or never going to work: do not block the rest.
              if (r.status !== 202 && root.console) root.console.warn("switchyard: publish refused", r.status, frame.topic);
              outbox.shift();
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
