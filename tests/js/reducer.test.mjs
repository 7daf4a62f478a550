// The dashboard's reducer against the golden fixtures the Python reducer passes.
//   node --test tests/js/   (run by tests/test_dashboard_js.py)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { reduce, textJson, cutHead, cutTail, codePoints } from "../../dashboard/state.js";

const fixtures = join(dirname(fileURLToPath(import.meta.url)), "..", "fixtures");
const files = readdirSync(fixtures).filter((f) => f.endsWith(".json"));

test("there are golden fixtures", () => assert.ok(files.length >= 5));

for (const file of files) {
  test(`reducer matches ${file}`, () => {
    const { events, snapshot } = JSON.parse(readFileSync(join(fixtures, file), "utf8"));
    const before = JSON.stringify(events);
    assert.deepStrictEqual(reduce(events), snapshot);
    assert.equal(JSON.stringify(events), before, "the reducer must not change its input");
  });
}

test("textJson writes what state.text_json writes", () => {
  assert.equal(textJson({ k: [1, 2.0], a: "b", n: null, t: true, u: "ü" }), '{"a":"b","k":[1,2],"n":null,"t":true,"u":"ü"}');
});

test("text is cut by code points, as Python cuts it", () => {
  const emoji = "😀".repeat(600);
  assert.equal(codePoints(cutHead(emoji, 500)), 500);
  assert.equal(cutHead(emoji, 500), "😀".repeat(500));
  assert.equal(cutTail("ab" + "😀".repeat(3), 4), "b😀😀😀");
  assert.equal(cutTail("x", 4), "x");
  assert.equal(codePoints("a😀b"), 3);
});

test("a log line of 600 emoji keeps 500 of them, and a non-string reason is JSON", () => {
  const snap = reduce([
    { id: "1-1", type: "note", run: "r", ts: 1, data: { message: "😀".repeat(600) } },
    { id: "1-2", type: "stop_requested", run: "r", ts: 2, data: { reason: { a: 1, b: 2.0 } } },
  ]);
  assert.equal(snap.log[0].text, "😀".repeat(500));
  assert.equal(snap.control.stop_requested, '{"a":1,"b":2}');
});

test("wrong-typed fields never throw and an unknown type named like a prototype key is a log line", () => {
  const snap = reduce([
    { id: "1-1", type: "task_started", run: "r", ts: 1, data: { stories: 7, story_count: "x", task_name: { n: 1 } } },
    { id: "1-2", type: "constructor", run: "r", ts: 2, data: { k: 1 } },
    { id: "1-3", type: "ac_completed", run: "r", ts: 3, data: { story_id: [1], ac_index: 1e300 } },
  ]);
  assert.equal(snap.task_name, '{"n":1}');
  assert.equal(snap.story_count, null);
  assert.deepEqual(snap.log.map((l) => l.text), ['{"k":1}']);
  assert.equal(snap.stories[0].id, "[1]");
});
