// What the page shows, worked out without the DOM (app.js and agent.js put it on the page): a run's
// times and what it came to, an event as a transcript line, the words of the outage banner and of the
// desktop notifications, the run list's order and the run the page opens on. The dashboard's
// counterpart of lib/loopstream/view.py. Pure: no DOM, no clock (the time is passed in), no fetch;
// node's test runner imports it (tests/js/view.test.mjs).
import { asText, isLive, FINISHED } from "./state.js";
import { POLL_EVERY_S } from "./connection.js";

export const isNum = (v) => typeof v === "number" && Number.isFinite(v);
// Any value as text: a string as it is, null or undefined as nothing, anything else as String() says it.
export const text = (v) => (typeof v === "string" ? v : v === null || v === undefined ? "" : String(v));

// 59 -> "59s", 61 -> "1m 01s", 3660 -> "1h 01m" (whole seconds, never below 0); `unknown` for no number.
export function duration(seconds, unknown = "—") {
  if (!isNum(seconds)) return unknown;
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function money(value) {
  if (!isNum(value)) return "unknown";
  return value < 10 ? `$${value.toFixed(4)}` : `$${value.toFixed(2)}`;
}

export function tokens(input, output) {
  return `${(isNum(input) ? input : 0).toLocaleString("en")} in / ${(isNum(output) ? output : 0).toLocaleString("en")} out`;
}

// "Bash pytest -q ×3": what an agent going in circles repeats.
export function looping(d) {
  return `${text(d.tool) || "?"} ${text(d.summary)}`.trim() + (isNum(d.repeats) ? ` ×${d.repeats}` : "");
}

// -- a run's times and outcome ------------------------------------------------------------------
// Elapsed and remaining seconds at `now` (epoch seconds): a live run's tick on between its events.
export function liveTimes(snap, now) {
  let elapsed = snap.elapsed_s || 0;
  let eta = snap.eta_s;
  if (isLive(snap) && typeof snap.started_at === "number") {
    elapsed = Math.max(elapsed, now - snap.started_at);
    if (eta !== null && eta !== undefined && typeof snap.updated_at === "number") {
      eta = Math.max(0, eta - (now - snap.updated_at));
    }
  }
  return { elapsed, eta };
}

// The Elapsed and Remaining cells: "1m 05s", and "~30s", "estimating…" (live, no estimate yet) or "—".
export function clockText(snap, now) {
  const { elapsed, eta } = liveTimes(snap, now);
  const remaining = !isLive(snap) ? "—" : eta === null || eta === undefined ? "estimating…" : `~${duration(eta)}`;
  return { elapsed: duration(elapsed), remaining };
}

// Whether a run reports progress at all (stories, or progress events). One that does not (a
// command run by `loop exec`) gets no empty bar, no story counts and no endless "estimating…".
export function reportsProgress(snap) {
  return Boolean(snap.counts?.total) || Boolean(snap.progress);
}

// A finished command's outcome, as the terminal says it: "`make test` failed: exit 3 after 5s".
export function exitLine(snap) {
  const code = snap.exit_code ?? null;
  const command = snap.command ?? null;
  if (isLive(snap) || (code === null && command === null)) return null;
  return `${command === null ? "" : `\`${command}\` `}${snap.status}: ` +
    `${code === null ? "no exit code" : `exit ${code}`} after ${duration(snap.elapsed_s)}`;
}

// What a finished run came to, in one line: a command's exit, else the stories' counts, else (a script
// without stories) its time and last error; a stop's reason last.
export function outcome(snap) {
  const c = snap.counts || {};
  const ended = exitLine(snap);
  const word = `Run ${snap.status}`;
  const reason = snap.status === "stopped" && snap.stop_reason ? ` Reason: ${snap.stop_reason}` : "";
  if (ended && !c.total) return `${ended}.${reason}`;
  if (!c.total) {
    const e = snap.status === "failed" ? snap.last_error : null;
    return `${word} after ${duration(snap.elapsed_s)}.` +
      (e ? ` ${e.error_type || "error"}: ${e.error_message ?? ""}` : "") + reason;
  }
  return `${word}: ${c.completed ?? 0} passed, ${c.failed ?? 0} failed` +
    (c.skipped ? `, ${c.skipped} skipped` : "") + (c.cancelled ? `, ${c.cancelled} cancelled` : "") +
    ` in ${duration(snap.elapsed_s)}.${reason}`;
}

// Where a stopped run with stories stopped (null for any other run).
export function stoppedLine(snap) {
  const c = snap.counts || {};
  if (snap.status !== "stopped" || !c.total) return null;
  const finished = (c.completed ?? 0) + (c.failed ?? 0) + (c.skipped ?? 0);
  return `Stopped ${snap.stopped_at ? `at ${snap.stopped_at}, ` : ""}` +
    `after ${finished} of ${c.total ?? 0} stories finished; ${c.cancelled ?? 0} cancelled.`;
}

// -- stories -------------------------------------------------------------------------------------
// A running story's card: "1/3 criteria · attempt 2", and the last three lines it printed.
export function cardText(story) {
  const acs = story.acceptance_criteria || [];
  return { progress: `${acs.filter((a) => a.status === "passed").length}/${acs.length} criteria · attempt ${story.attempt || 1}`,
    output: (story.last_output || "").split("\n").filter(Boolean).slice(-3).join("\n") };
}

// A story's status in the list, with its time once it has one: "passed · 1m 05s".
export function storyStatusText(story) {
  return story.status + (story.duration_ms ? ` · ${duration(story.duration_ms / 1000)}` : "");
}

// "⚠ Looping: Bash ls ×3" while a running story's agent goes in circles; null otherwise.
export function loopingWarning(story) {
  const circles = story.status === "running" && story.agent && story.agent.looping ? story.agent.looping : null;
  return circles ? `⚠ Looping: ${looping(circles)}` : null;
}

// -- events as lines ------------------------------------------------------------------------------
// How an event reads in a finished run's transcript.
export function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "output": return `${d.story_id ?? ""} ${d.stream ?? ""}: ${d.text ?? ""}`;
    case "story_started": return `${d.story_id} ${d.title ?? ""} (attempt ${d.attempt ?? 1})`;
    case "story_completed": return `${d.story_id} ${d.status}`;
    case "ac_completed": case "ac_failed": return `${d.story_id} [${d.ac_index}] ${d.ac_text ?? ""} ${d.error ?? ""}`;
    case "task_started":
      if (d.command === undefined || d.command === null) break;
      return asText(d.task_name) + (d.command === d.task_name ? "" : ` — \`${asText(d.command)}\``);
    case "task_completed": case "task_stopped":   // a command's end, as the terminal's plain line says it
      if (!("exit_code" in d)) break;
      return `${event.type === "task_stopped" ? "stopped" : asText(d.status ?? "finished")}: exit ${asText(d.exit_code)}` +
        ` after ${duration(Number(d.duration_ms) / 1000 || 0)}` + (d.reason ? ` reason=${asText(d.reason)}` : "");
  }
  return describeAgent(event) ?? (typeof d.message === "string" ? d.message : JSON.stringify(d));
}

// How an agent event reads in the transcript (null for any other event).
export function describeAgent(event) {
  const d = event.data || {};
  const sid = text(d.story_id) + (d.parent_id ? " ↳" : "");   // a subagent's
  switch (event.type) {
    case "agent_init": return `${sid} model ${text(d.model) || "?"}`;
    case "agent_text": return `${sid} ${text(d.text)}`;
    case "tool_call": return `${sid} → ${text(d.tool) || "?"}: ${text(d.summary)}`;
    case "tool_result": return `${sid} ${d.is_error === true ? "✗" : "✓"} ${text(d.tool) || "?"}: ${text(d.summary)}`;
    case "agent_result": return `${sid} ${d.is_error === true ? "failed" : "done"}, cost ${money(d.cost_usd)}, `
      + `${tokens(d.input_tokens, d.output_tokens)} tokens`;
    case "story_stalled": return `${sid} silent for ${duration(d.silent_s, "")}`;
    case "agent_looping": return `${sid} ⚠ looping: ${looping(d)}`;
    case "subagent_completed": return `${sid} subagent ${d.state === "failed" ? "failed" : "done"}: ${text(d.summary)}`;
    default: return null;
  }
}

// The line above a finished run's transcript; `transcript` is {events, error} once read, `shown` how
// many of its events the list shows.
export function transcriptNote(transcript, shown) {
  const events = transcript?.events || [];
  if (transcript?.error) return `Transcript unavailable: ${transcript.error}`;
  return events.length > shown ? `Showing the last ${shown} of ${events.length} events; export for all.`
    : `${events.length} events.`;
}

// -- what the page says unasked --------------------------------------------------------------------
// The banner while the stream is down: {what, doing}. `outage` is what connection.js reports
// ({since, retryAt, pollOk, reason}, ms timestamps), `now` in ms.
export function outageText(outage, now) {
  const since = new Date(outage.since).toLocaleTimeString();
  const ago = duration((now - outage.since) / 1000);
  const what = outage.pollOk ? `The live stream is down since ${since} (${ago}).`
    : `The sidecar is unreachable since ${since} (${ago}).`;
  const retry = outage.retryAt ? Math.max(0, Math.ceil((outage.retryAt - now) / 1000)) : null;
  const doing = outage.pollOk ? `Updates arrive by polling every ${POLL_EVERY_S} s` : `Polling every ${POLL_EVERY_S} s`;
  return { what, doing: (outage.reason ? `The sidecar said: ${outage.reason}. ` : "")
    + (retry === null ? `${doing}.` : `${doing}; next stream attempt ${retry ? `in ${retry} s` : "now"}.`) };
}

// The desktop notification a watched run's event calls for: it finished (a session's end does not),
// a story stalled, or an agent goes in circles. {key (once per run and key), title, body}, or null.
export function watchAlert(snap, event, statusBefore) {
  const name = snap.task_name || snap.run;
  const d = event.data || {};
  if (FINISHED.includes(snap.status) && statusBefore !== snap.status && !snap.session) {
    return { key: `finished ${snap.finished_at}`, title: `${name}: ${snap.status}`, body: outcome(snap) };
  }
  if (event.type === "story_stalled") {
    return { key: `stalled ${event.id}`, title: `${name}: a story stalled`,
      body: `${String(d.story_id ?? "?")} has been silent for ${Math.round(Number(d.silent_s) || 0)} s` };
  }
  if (event.type === "agent_looping") {
    return { key: `looping ${event.id}`, title: `${name}: an agent is going in circles`,
      body: `${String(d.story_id ?? "agent")}: ${looping(d)}` };
  }
  return null;
}

// The notification when a Claude Code session starts waiting for its user: one per wait.
export function waitingAlert(snap) {
  const s = snap.session;
  return { key: `waiting ${s.since}`, title: `Claude needs you in ${s.project || snap.task_name || snap.run}`,
    body: String(s.waiting_for || "") };
}

// -- which runs, in which order ---------------------------------------------------------------------
// The run list: the summaries from /api/runs (history included) with the full snapshots over them
// (Maps run -> row), newest start first in a stable order, so rows do not jump under the pointer.
export function runRows(summaries, runs) {
  const rows = new Map(summaries);
  for (const [run, snap] of runs) rows.set(run, snap);
  const start = (r) => r.started_at ?? r.updated_at ?? 0;
  return [...rows.values()].sort((a, b) => start(b) - start(a) || (a.run < b.run ? -1 : 1));
}

// The run to show: the one already chosen (a ?run= link, a click), else the live run, else the newest
// (null while there is none). Once one is chosen the page never switches by itself.
export function pickOnLoad(rows, chosen) {
  if (chosen) return chosen;
  const live = rows.find((r) => r.status === "running" || r.status === "paused");
  return (live || rows[0])?.run ?? null;
}
