// switchyard.streamlit.live_table(): rows drawn in the browser straight from
// client.js events, with no Python rerun at all (for high-rate feeds).
// (The helpers it shares with live.js are in common.js, put before this file.)
//
// One subscription and one <table> per `key`, kept in window.__switchyard_live
// across reruns (Streamlit 1.67 calls this function again on every rerun
// without the previous cleanup); each call re-attaches the table to the
// element Streamlit gives. Events are drawn once per animation frame: newest
// first, at most max_rows rows (`latest`: one row per topic, updated in place).

const ASK_AGAIN_MS = 2000;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function cellText(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** What makes a new subscription necessary when it changes. */
function signatureOf(data) {
  return JSON.stringify([data.topics, data.client_js, data.latest, data.history || 0]);
}

function createTable(data) {
  const root = el("div", "sy-live-table");
  const status = el("div", "sy-status", "connecting");
  const table = el("table");
  const head = el("thead");
  const body = el("tbody");
  table.append(head, body);
  root.append(status, table);
  const entry = {
    kind: "table",
    key: data.key,
    signature: signatureOf(data),
    root,
    status,
    head,
    body,
    columns: data.columns || null,
    maxRows: data.max_rows || 200,
    latest: !!data.latest,
    queue: [], // rows not drawn yet
    byTopic: new Map(), // latest: topic -> <tr>
    received: 0,
    frame: null,
    detachTimer: null,
    token: data.token || null,
    tokenSince: Date.now(),
    tokenWaiters: [],
    setTriggerValue: null,
    client: null,
    closed: false,
    statusText: "connecting",
  };

  const src = new URL(data.client_js, window.location.href).href;
  const base = src.replace(/\/_switchyard\/client\.js(\?.*)?$/, "");
  loadClient(src).then(
    (Switchyard) => {
      if (entry.closed) return;
      const options = { topics: data.topics, url: base, history: data.history || 0 };
      if (entry.token) options.token = () => tokenFor(entry);
      const client = Switchyard.connect(options);
      entry.client = client;
      const seed = () => {
        entry.queue = [];
        entry.byTopic.clear();
        entry.body.replaceChildren();
        const state = client.state;
        Object.keys(state)
          .sort()
          .forEach((topic) => add(entry, { topic, data: state[topic].data, ts: null }));
      };
      client.onStatus((status) => {
        if (status === "open" || status.startsWith("fallback")) {
          if (entry.statusText === "connecting" && entry.received === 0) seed();
        }
        entry.statusText = status;
        draw(entry);
      });
      client.onReset(seed);
      client.on("#", (payload, frame) => {
        if (!frame.history) entry.received += 1; // live events only
        add(entry, { topic: frame.topic, data: payload, ts: frame.ts });
      });
    },
    (error) => {
      const failure = loadFailure(src, error, data.gateway);
      entry.statusText = failure.status + ": " + failure.error;
      draw(entry);
    }
  );
  return entry;
}

/** The token for client.js; nearly spent: a trigger reruns Python once,
 *  which mints a fresh one (the only Python run this component causes). */
function tokenFor(entry) {
  if (!entry.token || !nearlySpent(entry) || !entry.setTriggerValue) return entry.token;
  const asked = entry.token;
  return new Promise((resolve) => {
    entry.tokenWaiters.push(resolve);
    // Asked again every ASK_AGAIN_MS until a fresh token comes: a trigger
    // batched with another fragment's update reruns only that fragment.
    const until = Date.now() + TOKEN_WAIT_MS;
    const ask = () => {
      if (entry.closed || entry.token !== asked || Date.now() > until) return;
      laneRun(() => entry.setTriggerValue("token", asked));
      setTimeout(ask, ASK_AGAIN_MS);
    };
    ask();
    setTimeout(() => resolve(entry.token), TOKEN_WAIT_MS);
  });
}

function add(entry, row) {
  entry.queue.push(row);
  // Rows that could never be shown are not kept.
  if (!entry.latest && entry.queue.length > entry.maxRows) {
    entry.queue.splice(0, entry.queue.length - entry.maxRows);
  }
  draw(entry);
}

function draw(entry) {
  if (entry.frame !== null || entry.closed) return;
  entry.frame = requestAnimationFrame(() => {
    entry.frame = null;
    render(entry);
  });
}

function columnsFor(entry, row) {
  if (entry.columns) return entry.columns;
  const data = row && row.data;
  if (data && typeof data === "object" && !Array.isArray(data)) {
    entry.columns = Object.keys(data).slice(0, 12);
  } else if (row) {
    entry.columns = [];
  }
  return entry.columns || [];
}

function fill(entry, tr, row) {
  const columns = entry.columns || [];
  const cells = [row.ts ? row.ts.slice(11, 23) : "", row.topic];
  const data = row.data;
  if (columns.length && data && typeof data === "object" && !Array.isArray(data)) {
    columns.forEach((name) => cells.push(cellText(data[name])));
  } else {
    cells.push(cellText(data));
    for (let i = 1; i < columns.length; i++) cells.push("");
  }
  tr.replaceChildren(...cells.map((text) => el("td", "", text)));
}

function render(entry) {
  const rows = entry.queue.splice(0);
  if (!entry.head.firstChild && (rows.length || entry.columns)) {
    const names = columnsFor(entry, rows[0]);
    const tr = el("tr");
    ["time", "topic"].concat(names.length ? names : ["data"]).forEach((name) => tr.append(el("th", "", name)));
    entry.head.append(tr);
  }
  if (entry.latest) {
    rows.forEach((row) => {
      let tr = entry.byTopic.get(row.topic);
      if (!tr) {
        tr = el("tr");
        tr.dataset.topic = row.topic;
        entry.byTopic.set(row.topic, tr);
        const after = Array.from(entry.byTopic.keys())
          .sort()
          .find((topic) => topic > row.topic);
        const next = after !== undefined ? entry.byTopic.get(after) : null;
        entry.body.insertBefore(tr, next && next.parentNode ? next : null);
      }
      fill(entry, tr, row);
    });
  } else if (rows.length) {
    const fragment = document.createDocumentFragment();
    for (let i = rows.length - 1; i >= 0; i--) {
      const tr = el("tr");
      fill(entry, tr, rows[i]);
      fragment.append(tr);
    }
    entry.body.prepend(fragment);
    while (entry.body.rows.length > entry.maxRows) entry.body.lastChild.remove();
  }
  entry.status.textContent = entry.statusText + " · " + entry.received + " events";
  entry.status.dataset.status = entry.statusText;
  entry.root.dataset.received = String(entry.received);
}

function shutdown(entry) {
  entry.closed = true;
  clearTimeout(entry.detachTimer);
  if (entry.frame !== null) cancelAnimationFrame(entry.frame);
  if (entry.client) entry.client.close();
  entry.root.remove();
  const live = registry();
  if (live["table:" + entry.key] === entry) delete live["table:" + entry.key];
}

export default function (component) {
  const { data, parentElement } = component;
  if (!data || !data.key) return undefined;
  const live = registry();
  const slot = "table:" + data.key; // live() uses the bare key
  let entry = live[slot];
  const signature = signatureOf(data);
  if (entry && (entry.closed || entry.signature !== signature)) {
    shutdown(entry);
    entry = null;
  }
  if (!entry) {
    entry = createTable(data);
    live[slot] = entry;
  }
  if (entry.detachTimer !== null) {
    clearTimeout(entry.detachTimer);
    entry.detachTimer = null;
  }
  entry.setTriggerValue = component.setTriggerValue;
  if (data.token && data.token !== entry.token) {
    entry.token = data.token;
    entry.tokenSince = Date.now();
    entry.tokenWaiters.splice(0).forEach((resolve) => resolve(entry.token));
  }
  entry.maxRows = data.max_rows || entry.maxRows;
  if (entry.root.parentNode !== parentElement) parentElement.append(entry.root);
  return () => {
    if (entry.detachTimer !== null) clearTimeout(entry.detachTimer);
    entry.detachTimer = setTimeout(() => shutdown(entry), DETACH_GRACE_MS);
  };
}
