// What the dashboard says and which run it shows (dashboard/view.js), over snapshots the reducer folds
// from real event sequences: durations, a run's clock and outcome, transcript lines, the outage banner,
// the desktop notifications' words, the run list's order and the run the page opens on.
import { test } from "node:test";
import assert from "node:assert/strict";

import { reduce } from "../../dashboard/state.js";
import {
  cardText, clockText, describe, duration, exitLine, liveTimes, loopingWarning, outageText, outcome, pickOnLoad,
  reportsProgress, runRows, stoppedLine, storyStatusText, transcriptNote, waitingAlert, watchAlert,
} from "../../dashboard/view.js";

let n = 0;
const ev = (type, data, ts, run = "r1") => ({ id: `1-${++n}`, type, run, ts, data });

// A PRD run: three stories, one passed (65 s), one failed, one never reached.
const STORIES = [
  ev("task_started", { task_name: "Nightly", story_count: 3 }, 1000),
  ev("story_started", { story_id: "S1", title: "Build", acceptance_criteria: ["compiles", "links"] }, 1000),
  ev("ac_completed", { story_id: "S1", ac_index: 0, ac_text: "compiles" }, 1030),
  ev("story_completed", { story_id: "S1", status: "passed", duration_ms: 65_000 }, 1065),
  ev("story_started", { story_id: "S2", title: "Test", attempt: 2 }, 1065),
  ev("story_completed", { story_id: "S2", status: "failed", duration_ms: 3_000 }, 1068),
];
// A command run by `loop exec`.
const COMMAND = [ev("task_started", { task_name: "make test", command: "make test" }, 500, "c1")];

test("durations read in seconds, then minutes, then hours, floored and never negative", () => {
  const cases = [[0, "0s"], [59.9, "59s"], [60, "1m 00s"], [61, "1m 01s"], [3599, "59m 59s"], [3600, "1h 00m"],
    [3661, "1h 01m"], [90061, "25h 01m"], [-5, "0s"]];
  assert.deepEqual(cases.map(([s]) => duration(s)), cases.map(([, text]) => text));
  assert.equal(duration(null), "—");
  assert.equal(duration(undefined), "—");
  assert.equal(duration(undefined, ""), "", "the agent panel says nothing for no number");
  assert.equal(duration("12", ""), "", "a string from an event is not a number");
});

test("a live run's clock ticks between events; a finished run's stands still", () => {
  const live = reduce(STORIES.slice(0, 4));   // S1 passed in 65 s, 2 stories left: ~130 s to go at ts 1065
  assert.equal(live.elapsed_s, 65);
  assert.equal(live.eta_s, 130);
  assert.deepEqual(liveTimes(live, 1100), { elapsed: 100, eta: 95 });
  assert.deepEqual(liveTimes(live, 2000), { elapsed: 1000, eta: 0 }, "overdue: nothing left, not a negative time");
  assert.deepEqual(clockText(live, 1100), { elapsed: "1m 40s", remaining: "~1m 35s" });

  const starting = reduce(COMMAND);
  assert.deepEqual(clockText(starting, 530), { elapsed: "30s", remaining: "estimating…" });

  const done = reduce([...STORIES, ev("task_completed", {}, 1070)]);
  assert.deepEqual(liveTimes(done, 5000), { elapsed: 70, eta: null });
  assert.deepEqual(clockText(done, 5000), { elapsed: "1m 10s", remaining: "—" });
});

test("only runs with stories or progress events report progress", () => {
  assert.equal(reportsProgress(reduce(STORIES.slice(0, 1))), true);
  assert.equal(reportsProgress(reduce(COMMAND)), false);
  assert.equal(reportsProgress(reduce([...COMMAND, ev("progress", { percent: 40 }, 501, "c1")])), true);
});

test("a finished command says its exit as the terminal does", () => {
  assert.equal(exitLine(reduce(COMMAND)), null, "nothing while it runs");
  const failed = reduce([...COMMAND, ev("task_completed", { status: "failed", exit_code: 3 }, 505, "c1")]);
  assert.equal(exitLine(failed), "`make test` failed: exit 3 after 5s");
  assert.equal(outcome(failed), "`make test` failed: exit 3 after 5s.");
  const stopped = reduce([...COMMAND, ev("task_stopped", { reason: "deploy window closed" }, 620, "c1")]);
  assert.equal(outcome(stopped), "`make test` stopped: no exit code after 2m 00s. Reason: deploy window closed");
});

test("a finished PRD run says its stories' counts and time", () => {
  const done = reduce([...STORIES, ev("task_completed", {}, 1070)]);
  assert.equal(outcome(done), "Run failed: 1 passed, 1 failed in 1m 10s.");
  assert.equal(stoppedLine(done), null);

  const stopped = reduce([...STORIES.slice(0, 5), ev("task_stopped", { reason: "enough" }, 1080)]);
  assert.equal(outcome(stopped), "Run stopped: 1 passed, 0 failed, 2 cancelled in 1m 20s. Reason: enough");
  assert.equal(stoppedLine(stopped), "Stopped at S2, after 1 of 3 stories finished; 2 cancelled.");
});

test("a script without stories says its time and its last error", () => {
  const script = [ev("task_started", { task_name: "deploy.sh" }, 0, "s1"),
    ev("error_occurred", { error_type: "Timeout", error_message: "db did not answer" }, 3, "s1")];
  assert.equal(outcome(reduce([...script, ev("task_completed", { status: "failed" }, 4, "s1")])),
    "Run failed after 4s. Timeout: db did not answer");
  assert.equal(outcome(reduce([...script, ev("task_completed", { status: "passed" }, 4, "s1")])),
    "Run passed after 4s.", "a passed run's earlier error is not its outcome");
});

test("story rows and cards say where each story is", () => {
  const snap = reduce(STORIES.slice(0, 3));
  const [s1] = snap.stories;
  assert.deepEqual(cardText({ ...s1, last_output: "one\n\ntwo\nthree\nfour\n" }),
    { progress: "1/2 criteria · attempt 1", output: "two\nthree\nfour" });
  assert.equal(storyStatusText(s1), "running");
  const done = reduce(STORIES);
  assert.deepEqual(done.stories.map(storyStatusText), ["passed · 1m 05s", "failed · 3s"]);
  assert.equal(cardText(done.stories[1]).progress, "0/0 criteria · attempt 2");
});

test("a running story whose agent goes in circles is flagged; a finished one is not", () => {
  const looping = [...STORIES.slice(0, 2),
    ev("agent_looping", { story_id: "S1", tool: "Bash", summary: "pytest -q", repeats: 4 }, 1010)];
  const snap = reduce(looping);
  assert.equal(loopingWarning(snap.stories[0]), "⚠ Looping: Bash pytest -q ×4");
  assert.equal(loopingWarning(reduce([...looping, ev("story_completed", { story_id: "S1" }, 1020)]).stories[0]), null);
});

test("events read as transcript lines", () => {
  const line = (type, data) => describe({ id: "1-1", type, data });
  assert.equal(line("output", { story_id: "S1", stream: "stderr", text: "boom" }), "S1 stderr: boom");
  assert.equal(line("story_started", { story_id: "S1", title: "Build" }), "S1 Build (attempt 1)");
  assert.equal(line("story_completed", { story_id: "S1", status: "failed" }), "S1 failed");
  assert.equal(line("ac_failed", { story_id: "S1", ac_index: 1, ac_text: "links", error: "ld: no" }), "S1 [1] links ld: no");
  assert.equal(line("task_started", { task_name: "make test", command: "make test" }), "make test");
  assert.equal(line("task_started", { task_name: "ci", command: "make -j4" }), "ci — `make -j4`");
  assert.equal(line("task_completed", { status: "failed", exit_code: 2, duration_ms: 61_000 }), "failed: exit 2 after 1m 01s");
  assert.equal(line("task_stopped", { exit_code: 130, duration_ms: 1500, reason: "ctrl-c" }),
    "stopped: exit 130 after 1s reason=ctrl-c");
  assert.equal(line("tool_call", { story_id: "S1", tool: "Read", summary: "a.py" }), "S1 → Read: a.py", "agent events");
  assert.equal(line("story_stalled", { story_id: "S1" }), "S1 silent for ");
  assert.equal(line("task_started", { task_name: "PRD" }), '{"task_name":"PRD"}', "a run without a command");
  assert.equal(line("note", { message: "hello" }), "hello");
  assert.equal(line("task_completed", { passed: 2 }), '{"passed":2}', "a PRD run's end has no exit code");
});

test("the transcript's note says what is shown, or why nothing is", () => {
  const events = (k) => ({ events: Array.from({ length: k }, (_, i) => ({ id: `1-${i}` })) });
  assert.equal(transcriptNote(events(3), 3), "3 events.");
  assert.equal(transcriptNote(events(2500), 2000), "Showing the last 2000 of 2500 events; export for all.");
  assert.equal(transcriptNote({ events: [], error: "403 FORBIDDEN" }, 0), "Transcript unavailable: 403 FORBIDDEN");
  assert.equal(transcriptNote(undefined, 0), "0 events.", "not read yet");
});

test("the outage banner says since when, what the page does, and when it tries again", () => {
  const since = Date.UTC(2025, 0, 1, 12, 0, 0);
  const at = new Date(since).toLocaleTimeString();
  const down = { since, retryAt: since + 95_000, pollOk: true, reason: null };
  assert.deepEqual(outageText(down, since + 90_000), {
    what: `The live stream is down since ${at} (1m 30s).`,
    doing: "Updates arrive by polling every 2 s; next stream attempt in 5 s.",
  });
  assert.equal(outageText({ ...down, retryAt: since }, since + 1000).doing,
    "Updates arrive by polling every 2 s; next stream attempt now.");
  const away = { since, retryAt: null, pollOk: false, reason: "too many streams from your address" };
  assert.deepEqual(outageText(away, since + 4000), {
    what: `The sidecar is unreachable since ${at} (4s).`,
    doing: "The sidecar said: too many streams from your address. Polling every 2 s.",
  });
});

test("a watched run notifies when it finishes, a story stalls or an agent loops; a session's end does not", () => {
  const done = reduce([...STORIES, ev("task_completed", {}, 1070)]);
  assert.deepEqual(watchAlert(done, { type: "task_completed", data: {} }, "running"),
    { key: "finished 1070", title: "Nightly: failed", body: "Run failed: 1 passed, 1 failed in 1m 10s." });
  assert.equal(watchAlert(done, { type: "note", data: {} }, "failed"), null, "once: not again on a later event");

  const live = reduce(STORIES.slice(0, 2));
  assert.deepEqual(watchAlert(live, { id: "1-9", type: "story_stalled", data: { story_id: "S1", silent_s: 299.6 } }, "running"),
    { key: "stalled 1-9", title: "Nightly: a story stalled", body: "S1 has been silent for 300 s" });
  assert.deepEqual(watchAlert(live, { id: "1-10", type: "agent_looping", data: { tool: "Bash", summary: "ls", repeats: 3 } },
    "running"), { key: "looping 1-10", title: "Nightly: an agent is going in circles", body: "agent: Bash ls ×3" });
  assert.equal(watchAlert(live, { id: "1-11", type: "output", data: { text: "x" } }, "running"), null);

  const session = reduce([ev("session_started", { cwd: "/src/shop", project: "shop" }, 1, "s"),
    ev("session_state", { state: "waiting_for_input", waiting_for: "Claude needs your permission to use Bash" }, 2, "s"),
    ev("task_completed", { status: "passed" }, 9, "s")]);
  assert.equal(watchAlert(session, { type: "task_completed", data: {} }, "running"), null);
  assert.deepEqual(waitingAlert(session),
    { key: "waiting 2", title: "Claude needs you in shop", body: "Claude needs your permission to use Bash" });
});

test("the run list is newest first, snapshots over summaries, ties by run id", () => {
  const summaries = new Map([["old", { run: "old", started_at: 10, status: "passed" }],
    ["b", { run: "b", started_at: 50, status: "running" }],
    ["queued", { run: "queued", started_at: null, updated_at: 30, status: "running" }]]);
  const runs = new Map([["b", { run: "b", started_at: 50, status: "passed", full: true }],
    ["a", { run: "a", started_at: 50, status: "running" }]]);
  const rows = runRows(summaries, runs);
  assert.deepEqual(rows.map((r) => r.run), ["a", "b", "queued", "old"]);
  assert.equal(rows[1].full, true, "the full snapshot wins over the summary");
  assert.equal(summaries.get("b").status, "running", "the maps are left as they were");
});

test("the page opens on the chosen run, else the live one, else the newest", () => {
  const rows = [{ run: "new", status: "passed" }, { run: "held", status: "paused" }, { run: "live", status: "running" }];
  assert.equal(pickOnLoad(rows, "mine"), "mine", "a ?run= link or a click is never overridden");
  assert.equal(pickOnLoad(rows, null), "held", "a paused run is live: the first live row");
  assert.equal(pickOnLoad(rows.slice(2), null), "live");
  assert.equal(pickOnLoad([{ run: "new", status: "passed" }, { run: "x", status: "failed" }], null), "new");
  assert.equal(pickOnLoad([], null), null, "nothing to show yet: the first run that appears");
  assert.equal(pickOnLoad([], "waiting-for-me"), "waiting-for-me");
});
