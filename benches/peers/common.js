// benches/peers/common.js — the part of switchyard's protocol both peer
// servers (uws.js, ws.js) share, so the two speak exactly the same frames.
//
// Emulates (see /_switchyard/publish and the WebSocket protocol in SPEC.md):
//   - one epoch per process start (16 hex digits), a gap-free seq from 1;
//   - the hello  {"type":"hello","epoch":E,"seq":N,"resumed":false,"state":{...}}
//     with the retained state of the requested topics;
//   - the event  {"type":"event","seq":N,"topic":T,"data":D,"ts":"RFC 3339 ms"}
//     (+ "retain":true before "ts" on retained events), encoded once per event;
//   - the publish body (one event object or an array of them) and its receipt,
//     202 {"epoch":E,"seq":N} or {"epoch":E,"seqs":[...]}; 400 for bad JSON.
// Leaves out: topic patterns (a requested topic is an exact name; no topics,
// or "#", means everything), resume (epoch/since), subscribe frames, auth,
// history, idempotency ids, the topic character and size checks.
//
// One difference in the bytes: `data` is parsed and serialised again by
// JavaScript (switchyard keeps the publisher's text), so integers above 2^53
// (the load generator's nanosecond timestamps) lose their last digits; the
// frame keeps the same length and the latency is off by under 1 us.
'use strict';

const crypto = require('crypto');

const EPOCH = crypto.randomBytes(8).toString('hex');
const EVERYTHING = '#';
const PORT = Number(process.env.PORT || 0);
const HOST = process.env.HOST || '127.0.0.1';
const WS_PATH = process.env.WEBSOCKET_PATH || '/ws';

let seq = 0;
// topic -> {seq, data}: what a hello carries
const retained = new Map();

// `?topics=` value -> the topics to subscribe to; EVERYTHING for none or "#".
function topicsOf(query) {
  let value = '';
  for (const part of (query || '').split('&')) {
    if (part.startsWith('topics=')) value = part.slice(7);
  }
  let topics;
  try {
    topics = decodeURIComponent(value).split(',').filter((t) => t.length > 0);
  } catch {
    topics = [];
  }
  return topics.length === 0 || topics.includes(EVERYTHING) ? [EVERYTHING] : topics;
}

function hello(topics) {
  const state = {};
  for (const [topic, s] of retained) {
    if (topics[0] === EVERYTHING || topics.includes(topic)) state[topic] = s;
  }
  return JSON.stringify({ type: 'hello', epoch: EPOCH, seq, resumed: false, state });
}

// A publish body -> {status, body, events: [{topic, frame}]}; frames are
// encoded here, once per event, for every subscriber alike.
function publish(body) {
  let parsed;
  try {
    parsed = JSON.parse(body);
  } catch {
    return { status: 400, body: '{"error":"body is not JSON"}', events: [] };
  }
  const list = Array.isArray(parsed) ? parsed : [parsed];
  if (list.length === 0 || !list.every((e) => e && typeof e.topic === 'string' && e.topic && 'data' in e)) {
    return { status: 400, body: '{"error":"each event needs a topic and data"}', events: [] };
  }
  const events = [];
  const seqs = [];
  for (const e of list) {
    seq += 1;
    seqs.push(seq);
    const retain = e.retain === true;
    if (retain && e.data === null) retained.delete(e.topic);
    else if (retain) retained.set(e.topic, { seq, data: e.data });
    const frame = { type: 'event', seq, topic: e.topic, data: e.data };
    if (retain) frame.retain = true;
    frame.ts = new Date().toISOString();
    events.push({ topic: e.topic, frame: JSON.stringify(frame) });
  }
  const receipt = Array.isArray(parsed) ? { epoch: EPOCH, seqs } : { epoch: EPOCH, seq: seqs[0] };
  return { status: 202, body: JSON.stringify(receipt), events };
}

module.exports = { EVERYTHING, PORT, HOST, WS_PATH, topicsOf, hello, publish };
