// The dashboard's reducer against the golden fixtures the Python reducer passes.
//   node --test tests/js/   (run by tests/test_dashboard_reducer.py)
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";
import { reduce, pyJson } from "../../dashboard/state.js";

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

test("pyJson writes what Python's compact sorted json.dumps writes", () => {
  assert.equal(pyJson({ k: [1, 2], a: "b", n: null, t: true, u: "ü" }), '{"a":"b","k":[1,2],"n":null,"t":true,"u":"ü"}');
});
