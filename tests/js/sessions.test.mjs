// The run list's words for Claude Code sessions, the waiting count in the tab title, and when a
// session starts waiting (dashboard/sessions.js), over snapshots the reducer folds from hook events.
import { test } from "node:test";
import assert from "node:assert/strict";

import { apply } from "../../dashboard/state.js";
import { sessionLine, sessionStatus, startsWaiting, waitingCount, waitingPrefix } from "../../dashboard/sessions.js";

const ev = (n, type, data, run = "s1") => ({ id: `1-${n}`, type, run, ts: n, data });

function fold(events) {
  const snaps = [];
  let snap = null;
  for (const e of events) snaps.push(snap = apply(snap ? structuredClone(snap) : null, e));   // apply changes its input
  return snaps;
}

const SESSION = [
  ev(1, "session_started", { cwd: "/src/shop", project: "shop", source: "startup" }),
  ev(2, "session_state", { state: "working", prompt_length: 12 }),
  ev(3, "tool_call", { tool: "Bash", id: "t1", summary: "rm -rf build" }),
  ev(4, "session_state", { state: "waiting_for_input", waiting_for: "Claude needs your permission to use Bash" }),
  ev(5, "session_state", { state: "waiting_for_input", waiting_for: "Claude needs your permission" }),
  ev(6, "tool_result", { tool: "Bash", id: "t1", is_error: false, summary: "" }),
  ev(7, "session_state", { state: "idle" }),
  ev(8, "session_ended", { reason: "prompt_input_exit" }),
];

test("a session's state in words, the waiting one with what it waits for", () => {
  const snaps = fold(SESSION);
  assert.deepEqual(snaps.map((s) => sessionStatus(s).word),
    ["idle", "working", "working", "waiting for you", "waiting for you", "working", "idle", "ended"]);
  assert.deepEqual(sessionStatus(snaps[3]), { word: "waiting for you", key: "waiting",
    task: "shop — Claude needs your permission to use Bash" });
  assert.equal(sessionStatus({ run: "r", status: "running" }), null);     // a run that is not a session
});

test("each wait starts once: a permission request and its notification are one", () => {
  const snaps = fold(SESSION);
  const starts = snaps.map((s, i) => startsWaiting(i ? snaps[i - 1] : null, s));
  assert.deepEqual(starts, [false, false, false, true, false, false, false, false]);
});

test("the tab title counts the live sessions waiting", () => {
  const a = fold(SESSION.slice(0, 4)).at(-1);
  const b = fold(SESSION.slice(0, 5).map((e) => ({ ...e, run: "s2" }))).at(-1);
  const ended = fold(SESSION).at(-1);
  assert.equal(waitingCount([a, b, ended, { run: "plain", status: "running" }]), 2);
  assert.equal(waitingPrefix(2), "2 waiting · ");
  assert.equal(waitingPrefix(0), "");
});

test("the selected session's line: where, what it waits for, the model, its subagents", () => {
  const snap = fold([...SESSION.slice(0, 4),
    ev(9, "session_subagent", { agent_id: "a1", agent_type: "Explore", state: "running" }),
    ev(10, "session_subagent", { agent_id: "a2", agent_type: "Plan", state: "done" })]).at(-1);
  assert.equal(sessionLine(snap.session),
    "Claude Code session in /src/shop · waiting for you: Claude needs your permission to use Bash · 2 subagents (1 running)");
  assert.equal(sessionLine({ cwd: "/x", state: "idle", model: "opus", subagents: [] }), "Claude Code session in /x · opus");
});
