// switchyard.streamlit.live(): the page side of one live() component.
// (The helpers it shares with table.js, and their constants, are in common.js,
// which the Python side puts before this file.)
//
// One client.js subscription per `key`, kept in window.__switchyard_live
// (Streamlit 1.67 calls this function again on every rerun without the
// previous cleanup, so anything kept in the closure would be opened again).
// Each event gets a number n (1, 2, 3…). Every send hands Python, through
// setStateValue("feed", …), which reruns the enclosing fragment: the events
// it has not acknowledged yet (at most MAX_PENDING; past it the oldest are
// dropped and Python counts the numbers it never got) and the whole current
// state. The element Python renders in that run carries the acknowledgement
// (`data.ack`: the last event number and the last send it took). Sends are
// throttled: the next one waits max_reruns_per_sec's interval after the
// previous send and after its acknowledgement (so two fragment runs never
// start closer than that interval); a send not acknowledged within
// ACK_TIMEOUT_MS is made again (a rerun that was lost). The sends of all
// live() elements on the page go one per browser task: Streamlit batches the
// widget updates of one task and reruns only one fragment for the batch.

const MAX_PENDING = 1000;
const ACK_TIMEOUT_MS = 3000;

function randomId() {
  return Math.random().toString(36).slice(2) + Date.now().toString(36);
}

/** What makes a new subscription necessary when it changes. */
function signatureOf(data) {
  return JSON.stringify([data.topics, data.client_js, data.history || 0]);
}

function createEntry(data) {
  const entry = {
    id: randomId(), // names this subscription to Python (acks are per id)
    key: data.key,
    signature: signatureOf(data),
    maxRate: data.max_reruns_per_sec || 4,
    n: 0, // last number given to an event
    pending: [], // events Python has not acknowledged, oldest first
    acked: 0,
    resets: 0, // times the gateway replaced the state
    status: "connecting",
    error: null,
    token: data.token || null,
    tokenSince: Date.now(),
    tokenWaiters: [],
    wantToken: null,
    dirty: false,
    ackedSent: 0, // the last send Python acknowledged
    queued: false, // waiting in the page's send lane
    lastSend: -Infinity,
    lastAck: -Infinity,
    sendTimer: null,
    detachTimer: null,
    setStateValue: null,
    client: null,
    closed: false,
    calls: 0, // calls of the component function (diagnostics)
    sends: 0, // numbers the sends; Python acknowledges the last it took
  };

  entry.tokenFn = () => {
    if (entry.token && !nearlySpent(entry)) return entry.token;
    // Nearly spent: Python mints a fresh one on the run this send causes.
    return new Promise((resolve) => {
      entry.tokenWaiters.push(resolve);
      entry.wantToken = entry.token;
      entry.dirty = true;
      enqueue(entry);
      setTimeout(() => resolve(entry.token), TOKEN_WAIT_MS);
    });
  };

  const src = new URL(data.client_js, window.location.href).href;
  const base = src.replace(/\/_switchyard\/client\.js(\?.*)?$/, "");
  loadClient(src).then(
    (Switchyard) => {
      if (entry.closed) return;
      const options = { topics: data.topics, url: base, history: data.history || 0 };
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
          history: !!frame.history,
          epoch: client.position().epoch,
        });
      });
      client.onReset(() => {
        entry.resets += 1;
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
      const failure = loadFailure(src, error, data.gateway);
      entry.status = failure.status;
      entry.error = failure.error;
      changed(entry);
    }
  );
  return entry;
}

function push(entry, event) {
  event.n = ++entry.n;
  entry.pending.push(event);
  if (entry.pending.length > MAX_PENDING) entry.pending.splice(0, entry.pending.length - MAX_PENDING);
  changed(entry);
}

function changed(entry) {
  entry.dirty = true;
  schedule(entry);
}

function unacknowledged(entry) {
  return entry.sends > entry.ackedSent;
}

/** When the next send may go: an interval after the previous send and
 *  after its acknowledgement; ACK_TIMEOUT_MS after it when none came. */
function nextSendAt(entry) {
  const interval = 1000 / entry.maxRate;
  if (unacknowledged(entry)) return entry.lastSend + Math.max(interval, ACK_TIMEOUT_MS);
  return Math.max(entry.lastSend, entry.lastAck) + interval;
}

/** Sends now or sets the timer for when it may (an acknowledgement moves
 *  that time earlier, so the timer is always set again). */
function schedule(entry) {
  if (entry.sendTimer !== null) {
    clearTimeout(entry.sendTimer);
    entry.sendTimer = null;
  }
  if (entry.closed || entry.queued || !entry.setStateValue) return;
  if (!entry.dirty && !unacknowledged(entry)) return;
  const wait = nextSendAt(entry) - performance.now();
  if (wait <= 0) return enqueue(entry);
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

function enqueue(entry) {
  if (entry.queued) return;
  entry.queued = true;
  laneRun(() => {
    entry.queued = false;
    send(entry);
  });
}

function send(entry) {
  if (entry.closed || !entry.setStateValue) return;
  if (entry.sendTimer !== null) {
    clearTimeout(entry.sendTimer);
    entry.sendTimer = null;
  }
  const at = snapshot(entry);
  entry.dirty = false;
  entry.lastSend = performance.now();
  entry.sends += 1;
  entry.setStateValue("feed", {
    instance: entry.id,
    sent: entry.sends,
    upto: entry.n,
    base: entry.acked, // taken by an earlier Python session, if any
    events: entry.pending,
    resets: entry.resets,
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
  if (ack.instance === entry.id && ack.sent > entry.ackedSent) {
    entry.ackedSent = ack.sent;
    entry.lastAck = performance.now();
  }
  if (ack.instance === entry.id && ack.n > entry.acked) {
    entry.acked = ack.n;
    entry.pending = entry.pending.filter((event) => event.n > ack.n);
  }
  if (data.token && data.token !== entry.token) {
    entry.token = data.token;
    entry.tokenSince = Date.now();
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
  const signature = signatureOf(data);
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
