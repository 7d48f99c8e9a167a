// switchyard.streamlit.live(): the page side of one live() component.
//
// One client.js subscription per `key`, kept in window.__switchyard_live
// (Streamlit 1.67 calls this function again on every rerun without the
// previous cleanup, so anything kept in the closure would be opened again).
// Each event gets a number n; the events Python has not acknowledged yet
// (at most MAX_PENDING: past it the oldest are dropped and counted in
// `lost`) go to Python with the whole current state through
// setStateValue("feed", ...), which reruns the enclosing fragment. Python
// acknowledges the last number it took through `data.ack` on the next call.
// Sends are throttled: the next one waits max_reruns_per_sec's interval
// after the previous send and after the acknowledgement of it (so two
// fragment runs never start closer than that interval), or ACK_TIMEOUT_MS
// when no acknowledgement comes (a run that was lost).

const REGISTRY = "__switchyard_live";
const MAX_PENDING = 1000;
const ACK_TIMEOUT_MS = 3000;
const TOKEN_SPARE_MS = 60000; // ask Python for a fresh token this long before exp
const TOKEN_WAIT_MS = 10000;
const DETACH_GRACE_MS = 5000; // a remount within this keeps the subscription

function registry() {
  if (!window[REGISTRY]) window[REGISTRY] = {};
  return window[REGISTRY];
}

function loadClient(src) {
  const cache = (window.__switchyard_client_js = window.__switchyard_client_js || {});
  if (!cache[src]) {
    cache[src] = import(src).then(
      (module) => module.default || window.Switchyard,
      (error) => {
        delete cache[src];
        throw error;
      }
    );
  }
  return cache[src];
}

function tokenExpiry(token) {
  try {
    const part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "===".slice((part.length + 3) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch (e) {
    return null;
  }
}

function randomId() {
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

function createEntry(data) {
  const entry = {
    id: randomId(), // names this subscription to Python (acks are per id)
    key: data.key,
    signature: JSON.stringify([data.topics, data.client_js]),
    maxRate: data.max_reruns_per_sec || 4,
    n: 0, // last number given to an event or a reset
    pending: [], // events Python has not acknowledged, oldest first
    acked: 0,
    lost: 0, // events dropped from `pending` when it was full (total)
    lastReset: 0, // number of the last reset (0: none)
    status: "connecting",
    error: null,
    token: data.token || null,
    tokenWaiters: [],
    wantToken: null,
    dirty: false,
    inflight: 0, // `upto` of the last send until it is acknowledged
    lastSend: -Infinity,
    lastAck: -Infinity,
    sendTimer: null,
    detachTimer: null,
    setStateValue: null,
    client: null,
    closed: false,
    calls: 0, // calls of the component function (diagnostics)
    sends: 0,
  };

  entry.tokenFn = () => {
    const exp = tokenExpiry(entry.token);
    if (entry.token && (exp === null || exp - Date.now() > TOKEN_SPARE_MS)) {
      return entry.token;
    }
    // Nearly spent: Python mints a fresh one on the run this send causes.
    return new Promise((resolve) => {
      entry.tokenWaiters.push(resolve);
      entry.wantToken = entry.token;
      entry.dirty = true;
      send(entry);
      setTimeout(() => resolve(entry.token), TOKEN_WAIT_MS);
    });
  };

  const src = new URL(data.client_js, window.location.href).href;
  const base = src.replace(/\/_switchyard\/client\.js(\?.*)?$/, "");
  loadClient(src).then(
    (Switchyard) => {
      if (entry.closed) return;
      const options = { topics: data.topics, url: base };
      if (entry.token) options.token = entry.tokenFn;
      const client = Switchyard.connect(options);
      entry.client = client;
      client.on("#", (payload, frame) => {
        push(entry, {
          topic: frame.topic,
          data: payload,
          seq: frame.seq,
          ts: frame.ts || null,
          retain: !!frame.retain,
          epoch: client.position().epoch,
        });
      });
      client.onReset(() => {
        entry.lastReset = ++entry.n;
        changed(entry);
      });
      client.onStatus((status) => {
        const first = entry.status === "connecting" && status === "connecting";
        entry.status = status;
        if (!first) changed(entry); // Python starts out "connecting": no rerun for it
      });
      if (client.onError) {
        client.onError((error) => {
          entry.error = error && error.code ? error.code : "error";
          changed(entry);
        });
      }
    },
    (error) => {
      entry.status = "failed";
      entry.error = "cannot load " + src + ": " + error;
      changed(entry);
    }
  );
  return entry;
}

function push(entry, event) {
  event.n = ++entry.n;
  entry.pending.push(event);
  if (entry.pending.length > MAX_PENDING) {
    const drop = entry.pending.length - MAX_PENDING;
    entry.pending.splice(0, drop);
    entry.lost += drop;
  }
  changed(entry);
}

function changed(entry) {
  entry.dirty = true;
  schedule(entry);
}

/** When the next send may go: an interval after the previous send and
 *  after its acknowledgement; ACK_TIMEOUT_MS after it when none came. */
function nextSendAt(entry) {
  const interval = 1000 / entry.maxRate;
  let at = entry.lastSend + interval;
  if (entry.inflight > entry.acked) {
    at = Math.max(at, entry.lastSend + ACK_TIMEOUT_MS);
  } else {
    at = Math.max(at, entry.lastAck + interval);
  }
  return at;
}

/** Sends now or sets the timer for when it may (an acknowledgement moves
 *  that time earlier, so the timer is always set again). */
function schedule(entry) {
  if (entry.sendTimer !== null) {
    clearTimeout(entry.sendTimer);
    entry.sendTimer = null;
  }
  if (entry.closed || !entry.dirty || !entry.setStateValue) return;
  const wait = nextSendAt(entry) - performance.now();
  if (wait <= 0) return send(entry);
  entry.sendTimer = setTimeout(() => {
    entry.sendTimer = null;
    schedule(entry);
  }, wait);
}

function snapshot(entry) {
  const state = {};
  const kept = entry.client ? entry.client.state : {};
  for (const topic in kept) state[topic] = kept[topic].data;
  const position = entry.client ? entry.client.position() : { epoch: null, seq: 0 };
  return { state, epoch: position.epoch, seq: position.seq };
}

function send(entry) {
  if (entry.closed || !entry.setStateValue) return;
  if (entry.sendTimer !== null) {
    clearTimeout(entry.sendTimer);
    entry.sendTimer = null;
  }
  const at = snapshot(entry);
  entry.dirty = false;
  entry.inflight = entry.n;
  entry.lastSend = performance.now();
  entry.sends += 1;
  entry.setStateValue("feed", {
    instance: entry.id,
    upto: entry.n,
    events: entry.pending,
    lost: entry.lost,
    reset_at: entry.lastReset,
    state: at.state,
    epoch: at.epoch,
    seq: at.seq,
    status: entry.status,
    error: entry.error,
    want_token: entry.wantToken,
  });
}

/** This call's `data`: acknowledgement, token, component callbacks. */
function attach(entry, component) {
  const data = component.data;
  entry.calls += 1;
  if (entry.detachTimer !== null) {
    clearTimeout(entry.detachTimer);
    entry.detachTimer = null;
  }
  entry.setStateValue = component.setStateValue;
  entry.maxRate = data.max_reruns_per_sec || entry.maxRate;
  const ack = data.ack || {};
  if (ack.instance === entry.id && ack.n > entry.acked) {
    entry.acked = ack.n;
    entry.pending = entry.pending.filter((event) => event.n > ack.n);
    entry.lastAck = performance.now();
  }
  if (data.token && data.token !== entry.token) {
    entry.token = data.token;
    entry.wantToken = null;
    const waiters = entry.tokenWaiters.splice(0);
    waiters.forEach((resolve) => resolve(entry.token));
  }
  // A Python session that has not seen this subscription (a new session
  // after Streamlit restarted, or a new subscription): give it all we hold.
  if (ack.instance !== entry.id && (entry.n > 0 || entry.status !== "connecting")) entry.dirty = true;
  schedule(entry);
}

function shutdown(entry) {
  entry.closed = true;
  clearTimeout(entry.sendTimer);
  clearTimeout(entry.detachTimer);
  if (entry.client) entry.client.close();
  const live = registry();
  if (live[entry.key] === entry) delete live[entry.key];
}

export default function (component) {
  const data = component.data;
  if (!data || !data.key) return undefined;
  const live = registry();
  let entry = live[data.key];
  const signature = JSON.stringify([data.topics, data.client_js]);
  if (entry && (entry.closed || entry.signature !== signature)) {
    shutdown(entry);
    entry = null;
  }
  if (!entry) {
    entry = createEntry(data);
    live[data.key] = entry;
  }
  attach(entry, component);
  // Streamlit runs only the last cleanup, when the element leaves the page;
  // a remount with the same key within the grace keeps the subscription.
  return () => {
    if (entry.detachTimer !== null) clearTimeout(entry.detachTimer);
    entry.detachTimer = setTimeout(() => shutdown(entry), DETACH_GRACE_MS);
  };
}
