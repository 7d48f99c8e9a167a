// benches/peers/ws.js — a Node `ws` (v8) peer for benches/broadcast.sh.
//
// Emulates the part of switchyard the load generator uses (common.js has the
// frames): a WebSocket at $WEBSOCKET_PATH (/ws) with `?topics=`, a hello
// first, then event frames; POST /_switchyard/publish answered 202 with the
// receipt, on Node's own http server. Each event is encoded once (JSON, then
// one Buffer) and sent with `client.send(buffer)` to every client subscribed
// to its topic or to everything: the usual ws broadcast loop, over a topic ->
// set-of-sockets map instead of all of `wss.clients` (clientTracking off).
// Listens on 127.0.0.1:$PORT; every other route is a 404.
//
// Leaves out: auth, Origin checks, history and resume, subscribe frames,
// limits. Backpressure: none; ws has no policy, a slow client's frames pile
// up in its socket's user-space buffer without bound (switchyard queues up to
// CLIENT_QUEUE events and then closes with 1008). No compression (ws's
// server default), no pings. bufferutil and utf-8-validate are installed
// (optional dependencies of the uWS package) and ws uses them.
'use strict';

const http = require('http');
const { WebSocketServer } = require('ws');
const { PORT, HOST, WS_PATH, EVERYTHING, topicsOf, hello, publish } = require('./common');

// topic -> Set of sockets
const subscribers = new Map();

const server = http.createServer((req, res) => {
  if (req.method !== 'POST' || req.url !== '/_switchyard/publish') {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const answer = publish(Buffer.concat(chunks).toString());
    res
      .writeHead(answer.status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(answer.body) })
      .end(answer.body);
    for (const { topic, frame } of answer.events) {
      const bytes = Buffer.from(frame);
      for (const name of [topic, EVERYTHING]) {
        const subs = subscribers.get(name);
        if (subs) for (const client of subs) client.send(bytes, { binary: false });
      }
    }
  });
});

const wss = new WebSocketServer({ server, path: WS_PATH, clientTracking: false, perMessageDeflate: false });

wss.on('connection', (ws, req) => {
  const query = req.url.includes('?') ? req.url.slice(req.url.indexOf('?') + 1) : '';
  const topics = topicsOf(query);
  for (const topic of topics) {
    if (!subscribers.has(topic)) subscribers.set(topic, new Set());
    subscribers.get(topic).add(ws);
  }
  ws.on('error', () => {}); // a reset client: 'close' follows
  ws.on('close', () => {
    for (const topic of topics) subscribers.get(topic).delete(ws);
  });
  ws.send(hello(topics));
});

server.listen(PORT, HOST);
