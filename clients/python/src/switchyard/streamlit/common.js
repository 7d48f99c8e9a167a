/* Page-side code shared by live.js and table.js; the Python side prepends
 * it to each (a components v2 `js` is one module text). */

const REGISTRY = "__switchyard_live";
const DETACH_GRACE_MS = 5000; // a remount within this keeps the subscription
// Ask Python for a fresh token this long before exp (at most a third of the
// token's lifetime as received, for short-lived tokens).
const TOKEN_SPARE_MS = 60000;
// How long a send waits for a fresh token it asked for before going ahead.
const TOKEN_WAIT_MS = 10000;

function registry() {
  if (!window[REGISTRY]) window[REGISTRY] = {};
  return window[REGISTRY];
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

/** Whether `entry.token` is nearly spent: less than TOKEN_SPARE_MS (or a
 *  third of its lifetime since it came) left. */
function nearlySpent(entry) {
  const exp = tokenExpiry(entry.token);
  if (exp === null) return false;
  const spare = Math.min(TOKEN_SPARE_MS, (exp - entry.tokenSince) / 3);
  return exp - Date.now() <= spare;
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

/** The page's widget-update lane, shared by every switchyard element: one
 *  job (a setStateValue or setTriggerValue) per browser task, so each lands
 *  in a batch of its own (Streamlit reruns one fragment per batch). */
function laneRun(job) {
  const lane = (window.__switchyard_live_lane = window.__switchyard_live_lane || { queue: [], busy: false });
  lane.queue.push(job);
  if (!lane.busy) drain(lane);
}

function drain(lane) {
  const job = lane.queue.shift();
  if (!job) {
    lane.busy = false;
    return;
  }
  lane.busy = true;
  try {
    job();
  } finally {
    // After Streamlit's own flush of this update (a 0 ms timer set first).
    setTimeout(() => drain(lane), 5);
  }
}

/** Status and message when client.js cannot be loaded. A page that did not
 *  come through the gateway (Streamlit's own port, whose URL Streamlit
 *  prints) has no /_switchyard/ routes: say where to open it instead. */
function loadFailure(src, error, gateway) {
  const here = window.location.origin;
  let there = null;
  try {
    there = gateway ? new URL(gateway).origin : null;
  } catch (e) {
    there = null;
  }
  if (there && there !== here) {
    return {
      status: "wrong-port",
      error:
        "This page comes straight from Streamlit (" + here + "), not through switchyard, " +
        "so live updates cannot connect. Open " + gateway + " instead.",
    };
  }
  return { status: "failed", error: "cannot load " + src + ": " + error };
}
