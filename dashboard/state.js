// The run-state reducer: events -> snapshot. A line-for-line mirror of
// lib/loopstream/core/state/; both are pinned by the golden fixtures in
// tests/fixtures/ (tests/js/reducer.test.mjs runs them here). Pure: no clock, no DOM.
// It never throws on an event the server accepted. One text rule with Python: text is cut by
// code points (never UTF-16 units), and a value that is not a string is shown as textJson.

export const OUTPUT_TAIL = 100_000;
export const LOG_TAIL = 100;
export const LOG_TEXT = 500;
export const LAST_OUTPUT = 240;
export const AGENT_TEXT = 300;
export const AGENT_MAX = 1e12;
export const SUBAGENTS = 100;
export const MAX_NUMBER = 1e15;
export const FINISHED = ["passed", "failed", "stopped"];
export const LIVE = ["running", "paused"];
const STORY_DONE = ["passed", "failed", "skipped", "cancelled"];

export function newRun(run) {
  return {
    run, task_id: null, task_name: null, status: "running",
    started_at: null, updated_at: null, finished_at: null,
    elapsed_s: 0, eta_s: null, estimated_duration: null, story_count: null,
    stories: [], current_story: null,
    counts: { total: 0, completed: 0, running: 0, queued: 0, failed: 0, skipped: 0, cancelled: 0 },
    success_rate: null, percent: 0,
    progress: null, output: "", output_truncated: false,
    log: [], last_error: null, error_count: 0,
    control: { stop_requested: null, pause_requested: false },
    summary: null, event_count: 0, last_event_id: null,
    stopped_at: null,
    agent: null, cost_usd: null, input_tokens: 0, output_tokens: 0,
    heartbeat_s: null,
    command: null, exit_code: null, stop_reason: null,
  };
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v) && Math.abs(v) <= MAX_NUMBER;
const num = (v) => (isNum(v) ? v : null);
const truthy = (v) => !(v === null || v === undefined || v === false || v === 0 || v === "" ||
  (Array.isArray(v) && v.length === 0) || (isObject(v) && Object.keys(v).length === 0));
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const get = (obj, key) => (obj[key] === undefined ? null : obj[key]);
const finite = (v) => (v === null || Number.isFinite(v) ? v : null);

// Keys sort by UTF-16 units, JS's own string order; state.text_json sorts by the same key.
const byUnits = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

// Compact JSON with keys sorted by UTF-16 units: what state.text_json writes for the same value.
export function textJson(value) {
  if (Array.isArray(value)) return `[${value.map(textJson).join(",")}]`;
  if (isObject(value)) {
    return `{${Object.keys(value).sort(byUnits).map((k) => `${JSON.stringify(k)}:${textJson(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

// Text of any event value: a string as it is, null as nothing, anything else as textJson.
export const asText = (v) => (typeof v === "string" ? v : v === null || v === undefined ? "" : textJson(v));
const optText = (v) => (v === null || v === undefined ? null : asText(v));
const str = asText;

// The first n code points of text (a surrogate pair is one), as Python's text[:n].
export function cutHead(text, n) {
  if (text.length <= n) return text;
  let i = 0;
  for (let count = 0; count < n && i < text.length; count++) i += text.codePointAt(i) > 0xffff ? 2 : 1;
  return text.slice(0, i);
}

const SURROGATE = /[\uD800-\uDFFF]/;   // fast paths: text without pairs counts the same in units and code points

// The last n code points of text, as Python's text[-n:].
export function cutTail(text, n) {
  if (text.length <= n) return text;
  const tail = text.slice(-n);
  if (!SURROGATE.test(tail)) return tail;   // n single units at the end are the last n code points
  let i = text.length;
  for (let count = 0; count < n && i > 0; count++) {
    const low = text.charCodeAt(i - 1);
    i -= (low >= 0xdc00 && low <= 0xdfff && i >= 2 && (text.charCodeAt(i - 2) & 0xfc00) === 0xd800) ? 2 : 1;
  }
  return text.slice(i);
}

// Python's len(text): code points.
export function codePoints(text) {
  if (!SURROGATE.test(text)) return text.length;
  let n = text.length;
  for (let i = 0; i < text.length - 1; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) { n--; i++; }
  }
  return n;
}

function story(snap, storyId) {
  const sid = storyId !== null && storyId !== undefined ? str(storyId) : "?";
  let s = snap.stories.find((x) => x.id === sid);
  if (!s) {
    s = { id: sid, title: "", status: "queued", priority: null, attempt: 0, attempts: 0,
      acceptance_criteria: [], duration_ms: null, started_at: null, last_output: "",
      agent: null, stalled: null };
    snap.stories.push(s);
  }
  return s;
}

const criterionText = (item) => (isObject(item) ? str(item.text ?? "") : str(item));

function criterion(s, index, text) {
  if (!isNum(index) || !Number.isInteger(index) || index < 0 || index > 1000) return null;
  const acs = s.acceptance_criteria;
  while (acs.length <= index) acs.push({ text: "", status: "pending", duration_ms: null, error: null });
  const ac = acs[index];
  if (text !== null && text !== undefined && !ac.text) ac.text = str(text);
  return ac;
}

function markNextRunning(s) {
  for (const ac of s.acceptance_criteria) if (ac.status === "running") ac.status = "pending";
  if (s.status !== "running") return;
  const next = s.acceptance_criteria.find((ac) => ac.status === "pending");
  if (next) next.status = "running";
}

function log(snap, type, ts, text) {
  snap.log.push({ type, ts, text: cutHead(text, LOG_TEXT) });
  if (snap.log.length > LOG_TAIL) snap.log.shift();
}

export function apply(snap, event) {
  const type = event.type;
  const data = isObject(event.data) ? event.data : {};
  const ts = get(event, "ts");
  if (snap === null || snap === undefined) {
    snap = newRun(event.run ?? "default");
  } else if (type === "task_started" && FINISHED.includes(snap.status)) {
    snap = newRun(snap.run);
  }
  if (snap.status === "interrupted" && type !== "task_completed" && type !== "task_stopped" &&
      type !== "task_interrupted") {
    snap.status = "running";
    snap.finished_at = null;
  }
  snap.event_count += 1;
  snap.last_event_id = get(event, "id");
  if (snap.started_at === null) snap.started_at = ts;
  snap.updated_at = ts;
  if (type !== "story_stalled") clearStall(snap, get(data, "story_id"));
  const handler = Object.hasOwn(HANDLERS, type) ? HANDLERS[type] : null;   // not "constructor"
  if (handler) {
    handler(snap, data, ts);
  } else {
    const text = typeof data.message === "string" ? data.message : textJson(data);
    log(snap, type, ts, text);
  }
  if ((type === "tool_call" || type === "tool_result") && (snap.session ?? null) !== null) {
    sessionActivity(snap, type, data, ts);
  }
  derive(snap);
  return snap;
}

// Any event of a stalled story shows it is alive again.
function clearStall(snap, storyId) {
  if (storyId === null) return;
  for (const s of snap.stories) if (s.id === str(storyId)) s.stalled = null;
}

function taskStarted(snap, data, ts) {
  snap.status = "running";
  snap.started_at = ts;
  snap.finished_at = null;
  snap.task_id = get(data, "task_id");
  snap.task_name = optText(get(data, "task_name"));
  snap.story_count = num(data.story_count);
  snap.estimated_duration = num(data.estimated_duration);
  snap.heartbeat_s = num(data.heartbeat_s);
  snap.command = optText(get(data, "command"));
  snap.exit_code = null;
  snap.stop_reason = null;
  for (const item of Array.isArray(data.stories) ? data.stories : []) {
    if (isObject(item) && item.id !== null && item.id !== undefined) {
      const s = story(snap, item.id);
      s.title = str(truthy(item.title) ? item.title : s.title);
      s.priority = "priority" in item ? item.priority : s.priority;
      if (STORY_DONE.includes(item.status)) s.status = item.status;
    }
  }
}

function storyStarted(snap, data, ts) {
  const s = story(snap, get(data, "story_id"));
  s.status = "running";
  s.started_at = ts;
  s.duration_ms = null;
  if (get(data, "title") !== null) s.title = str(data.title);
  if (get(data, "priority") !== null) s.priority = data.priority;
  const attempt = num(data.attempt);
  s.attempt = attempt !== null ? attempt : s.attempt + 1;
  if (Array.isArray(data.acceptance_criteria)) {
    s.acceptance_criteria = data.acceptance_criteria.map((c) => (
      { text: criterionText(c), status: "pending", duration_ms: null, error: null }));
  } else {
    for (const ac of s.acceptance_criteria) Object.assign(ac, { status: "pending", duration_ms: null, error: null });
  }
  snap.current_story = s.id;
  if (s.agent !== null) {
    s.agent.last_tool = null;
    s.agent.looping = null;
  }
  markNextRunning(s);
}

const acEvent = (passed) => (snap, data) => {
  const s = story(snap, get(data, "story_id"));
  const ac = criterion(s, data.ac_index, get(data, "ac_text"));
  if (ac === null) return;
  ac.status = passed ? "passed" : "failed";
  if (passed) {
    ac.duration_ms = num(data.duration_ms);
    ac.error = null;
  } else {
    ac.error = str(truthy(data.error) ? data.error : "failed");
  }
  markNextRunning(s);
};

function storyCompleted(snap, data, ts) {
  const s = story(snap, get(data, "story_id"));
  s.status = STORY_DONE.includes(data.status) ? data.status : "passed";
  s.duration_ms = num(data.duration_ms);
  const attempts = num(data.attempts);
  s.attempts = attempts !== null ? attempts : Math.max(s.attempt, 1);
  const tool = s.agent !== null ? s.agent.last_tool : null;
  if (tool !== null && tool.finished_at === null) tool.finished_at = ts;
  for (const sub of s.agent !== null ? subagents(s.agent) : []) {
    if (sub.state === "running") {   // its end never reported: it ended with the story
      sub.state = s.status === "passed" ? "done" : "failed";
      sub.finished_at = ts;
    }
  }
  for (const ac of s.acceptance_criteria) {
    if (ac.status === "running") ac.status = "pending";
    if (s.status === "passed" && ac.status === "pending") ac.status = "passed";
  }
  if (snap.current_story === s.id) {
    const running = snap.stories.filter((x) => x.status === "running").map((x) => x.id);
    snap.current_story = running.length ? running[running.length - 1] : null;
  }
}

const finish = (status) => (snap, data, ts) => {
  snap.exit_code = num(data.exit_code);
  if (status === "completed") {
    const failed = snap.stories.some((x) => x.status === "failed");
    snap.status = FINISHED.includes(data.status) ? data.status : (failed ? "failed" : "passed");
    if (isObject(data.summary)) {
      snap.summary = data.summary;
    } else {
      const picked = {};
      for (const k of ["passed", "failed", "skipped", "duration_ms"]) if (k in data) picked[k] = data[k];
      snap.summary = Object.keys(picked).length ? picked : null;
    }
  } else {
    snap.status = "stopped";
    snap.control.stop_requested = null;
    snap.stopped_at = stoppedAt(snap);
    for (const x of snap.stories) {
      if (x.status === "running" || x.status === "queued") {
        x.status = "cancelled";
        for (const ac of x.acceptance_criteria) if (ac.status === "running") ac.status = "pending";
      }
    }
    snap.stop_reason = truthy(data.reason) ? str(data.reason) : null;
    if (truthy(data.reason)) log(snap, "task_stopped", ts, `stopped: ${str(data.reason)}`);
  }
  snap.finished_at = ts;
  snap.current_story = null;
};

// The runner is gone (the sidecar's reaper, or a restart): finished, but it may come back.
function interrupted(snap, data, ts) {
  snap.status = "interrupted";
  snap.finished_at = ts;
  log(snap, "task_interrupted", ts, "interrupted" + (truthy(data.reason) ? `: ${asText(data.reason)}` : ""));
}

// The story a stop interrupted: the last one running, else the last one cancelled after it started.
function stoppedAt(snap) {
  const started = snap.stories.filter((x) => x.status === "running" ||
    (x.status === "cancelled" && x.started_at !== null)).map((x) => x.id);
  return started.length ? started[started.length - 1] : null;
}

function output(snap, data) {
  const text = data.text;
  if (typeof text !== "string" || !text) return;
  let out = snap.output + text;
  if (out.length > OUTPUT_TAIL && codePoints(out) > OUTPUT_TAIL) {
    out = cutTail(out, OUTPUT_TAIL);
    snap.output_truncated = true;
  }
  snap.output = out;
  if (get(data, "story_id") !== null) {
    const s = story(snap, data.story_id);
    s.last_output = cutTail(s.last_output + text, LAST_OUTPUT);
  }
}

function progress(snap, data) {
  const p = snap.progress || { percent: null, current: null, total: null, message: null };
  for (const k of ["percent", "current", "total"]) if (num(data[k]) !== null) p[k] = data[k];
  if (typeof data.message === "string") p.message = data.message;
  snap.progress = p;
}

function error(snap, data, ts) {
  snap.last_error = { story_id: get(data, "story_id"), error_type: optText(get(data, "error_type")),
    error_message: optText(get(data, "error_message")), retryable: get(data, "retryable") };
  snap.error_count += 1;
  const type = truthy(data.error_type) ? str(data.error_type) : "error";
  const message = truthy(data.error_message) ? str(data.error_message) : "";
  log(snap, "error_occurred", ts, `${type}: ${message}`);
}

const control = (kind) => (snap, data, ts) => {
  const c = snap.control;
  if (kind === "stop_requested") {
    c.stop_requested = str(truthy(data.reason) ? data.reason : "requested");
  } else if (kind === "pause_requested") {
    c.pause_requested = true;
  } else if (kind === "resume_requested") {
    c.pause_requested = false;
  } else if (kind === "task_paused") {
    c.pause_requested = false;
    if (snap.status === "running") snap.status = "paused";
  } else if (kind === "task_resumed") {
    c.pause_requested = false;
    if (snap.status === "paused") snap.status = "running";
  }
  log(snap, kind, ts, kind.replaceAll("_", " ") + (truthy(data.reason) ? `: ${str(data.reason)}` : ""));
};

export function newAgent() {
  return { model: null, session_id: null, tool_calls: 0, tool_errors: 0, last_tool: null,
    cost_usd: null, input_tokens: 0, output_tokens: 0, num_turns: null, is_error: null,
    subagents: [], looping: null };
}

const short = (v) => (typeof v === "string" ? cutHead(v, AGENT_TEXT) : null);
const amount = (v) => { const n = num(v); return n !== null && n >= 0 && n <= AGENT_MAX ? n : null; };

// The agent record an event updates: its story's, or the run's when it names no story.
function agentOf(snap, data) {
  const sid = get(data, "story_id");
  const holder = sid === null ? snap : story(snap, sid);
  if (holder.agent === null) holder.agent = newAgent();
  return holder.agent;
}

function agentInit(snap, data) {
  const a = agentOf(snap, data);
  a.model = short(data.model);
  a.session_id = short(data.session_id);
}

function agentText(snap, data) {
  agentOf(snap, data);
}

function toolCall(snap, data, ts) {
  const a = agentOf(snap, data);
  a.tool_calls += 1;
  const parent = short(data.parent_id);
  const tool = a.last_tool = { tool: short(data.tool) || "?", id: short(data.id), summary: short(data.summary) || "",
    started_at: ts, finished_at: null, is_error: null, parent_id: parent };
  stillLooping(a, data, parent);
  if ("subagent_type" in data && tool.id !== null) {   // a Task call: the subagent it starts
    const sub = { id: tool.id, type: short(data.subagent_type), description: short(data.description),
      state: "running", tool_calls: 0, last_tool: null, started_at: ts, finished_at: null };
    a.subagents = [...subagents(a).filter((x) => x.id !== sub.id), sub].slice(-SUBAGENTS);
  }
  for (const sub of subagents(a)) {
    if (sub.id === parent) {
      sub.tool_calls += 1;
      sub.last_tool = { tool: tool.tool, id: tool.id, summary: tool.summary };
    }
  }
}

// An agent record's subagents (none in a record stored before they were kept).
const subagents = (a) => a.subagents || [];

// A call of the agent that went in circles: the streak goes on (repeat grows) or ends.
function stillLooping(a, data, parent) {
  const looping = a.looping ?? null;
  if (looping === null || looping.parent_id !== parent) return;
  const repeat = amount(data.repeat);
  if (repeat !== null && repeat > looping.repeats) looping.repeats = repeat;
  else a.looping = null;
}

function agentLooping(snap, data, ts) {
  const a = agentOf(snap, data);
  const repeats = amount(data.repeats);
  const looping = a.looping = { tool: short(data.tool) || "?", summary: short(data.summary) || "",
    repeats: repeats !== null ? repeats : 0, parent_id: short(data.parent_id), since: ts };
  const who = get(data, "story_id") !== null ? `${str(data.story_id)} ` : "";
  log(snap, "agent_looping", ts, `${who}looping: ${looping.tool} ${looping.summary} ×${looping.repeats}`);
}

function subagentCompleted(snap, data, ts) {
  const a = agentOf(snap, data);
  const sid = short(data.id);
  for (const sub of subagents(a)) {
    if (sub.id === sid) {
      sub.state = data.state === "failed" ? "failed" : "done";
      sub.finished_at = ts;
    }
  }
  if ((a.looping ?? null) !== null && a.looping.parent_id === sid) a.looping = null;   // the subagent that went in circles has ended
}

function toolResult(snap, data, ts) {
  const a = agentOf(snap, data);
  const failed = data.is_error === true;
  if (failed) a.tool_errors += 1;
  const tool = a.last_tool;
  if (tool !== null && tool.finished_at === null && tool.id === short(data.id)) {
    tool.finished_at = ts;
    tool.is_error = failed;
  }
}

// An agent's reported cost and tokens, added to its record and to the run's.
function addSpent(snap, a, data) {
  const cost = amount(data.cost_usd);
  if (cost !== null) {
    a.cost_usd = (a.cost_usd ?? 0) + cost;
    snap.cost_usd = (snap.cost_usd ?? 0) + cost;
  }
  for (const key of ["input_tokens", "output_tokens"]) {
    const n = amount(data[key]);
    if (n !== null) {
      a[key] += n;
      snap[key] += n;
    }
  }
}

// Cost and tokens add up over a story's attempts and over the run's stories.
function agentResult(snap, data) {
  const a = agentOf(snap, data);
  addSpent(snap, a, data);
  a.num_turns = amount(data.num_turns);
  a.is_error = data.is_error === true;
}

function storyStalled(snap, data, ts) {
  const s = story(snap, get(data, "story_id"));
  const silent = amount(data.silent_s);
  s.stalled = { silent_s: silent, since: ts };
  log(snap, "story_stalled", ts, silent !== null ? `${s.id} stalled: nothing from it for ${Math.trunc(silent)} s`
    : `${s.id} stalled`);
}

// -- sessions: a Claude Code session reported by its hooks (formats/hook_session.py) is a run ---------------
const SESSION_STATES = ["working", "waiting_for_input", "idle"];

// The run's session record (created on first use).
function sessionOf(snap) {
  if ((snap.session ?? null) === null) {
    snap.session = { state: "idle", since: null, waiting_for: null, cwd: null, project: null, model: null,
      source: null, reason: null, subagents: [] };
  }
  return snap.session;
}

// A session that reports is running, even after it ended (claude --resume).
function sessionLive(snap) {
  if (!LIVE.includes(snap.status)) {
    snap.status = "running";
    snap.finished_at = null;
  }
}

function setSessionState(s, state, ts, waitingFor = null) {
  if (s.state !== state) s.since = ts;
  s.state = state;
  s.waiting_for = waitingFor;
}

function sessionStarted(snap, data, ts) {
  const s = sessionOf(snap);
  sessionLive(snap);
  for (const key of ["cwd", "project", "model", "source"]) {
    const value = key !== "cwd" ? short(data[key]) : optText(get(data, "cwd"));
    if (value !== null) s[key] = value;
  }
  s.reason = null;
  setSessionState(s, "idle", ts);
  if (snap.task_name === null && s.project !== null) snap.task_name = s.project;
  log(snap, "session_started", ts, `session started (${s.source || "?"}) in ${s.cwd || "?"}`);
}

function sessionState(snap, data, ts) {
  const state = data.state;
  if (!SESSION_STATES.includes(state)) return;
  const s = sessionOf(snap);
  sessionLive(snap);
  const waiting = state === "waiting_for_input" ? (short(data.waiting_for) || "") : null;
  setSessionState(s, state, ts, waiting);
}

function sessionSubagent(snap, data, ts) {
  const agent = short(data.agent_id);
  if (agent === null) return;
  const s = sessionOf(snap);
  const done = data.state === "done";
  let sub = s.subagents.find((x) => x.agent_id === agent);
  if (sub === undefined) {
    sub = { agent_id: agent, agent_type: short(data.agent_type), state: "running",
      tool_calls: 0, last_tool: null, cost_usd: null, started_at: ts, finished_at: null };
    s.subagents = [...s.subagents, sub].slice(-SUBAGENTS);
  }
  sub.state = done ? "done" : "running";
  sub.finished_at = done ? ts : null;
}

function sessionEnded(snap, data, ts) {
  const s = sessionOf(snap);
  setSessionState(s, "ended", ts);
  s.reason = short(data.reason);
  log(snap, "session_ended", ts, `session ended (${s.reason || "?"})`);
  for (const sub of s.subagents) {
    if (sub.state === "running") {
      sub.state = "done";
      sub.finished_at = ts;
    }
  }
  if (LIVE.includes(snap.status)) {
    snap.status = "passed";
    snap.finished_at = ts;
    snap.current_story = null;
  }
}

// A tool call or result in a session: it is working (no longer waiting), and a subagent's
// call counts for that subagent.
function sessionActivity(snap, type, data, ts) {
  const s = sessionOf(snap);
  if (s.state !== "ended") setSessionState(s, "working", ts);
  const agent = short(data.agent_id);
  if (type !== "tool_call" || agent === null) return;
  for (const sub of s.subagents) {
    if (sub.agent_id === agent) {
      sub.tool_calls += 1;
      sub.last_tool = { tool: short(data.tool) || "?", id: short(data.id), summary: short(data.summary) || "" };
    }
  }
}

// Cost and tokens of API requests as Claude Code's telemetry reports them (otlp_in.py), added up
// as agent_result's are; the model when none was known; in a session, a subagent's share on it too.
function agentUsage(snap, data) {
  const a = agentOf(snap, data);
  const model = short(data.model);
  if (a.model === null) a.model = model;
  addSpent(snap, a, data);
  if ((snap.session ?? null) === null) return;
  const s = sessionOf(snap);
  if (s.model === null) s.model = model;
  const agent = short(data.agent_id);
  const cost = amount(data.cost_usd);
  for (const sub of s.subagents) {
    if (sub.agent_id === agent && cost !== null) sub.cost_usd = (sub.cost_usd ?? 0) + cost;
  }
}

const HANDLERS = {
  task_started: taskStarted,
  story_started: storyStarted,
  ac_completed: acEvent(true),
  ac_failed: acEvent(false),
  story_completed: storyCompleted,
  task_completed: finish("completed"),
  task_stopped: finish("stopped"),
  task_interrupted: interrupted,
  task_alive: () => {},   // a liveness ping: apply() noted the time, nothing else changes
  output,
  progress,
  error_occurred: error,
  agent_init: agentInit,
  agent_text: agentText,
  tool_call: toolCall,
  tool_result: toolResult,
  agent_result: agentResult,
  agent_looping: agentLooping,
  subagent_completed: subagentCompleted,
  story_stalled: storyStalled,
  session_started: sessionStarted,
  session_state: sessionState,
  session_subagent: sessionSubagent,
  session_ended: sessionEnded,
  agent_usage: agentUsage,
};
for (const k of ["stop_requested", "pause_requested", "resume_requested", "task_paused", "task_resumed"]) {
  HANDLERS[k] = control(k);
}

function derive(snap) {
  const c = snap.counts = counts(snap);
  const decided = c.completed + c.failed;
  snap.success_rate = decided ? c.completed / decided : null;
  const started = snap.started_at;
  const end = snap.finished_at || snap.updated_at;
  const elapsed = num(started) !== null && num(end) !== null ? end - started : 0;
  snap.elapsed_s = Math.max(0, elapsed);
  snap.percent = percentOf(snap, c);
  snap.eta_s = LIVE.includes(snap.status) ? eta(snap, c) : null;
}

function counts(snap) {
  const stories = snap.stories;
  const c = { total: 0, completed: 0, running: 0, queued: 0, failed: 0, skipped: 0, cancelled: 0 };
  for (const s of stories) {
    const key = s.status === "passed" ? "completed" : s.status;
    if (Object.hasOwn(c, key)) c[key] += 1;
  }
  c.total = Math.max(stories.length, Math.trunc(snap.story_count || 0));
  c.queued = c.total - c.completed - c.running - c.failed - c.skipped - c.cancelled;
  if (snap.status === "stopped") {   // stories a stopped run never reached (known only by count) were cancelled too
    c.cancelled += c.queued;
    c.queued = 0;
  }
  return c;
}

function percentOf(snap, c) {
  const prog = snap.progress || {};
  let percent;
  if (c.total) {   // finished stories: a cancelled one was never done, so a stopped run shows where it stopped
    percent = (c.completed + c.failed + c.skipped) * 100 / c.total;
  } else if (num(prog.percent) !== null) {
    percent = prog.percent;
  } else if (num(prog.current) !== null && truthy(num(prog.total))) {
    percent = prog.current * 100 / prog.total;
  } else {
    percent = 0;
  }
  percent = Math.min(100, Math.max(0, percent));
  if ((snap.status === "passed" || snap.status === "failed") && percent < 100 && !c.total) percent = 100;
  return percent;
}

function eta(snap, c) {
  const durations = snap.stories
    .filter((s) => (s.status === "passed" || s.status === "failed") && num(s.duration_ms) !== null)
    .map((s) => s.duration_ms);
  const remaining = c.queued + c.running;
  if (durations.length && remaining) return durations.reduce((a, b) => a + b, 0) / durations.length / 1000 * remaining;
  if (num(snap.estimated_duration) !== null) return Math.max(0, snap.estimated_duration - snap.elapsed_s);
  if (snap.percent > 0 && snap.percent < 100) return finite(snap.elapsed_s * (100 - snap.percent) / snap.percent);
  return null;
}

export function reduce(events, snap = null) {
  for (const e of events) snap = apply(snap, e);
  return snap;
}

export const isLive = (snap) => LIVE.includes(snap.status);
