// Backoff arithmetic and the cursor hand-over between stream and polling, with fakes for
// EventSource, fetch and timers (the real ones are exercised in Chromium by test_dashboard.py).
import { test } from "node:test";
import assert from "node:assert/strict";
import { backoffDelay, BACKOFF_STEPS, Connection } from "../../dashboard/connection.js";

test("backoff is 1, 2, 4, 8, 16, then 30 seconds", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10, 50].map(backoffDelay), [1, 2, 4, 8, 16, 30, 30, 30, 30]);
  assert.deepEqual(BACKOFF_STEPS, [1, 2, 4, 8, 16, 30]);
});

class FakeEventSource {
  static last = null;
  constructor(url) { this.url = url; this.listeners = {}; FakeEventSource.last = this; this.closed = false; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  emit(type, data, id) { for (const fn of this.listeners[type] || []) fn({ data: JSON.stringify(data), lastEventId: id }); }
  close() { this.closed = true; }
}

function harness(pages) {
  const applied = [], snapshots = [], statuses = [], timers = [];
  const conn = new Connection({
    server: "http://sidecar.test", EventSourceImpl: FakeEventSource,
    fetchImpl: async (url) => ({ ok: true, json: async () => pages.shift()(new URL(url)) }),
    setTimeoutImpl: (fn, ms) => { timers.push({ fn, ms }); return timers.length; }, clearTimeoutImpl: () => {},
    onEvent: (e) => applied.push(e.id), onSnapshots: (runs) => snapshots.push(runs), onStatus: (s) => statuses.push(s),
  });
  return { conn, applied, snapshots, statuses, timers };
}

const ev = (seq) => ({ id: `7-${seq}`, type: "progress", run: "r", ts: seq, data: {} });

test("a stream failure polls from the same cursor, then the stream resumes from it", async () => {
  const h = harness([
    (url) => { assert.equal(url.searchParams.get("since"), "7-2"); return { reset: false, cursor: "7-4", events: [ev(3), ev(4)] }; },
  ]);
  h.conn.start();
  const es = FakeEventSource.last;
  es.onopen();
  es.emit("hello", { resumed: false, cursor: "7-0", runs: [{ run: "r" }] }, "7-0");
  es.emit("progress", ev(1));
  es.emit("progress", ev(2));
  es.emit("progress", ev(2));                       // a duplicate is dropped
  es.onerror();
  assert.ok(es.closed);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(h.applied, ["7-1", "7-2", "7-3", "7-4"]);
  assert.equal(h.timers.find((t) => t.ms === 1000) !== undefined, true);   // first retry after 1 s
  h.timers.find((t) => t.ms === 1000).fn();
  assert.match(FakeEventSource.last.url, /last_event_id=7-4/);
  assert.deepEqual(h.statuses, ["live", "reconnecting", "polling"]);
});

test("repeated failures back off 1, 2, 4 … and a success resets the count", () => {
  const h = harness(Array(20).fill(() => ({ reset: false, cursor: "7-0", events: [] })));
  h.conn.start();
  const delays = [];
  for (let i = 0; i < 7; i++) {
    FakeEventSource.last.onerror();
    const t = h.timers.filter((x) => x.ms >= 1000).pop();
    delays.push(t.ms / 1000);
    h.timers.length = 0;
    t.fn();
  }
  assert.deepEqual(delays, [1, 2, 4, 8, 16, 30, 30]);
  FakeEventSource.last.onopen();
  FakeEventSource.last.onerror();
  assert.equal(h.timers.filter((x) => x.ms >= 1000).pop().ms, 1000);
});

test("a gap in ids (a type without a listener) is filled from /api/events in order", async () => {
  const h = harness([
    () => ({ reset: false, cursor: "7-3", events: [ev(2), { ...ev(3), type: "deploy.step" }, ev(4)] }),
  ]);
  h.conn.start();
  const es = FakeEventSource.last;
  es.onopen();
  es.emit("hello", { resumed: false, cursor: "7-1", runs: [] }, "7-1");
  es.emit("progress", ev(4));
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(h.applied, ["7-2", "7-3", "7-4"]);
});

test("a reset replaces the snapshots and moves the cursor", () => {
  const h = harness([]);
  h.conn.start();
  const es = FakeEventSource.last;
  es.emit("hello", { resumed: false, cursor: "7-1", runs: [] }, "7-1");
  es.emit("reset", { reason: "evicted", cursor: "7-90", runs: [{ run: "x" }] }, "7-90");
  assert.equal(h.conn.cursor, "7-90");
  assert.deepEqual(h.snapshots.at(-1), [{ run: "x" }]);
});

test("an outage says since when and when the stream is tried next, and clears when it is back", async () => {
  let now = 50_000;
  const outages = [];
  const h = harness(Array(5).fill(() => ({ reset: false, cursor: "7-0", events: [] })));
  h.conn.o.now = () => now;
  h.conn.o.onOutage = (info) => outages.push(info);
  h.conn.start();
  FakeEventSource.last.onopen();
  FakeEventSource.last.onerror();
  assert.deepEqual(outages[0], { since: 50_000, retryAt: 51_000, polling: true, pollOk: null });
  await new Promise((r) => setImmediate(r));
  assert.equal(outages.at(-1).pollOk, true);                  // polling reaches the sidecar meanwhile
  now = 52_000;
  h.timers.find((t) => t.ms === 1000).fn();
  FakeEventSource.last.onerror();                             // still down: since stays, retry moves
  assert.equal(outages.at(-1).since, 50_000);
  assert.equal(outages.at(-1).retryAt, 54_000);
  FakeEventSource.last.onopen();
  assert.equal(outages.at(-1), null);
});

test("a first stream resumes from a cursor handed over (a tab taking the lead)", () => {
  const h = harness([]);
  h.conn.cursor = "7-41";
  const conn = new Connection({ ...h.conn.o, cursor: "7-41" });
  conn.start();
  assert.match(FakeEventSource.last.url, /last_event_id=7-41/);
});
