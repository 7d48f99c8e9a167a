// benches/peers/uws.js — a uWebSockets.js (v20) peer for benches/broadcast.sh.
//
// Emulates the part of switchyard the load generator uses (common.js has the
// frames): a WebSocket at $WEBSOCKET_PATH (/ws) with `?topics=`, a hello
// first, then event frames; POST /_switchyard/publish answered 202 with the
// receipt. Each event is encoded once and handed to `app.publish(topic,
// text)`, uWS's own pub/sub: a socket subscribes to each topic it asked for
// by its exact name, or to the one topic "#" when it asked for everything,
// and each event is published to its topic and to "#" (uWS v20 has no
// wildcards). Listens on 127.0.0.1:$PORT; every other route is a 404.
//
// Leaves out: auth, Origin checks, history and resume, subscribe frames,
// limits. Backpressure is uWS's default: maxBackpressure 64 KiB per socket,
// closeOnBackpressureLimit false, so a socket with more than 64 KiB unsent
// is skipped by publish (its events are dropped, the connection stays open);
// switchyard instead queues up to CLIENT_QUEUE events and then closes with
// 1008. idleTimeout is uWS's default 120 s with automatic pings; no
// compression (the default).
//
// The native binary is loaded directly: the package silently falls back to
// a JavaScript implementation on `ws` when the binary does not load, and a
// benchmark of that would be a benchmark of something else.
'use strict';

const path = require('path');
const { PORT, HOST, WS_PATH, EVERYTHING, topicsOf, hello, publish } = require('./common');

const binary = path.join(
  path.dirname(require.resolve('@trufflesuite/uws-js-unofficial/package.json')),
  'binaries',
  `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`,
);
let uWS;
try {
  uWS = require(binary);
} catch (e) {
  console.error(`uws.js: cannot load the native uWebSockets.js binary ${binary}: ${e.message}`);
  process.exit(1);
}

const app = uWS.App();

app.ws(WS_PATH, {
  upgrade: (res, req, context) => {
    res.upgrade(
      { topics: topicsOf(req.getQuery()) },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    const { topics } = ws.getUserData();
    for (const topic of topics) ws.subscribe(topic);
    ws.send(hello(topics));
  },
  message: () => {}, // subscribe frames are not emulated
});

app.post('/_switchyard/publish', (res) => {
  let aborted = false;
  const chunks = [];
  res.onAborted(() => {
    aborted = true;
  });
  res.onData((chunk, isLast) => {
    chunks.push(Buffer.from(chunk)); // uWS reuses `chunk` after this call
    if (!isLast || aborted) return;
    const answer = publish(Buffer.concat(chunks).toString());
    res.cork(() => {
      res
        .writeStatus(answer.status === 202 ? '202 Accepted' : '400 Bad Request')
        .writeHeader('Content-Type', 'application/json')
        .end(answer.body);
    });
    for (const { topic, frame } of answer.events) {
      app.publish(topic, frame);
      app.publish(EVERYTHING, frame);
    }
  });
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').end();
});

app.listen(HOST, PORT, (socket) => {
  if (!socket) {
    console.error(`uws.js: cannot listen on ${HOST}:${PORT}`);
    process.exit(1);
  }
});
