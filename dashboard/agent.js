// The agent panel: for the selected story, a timeline of what its agent did (one row per tool call
// with its name, summary, duration and ✓/✗, the agent's text between them; a subagent's calls nested
// under the Task call that started it, collapsed, with a count), the tool running now with a live
// timer (and the subagent running it), a stall warning, a looping warning (the same tool call again
// and again), and the cost and tokens of the story and of the run.
// The snapshot (state.js) holds the totals; the rows come from the run's agent events, read once
// from its transcript and then live. Event text only ever goes in with textContent.
import { $, fromTemplate, keyed, setHidden, setText } from "./dom.js";
import { parseId } from "./connection.js";
import { duration, isNum, looping, money, text, tokens } from "./view.js";

const AGENT_TYPES = new Set(["agent_init", "agent_text", "tool_call", "tool_result", "agent_result",
  "story_stalled", "story_started", "agent_looping", "subagent_completed"]);
const KEPT_PER_RUN = 5000;   // agent events remembered per run (the export has them all)
const TEXT_SHOWN = 600;      // characters of assistant text shown in a row

const idKey = (id) => parseId(id) ?? [0, 0];   // to order events by id
const byId = (a, b) => { const x = idKey(a.id); const y = idKey(b.id); return x[0] - y[0] || x[1] - y[1]; };

// The exported transcript, with the cost and tokens of the run and of each story on top.
export function withAgentSummary(transcript, snap) {
  if (!snap) return transcript;
  const stories = (snap.stories || []).filter((s) => s.agent).map((s) => ({ id: s.id, ...s.agent }));
  return { ...transcript, agent: { cost_usd: snap.cost_usd ?? null, input_tokens: snap.input_tokens ?? 0,
    output_tokens: snap.output_tokens ?? 0, run_agent: snap.agent ?? null, stories } };
}

// A subagent as a person knows it: its type and the description it was given.
export function subagentName(sub) {
  const kind = text(sub.type) || "subagent";
  return sub.description ? `${kind} “${text(sub.description)}”` : kind;
}

// Timeline rows of one story from its agent events (in id order): tool calls joined with their results;
// what a subagent did (events whose parent_id is a Task call's id) goes in that call's row's children.
// A hook session's subagent is named by its agent_id, which no Task call carries: its rows get a group
// of their own, opened where the subagent is first seen (SubagentStart, or its first event). Any other
// parent_id that names no Task call stays flat.
export function timeline(events, storyId) {
  const rows = [];
  const open = new Map();
  const subs = new Map();   // Task call id (or a hook session's agent_id) -> its row
  for (const e of events) {
    const d = e.data || {};
    if (text(d.story_id) !== storyId) continue;
    if (e.type === "subagent_completed" || e.type === "session_subagent") {
      subagentState(rows, subs, e, d);
      continue;
    }
    const pid = text(d.parent_id);
    const hookSub = text(d.agent_id) ? subagentRow : null;   // an unknown Task id stays flat, an agent_id does not
    const parent = pid ? subs.get(pid) || (hookSub && hookSub(rows, subs, e, pid, text(d.agent_type))) : null;
    addRow(parent ? parent.children : rows, open, subs, e, d);
  }
  return rows;
}

function subagentRow(rows, subs, e, id, type) {
  const row = { key: `sub-${id}`, kind: "tool", tool: "Agent", summary: type || "subagent", started: e.ts,
    ended: null, is_error: null, children: [], sub_state: "running" };
  rows.push(row);
  subs.set(id, row);
  return row;
}

function subagentState(rows, subs, e, d) {
  const id = text(e.type === "session_subagent" ? d.agent_id : d.id);
  const row = subs.get(id) || (e.type === "session_subagent" && id ? subagentRow(rows, subs, e, id, text(d.agent_type)) : null);
  if (!row) return;
  if (e.type === "session_subagent" && text(d.agent_type) && row.key === `sub-${id}`) row.summary = text(d.agent_type);
  if (d.state === "running") return;
  row.sub_state = d.state === "failed" ? "failed" : "done";
  if (row.key === `sub-${id}`) { row.ended = e.ts; row.is_error = d.state === "failed"; }
}

function addRow(rows, open, subs, e, d) {
  if (e.type === "tool_call") {
    const row = { key: e.id, kind: "tool", tool: text(d.tool) || "?", summary: text(d.summary),
      started: e.ts, ended: null, is_error: null, children: null };
    rows.push(row);
    if (text(d.id)) open.set(text(d.id), row);
    if ("subagent_type" in d && text(d.id)) {
      row.children = [];
      row.sub_state = "running";
      subs.set(text(d.id), row);
    }
  } else if (e.type === "tool_result") {
    const row = open.get(text(d.id));
    if (row) {
      row.ended = e.ts;
      row.is_error = d.is_error === true;
      open.delete(text(d.id));
    }
  } else if (e.type === "agent_text") {
    const last = rows[rows.length - 1];
    if (last && last.kind === "text") last.summary = `${last.summary}\n${text(d.text)}`.slice(0, TEXT_SHOWN);
    else rows.push({ key: e.id, kind: "text", summary: text(d.text).slice(0, TEXT_SHOWN) });
  } else if (e.type === "story_started") {
    rows.push({ key: e.id, kind: "attempt", summary: `Attempt ${isNum(d.attempt) ? d.attempt : ""}` });
  } else if (e.type === "agent_result") {
    rows.push({ key: e.id, kind: "result", is_error: d.is_error === true,
      summary: `${d.is_error === true ? "Agent failed" : "Agent done"} · ${money(d.cost_usd)} · `
        + `${tokens(d.input_tokens, d.output_tokens)} tokens` + (isNum(d.num_turns) ? ` · ${d.num_turns} turns` : "") });
  } else if (e.type === "story_stalled") {
    rows.push({ key: e.id, kind: "stall", summary: `Silent for ${duration(d.silent_s, "")}` });
  } else if (e.type === "agent_looping") {
    rows.push({ key: e.id, kind: "looping", summary: `Looping: ${looping(d)}` });
  }
}

// "3 tool calls · running": the collapsed line of a subagent's rows.
function subagentCount(r) {
  const calls = r.children.filter((c) => c.kind === "tool").length;
  return `${calls} tool call${calls === 1 ? "" : "s"} · ${r.sub_state}`;
}

export class AgentPanel {
  constructor({ request, onChange = () => {} }) {
    this.request = request;
    this.onChange = onChange;   // asks the page to redraw (a story picked, earlier events loaded)
    this.events = new Map();   // run -> Map(id -> event)
    this.loaded = new Map();   // run -> "loading" | "done" | event_count when loaded
    this.chosen = null;        // the story picked in the select; null follows the current story
    this.draw = this.draw.bind(this);
  }

  onEvent(event) {
    if (!AGENT_TYPES.has(event.type)) return;
    let byRun = this.events.get(event.run);
    if (!byRun) this.events.set(event.run, (byRun = new Map()));
    byRun.set(event.id, event);
    if (byRun.size > KEPT_PER_RUN) byRun.delete(byRun.keys().next().value);
  }

  // The run's earlier agent events, once: a late joiner and a finished run get the whole timeline.
  async load(run) {
    if (this.loaded.has(run)) return;
    this.loaded.set(run, "loading");
    try {
      const { events } = await this.request(`/api/runs/${encodeURIComponent(run)}/transcript`);
      for (const e of events.slice(-KEPT_PER_RUN)) this.onEvent({ ...e, run });
      this.loaded.set(run, "done");
      this.onChange();
    } catch {
      this.loaded.set(run, "failed");   // live events still fill the timeline
    }
  }

  storyFor(snap) {
    const withAgent = (snap.stories || []).filter((s) => s.agent);
    if (this.chosen && (snap.stories || []).some((s) => s.id === this.chosen)) return this.chosen;
    const current = (snap.stories || []).find((s) => s.id === snap.current_story && s.agent);
    return current ? current.id : withAgent.length ? withAgent[withAgent.length - 1].id : null;
  }

  draw({ snap }) {
    const box = $("agent");
    const stories = snap ? (snap.stories || []).filter((s) => s.agent) : [];
    const shown = Boolean(snap && (stories.length || snap.agent || isNum(snap.cost_usd)));
    setHidden(box, !shown);
    if (!shown) return;
    this.load(snap.run);
    const sid = this.storyFor(snap);
    const story = (snap.stories || []).find((s) => s.id === sid) || null;
    const agent = story ? story.agent : snap.agent;
    this.drawPicker(stories, sid);
    this.drawNow(story, agent);
    this.drawCost(snap, agent);
    const events = [...(this.events.get(snap.run) || new Map()).values()].sort(byId);
    this.drawTimeline(sid === null ? [] : timeline(events, sid), story);
  }

  drawPicker(stories, sid) {
    const select = $("agent-story");
    keyed(select, stories, (s) => s.id, (s) => {
      const option = document.createElement("option");
      option.value = s.id;
      option.textContent = s.id;
      return option;
    }, (option, s) => setText(option, `${s.id}${s.title ? ` — ${s.title}` : ""}`));
    if (sid !== null && select.value !== sid) select.value = sid;
    if (!select.dataset.wired) {
      select.dataset.wired = "1";
      select.addEventListener("change", () => {
        this.chosen = select.value || null;
        this.onChange();
      });
    }
  }

  drawNow(story, agent) {
    const now = Date.now() / 1000;
    const tool = agent ? agent.last_tool : null;
    const running = !story || story.status === "running";
    const sub = tool ? (agent.subagents || []).find((x) => x.id === tool.parent_id) : null;
    let line = "";
    if (tool && tool.finished_at === null && running && isNum(tool.started_at)) {
      line = `Running ${sub ? `${subagentName(sub)} › ` : ""}${tool.tool} ${tool.summary} · ${duration(now - tool.started_at)}`;
    } else if (tool) {
      line = `Last tool: ${tool.is_error === true ? "✗" : tool.is_error === false ? "✓" : ""} ${tool.tool} ${tool.summary}`;
    } else if (agent) {
      line = `${agent.model || "Agent"}: no tool yet`;
    }
    setText($("agent-now"), line.replace(/\s+/g, " ").trim());
    const stall = story && story.stalled && story.status === "running" ? story.stalled : null;
    setHidden($("agent-stall"), !stall);
    if (stall) {
      const quiet = (isNum(stall.silent_s) ? stall.silent_s : 0) + (isNum(stall.since) ? now - stall.since : 0);
      setText($("agent-stall"), `⚠ Stalled: ${story.id} has printed nothing for ${duration(quiet)}`);
    }
    const circles = agent && agent.looping && running ? agent.looping : null;
    setHidden($("agent-looping"), !circles);
    if (circles) setText($("agent-looping"), `⚠ Looping: ${looping(circles)}`);
  }

  drawCost(snap, agent) {
    setText($("agent-story-cost"), agent ? money(agent.cost_usd) : "—");
    setText($("agent-story-tokens"), agent ? tokens(agent.input_tokens, agent.output_tokens) : "—");
    setText($("agent-run-cost"), money(snap.cost_usd));
    setText($("agent-run-tokens"), tokens(snap.input_tokens, snap.output_tokens));
    setText($("agent-model"), agent && agent.model ? agent.model : "—");
    setText($("agent-calls"), agent ? `${agent.tool_calls} (${agent.tool_errors} failed)` : "—");
  }

  drawTimeline(rows, story) {
    this.drawRows($("agent-timeline"), rows, story && story.status === "running", Date.now() / 1000);
  }

  // One list of rows; a subagent's rows go in its Task row's <details>, closed until opened (kept open
  // across redraws: rows are updated in place).
  drawRows(list, rows, live, now) {
    keyed(list, rows, (r) => r.key, () => fromTemplate("agent-row"), (li, r) => {
      li.dataset.kind = r.kind;
      const done = r.kind === "tool" && r.ended !== null;
      li.dataset.status = r.kind !== "tool" ? r.kind : !done ? (live ? "running" : "unfinished")
        : r.is_error ? "failed" : "passed";
      const mark = r.kind === "tool" ? (!done ? (live ? "⏳" : "·") : r.is_error ? "✗" : "✓")
        : r.kind === "stall" || r.kind === "looping" ? "⚠" : r.kind === "result" ? (r.is_error ? "✗" : "=") : "";
      setText(li.querySelector(".mark"), mark);
      setText(li.querySelector(".tool"), r.kind === "tool" ? r.tool : "");
      setText(li.querySelector(".summary"), r.summary);
      const seconds = r.kind !== "tool" ? null : done ? r.ended - r.started : live ? now - r.started : null;
      setText(li.querySelector(".dur"), isNum(seconds) ? duration(seconds) : "");
      const sub = li.querySelector(".sub");
      setHidden(sub, !r.children);
      if (!r.children) return;
      sub.dataset.state = r.sub_state;
      setText(sub.querySelector(".sub-count"), subagentCount(r));
      this.drawRows(sub.querySelector(".sub-rows"), r.children, live && r.sub_state === "running", now);
    });
  }
}
