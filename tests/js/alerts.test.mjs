// The tab's title and favicon for the selected run (dashboard/alerts.js), over snapshots the reducer folds.
import { test } from "node:test";
import assert from "node:assert/strict";

import { reduce } from "../../dashboard/state.js";
import { faviconFor, titleFor } from "../../dashboard/alerts.js";

const ev = (n, type, data) => ({ id: `1-${n}`, type, run: "r1", ts: n, data });

test("the title says how far a run is, in the terms it reports, then its name", () => {
  const prd = [ev(1, "task_started", { task_name: "Nightly", story_count: 4 }),
    ev(2, "story_started", { story_id: "S1" }), ev(3, "story_completed", { story_id: "S1", status: "failed" }),
    ev(4, "story_started", { story_id: "S2" }), ev(5, "story_completed", { story_id: "S2", status: "skipped" })];
  assert.equal(titleFor(reduce(prd)), "⏳ 2/4 · Nightly", "failed and skipped stories are done too");
  assert.equal(titleFor(reduce([...prd, ev(6, "task_paused", {})])), "⏸ paused · Nightly");
  assert.equal(titleFor(reduce([...prd, ev(6, "task_stopped", {})])), "⛔ stopped · Nightly");
  const script = [ev(1, "task_started", { task_name: "deploy.sh" }), ev(2, "progress", { percent: 39.6 })];
  assert.equal(titleFor(reduce(script)), "⏳ 40% · deploy.sh");
  const command = [ev(1, "task_started", { task_name: "make test", command: "make test" })];
  assert.equal(titleFor(reduce(command)), "⏳ running · make test", "no progress reported: no 0%");
  assert.equal(titleFor(reduce([...command, ev(9, "task_completed", { status: "passed", exit_code: 0 })])),
    "✅ passed · make test");
  assert.equal(titleFor(reduce([ev(1, "note", { message: "hi" })])), "⏳ running · r1", "no name: the run id");
  assert.equal(titleFor(null), "loop");
});

test("the favicon is the status colour with the finished share as a ring", () => {
  const svg = (snap) => decodeURIComponent(faviconFor(snap).replace("data:image/svg+xml,", ""));
  const half = reduce([ev(1, "task_started", { story_count: 2 }), ev(2, "story_completed", { story_id: "S1" })]);
  const ring = 2 * Math.PI * 6;
  assert.match(svg(half), new RegExp(`stroke="#1a56db" stroke-width="3" stroke-dasharray="${(ring / 2).toFixed(2)} `));
  assert.match(svg(reduce([ev(1, "task_started", {}), ev(2, "task_completed", { status: "failed" })])),
    /stroke="#b3261e"[^>]*stroke-dasharray="37\.70 /);
  assert.match(svg(null), /stroke="#5d6470" stroke-width="3" stroke-dasharray="0\.00 /, "no run: grey, no ring");
});
