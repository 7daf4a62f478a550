// Tabs sharing one stream (dashboard/shared.js): node's real BroadcastChannel between "tabs" in
// one process, a lock queue with the Web Locks semantics that matter (one holder, next waiter
// granted when it goes), and a fake Connection that records where it resumes from.
import { afterEach, test } from "node:test";
import assert from "node:assert/strict";

import { seen } from "../../dashboard/connection.js";
import { SharedStream } from "../../dashboard/shared.js";

class Locks {
  constructor() { this.queue = []; this.holder = null; }
  request(name, fn) {
    return new Promise((resolve) => { this.queue.push({ fn, resolve }); this.grant(); });
  }
  grant() {
    if (this.holder || !this.queue.length) return;
    this.holder = this.queue.shift();
    this.holder.fn();
  }
  release() { this.holder = null; this.grant(); }   // the holding tab closed
}

// Wait for a condition with a deadline (messages cross the channel asynchronously).
async function until(predicate, ms = 5000) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${predicate}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
const tabs = [];
const closeAll = () => { for (const t of tabs.splice(0)) t.stream.channel?.close(); };
const ev = (seq, text) => ({ id: `9-${seq}`, type: "output", run: "r", ts: seq, data: { text } });

function tab(locks, connections, name) {
  const t = { name, events: [], snapshots: [], statuses: [] };
  tabs.push(t);
  t.stream = new SharedStream({
    server: "http://sidecar.test/", transport: "sse", locks, Channel: BroadcastChannel,
    onEvent: (e) => t.events.push(e.id), onSnapshots: (runs) => t.snapshots.push(runs),
    onStatus: (s) => t.statuses.push(s), getSnapshots: () => [{ run: "r", from: name }],
    makeConnection: (opts) => {
      const c = { opts, cursor: opts.cursor, started: false, start() { this.started = true; }, tab: name };
      connections.push(c);
      return c;
    },
  });
  return t;
}

afterEach(closeAll);

test("seen compares ids within an epoch", () => {
  assert.equal(seen("9-3", "9-4"), true);
  assert.equal(seen("9-5", "9-4"), false);
  assert.equal(seen("10-1", "9-4"), false);
  assert.equal(seen("9-1", null), false);
});

test("one tab leads and relays; a follower gets the state, then every event once", async () => {
  const locks = new Locks();
  const connections = [];
  const a = tab(locks, connections, "a");
  a.stream.start();
  assert.equal(a.stream.role, "leader");
  const lead = connections[0];
  lead.cursor = "9-2";
  lead.opts.onSnapshots([{ run: "r" }], { reset: true });
  lead.opts.onStatus("live");
  const b = tab(locks, connections, "b");
  b.stream.start();
  await until(() => b.snapshots.length);
  assert.equal(b.stream.role, "follower");
  assert.equal(connections.length, 1);                        // the follower opened no stream
  assert.deepEqual(b.snapshots, [[{ run: "r", from: "a" }]]);
  assert.equal(b.statuses.at(-1), "live");
  lead.opts.onEvent(ev(3, "x"));
  lead.opts.onEvent(ev(4, "y"));
  await until(() => b.events.length === 2);
  assert.deepEqual(b.events, ["9-3", "9-4"]);
  assert.deepEqual(a.events, ["9-3", "9-4"]);
});

test("when the leader goes, the next tab leads and resumes from the last id it applied", async () => {
  const locks = new Locks();
  const connections = [];
  const a = tab(locks, connections, "a");
  a.stream.start();
  connections[0].cursor = "9-0";
  connections[0].opts.onSnapshots([], { reset: true });
  const b = tab(locks, connections, "b");
  const c = tab(locks, connections, "c");
  b.stream.start();
  c.stream.start();
  await until(() => b.stream.hasState && c.stream.hasState);
  connections[0].opts.onEvent(ev(1, "one"));
  await until(() => b.events.length === 1 && c.events.length === 1);
  a.stream.channel.close();                                   // tab a closes: its lock is released
  locks.release();
  assert.equal(b.stream.role, "leader");
  assert.equal(c.stream.role, "follower");
  const next = connections.at(-1);
  assert.equal(next.tab, "b");
  assert.equal(next.opts.cursor, "9-1");                      // resumes after the last event b applied
  assert.ok(next.started);
  next.opts.onEvent(ev(1, "one"));                            // a duplicate from the overlap is dropped
  next.opts.onEvent(ev(2, "two"));
  await until(() => c.events.length === 2);
  assert.deepEqual(b.events, ["9-1", "9-2"]);
  assert.deepEqual(c.events, ["9-1", "9-2"]);
});

test("without Web Locks or BroadcastChannel each tab connects by itself", () => {
  const connections = [];
  const t = new SharedStream({ server: "http://sidecar.test/", locks: undefined, Channel: BroadcastChannel,
    makeConnection: (opts) => { const c = { opts, start() {} }; connections.push(c); return c; } });
  t.start();
  assert.equal(t.role, "solo");
  assert.equal(connections.length, 1);
});
