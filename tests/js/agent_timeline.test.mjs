// The agent panel's timeline rows (dashboard/agent.js): a subagent's events nest under the Task call
// that started it, a subagent of a subagent under its own, an unknown parent stays flat.
//   node --test tests/js/   (run by tests/test_dashboard_js.py)
import { test } from "node:test";
import assert from "node:assert/strict";
import { timeline } from "../../dashboard/agent.js";
import { describeAgent, looping } from "../../dashboard/view.js";

const ev = (n, type, data) => ({ id: `1-${n}`, type, ts: n, data: { story_id: "S", ...data } });

test("a subagent's calls, text and looping nest under its Task call, nested subagents too", () => {
  const rows = timeline([
    ev(1, "tool_call", { tool: "Task", id: "a", summary: "outer", subagent_type: "Explore" }),
    ev(2, "agent_text", { text: "looking", parent_id: "a" }),
    ev(3, "tool_call", { tool: "Task", id: "b", summary: "inner", subagent_type: null, parent_id: "a" }),
    ev(4, "tool_call", { tool: "Bash", id: "c", summary: "ls", parent_id: "b" }),
    ev(5, "tool_result", { tool: "Bash", id: "c", is_error: true, parent_id: "b" }),
    ev(6, "agent_looping", { tool: "Bash", summary: "ls", repeats: 3, parent_id: "b" }),
    ev(7, "subagent_completed", { id: "b", state: "failed" }),
    ev(8, "tool_call", { tool: "Read", id: "d", summary: "x", parent_id: "nobody" }),
    ev(9, "tool_call", { tool: "Grep", id: "e", summary: "y", story_id: "other" }),
  ], "S");
  assert.deepEqual(rows.map((r) => [r.tool, r.children === null ? null : r.children.length]), [["Task", 2], ["Read", null]]);
  const [outer] = rows;
  assert.equal(outer.sub_state, "running");
  assert.deepEqual(outer.children.map((r) => r.kind), ["text", "tool"]);
  const inner = outer.children[1];
  assert.equal(inner.sub_state, "failed");
  assert.deepEqual(inner.children.map((r) => [r.kind, r.summary, r.is_error ?? null]),
    [["tool", "ls", true], ["looping", "Looping: Bash ls ×3", null]]);
});

test("looping and transcript lines read as a person says them", () => {
  assert.equal(looping({ tool: "Bash", summary: "pytest -q", repeats: 3 }), "Bash pytest -q ×3");
  assert.equal(looping({ summary: "x", repeats: "3" }), "? x");
  assert.equal(describeAgent(ev(1, "tool_call", { tool: "Bash", summary: "ls", parent_id: "t" })), "S ↳ → Bash: ls");
  assert.equal(describeAgent(ev(2, "subagent_completed", { id: "t", state: "failed", summary: "gave up" })),
    "S subagent failed: gave up");
});

test("a hook session's subagent (an agent_id, no Task call) gets a group of its own", () => {
  const hook = (n, type, data) => ({ id: `1-${n}`, type, ts: n, data });
  const rows = timeline([
    hook(1, "tool_call", { tool: "Agent", id: "toolu_1", summary: "count files", subagent_type: "Explore" }),
    hook(2, "session_subagent", { agent_id: "ag1", agent_type: "Explore", state: "running" }),
    hook(3, "tool_call", { tool: "Bash", id: "toolu_2", summary: "ls", agent_id: "ag1", agent_type: "Explore", parent_id: "ag1" }),
    hook(4, "tool_result", { tool: "Bash", id: "toolu_2", is_error: false, agent_id: "ag1", parent_id: "ag1" }),
    hook(5, "session_subagent", { agent_id: "ag1", agent_type: "Explore", state: "done" }),
    hook(6, "tool_call", { tool: "Read", id: "toolu_3", summary: "x", agent_id: "ag2", agent_type: "Plan", parent_id: "ag2" }),
  ], "");
  assert.deepEqual(rows.map((r) => [r.tool, r.summary, r.children === null ? null : r.children.length, r.sub_state ?? null]),
    [["Agent", "count files", 0, "running"], ["Agent", "Explore", 1, "done"], ["Agent", "Plan", 1, "running"]]);
  assert.equal(rows[1].children[0].summary, "ls");
  assert.equal(rows[1].children[0].is_error, false);
});
