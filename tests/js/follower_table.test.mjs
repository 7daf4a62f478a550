// dashboard/connection.js against the table of stream cases that loopstream.client.follow.Follower
// (what `loop watch` uses) is run against too: tests/fixtures/tables/follower_cases.json.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Connection } from "../../dashboard/connection.js";

const table = JSON.parse(readFileSync(new URL("../fixtures/tables/follower_cases.json", import.meta.url)));

class FakeEventSource {
  static last = null;
  constructor(url) { this.url = url; this.listeners = {}; FakeEventSource.last = this; }
  addEventListener(type, fn) { (this.listeners[type] ||= []).push(fn); }
  emit(type, data, id) { for (const fn of this.listeners[type] || []) fn({ data: JSON.stringify(data), lastEventId: id }); }
  close() {}
}

const settle = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

for (const c of table.cases) {
  test(c.name, async () => {
    const applied = [], snapshots = [], polled = [];
    const pages = [...(c.polls || [])];
    const conn = new Connection({
      server: "http://sidecar.test", EventSourceImpl: FakeEventSource,
      fetchImpl: async (url) => {
        const since = new URL(url).searchParams.get("since");
        polled.push(since);
        const expected = pages.shift();
        assert.equal(since, expected.since);
        return { ok: true, json: async () => expected.page };
      },
      setTimeoutImpl: () => 0, clearTimeoutImpl: () => {},
      onEvent: (e) => applied.push(e.id),
      onSnapshots: (runs, info) => snapshots.push({ runs: runs.map((r) => r.run), reason: info.reason ?? null }),
    });
    conn.start();
    const es = FakeEventSource.last;
    es.onopen();
    for (const frame of c.frames) {
      es.emit(frame.event, frame.data, frame.id);
      await settle();
    }
    assert.deepEqual(applied, c.applied);
    assert.deepEqual(snapshots, c.snapshots);
    assert.deepEqual(polled, c.polled);
    assert.equal(conn.cursor, c.cursor);
    assert.equal(pages.length, 0);
  });
}
