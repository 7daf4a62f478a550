// The dashboard's wiring: one stream shared by every tab (shared.js), the shared reducer (state.js),
// and a page that updates in place — rows are keyed and updated, never rebuilt, so focus, hover, a
// click in progress and a text selection survive live updates; output is appended. What the page says
// is worked out in view.js (pure, tested by node); this module holds the page's state, talks to the
// sidecar and puts things on the page. Event text is only ever set with textContent. Each panel is one
// render function in PANELS: a new panel is one more entry.
import { apply, isLive, FINISHED } from "./state.js";
import { SharedStream } from "./shared.js";
import { Alerts } from "./alerts.js";
import { $, fromTemplate, keyed, setAttr, setHidden, setText } from "./dom.js";
import { OutputView } from "./output.js";
import { AgentPanel, withAgentSummary } from "./agent.js";
import { sessionLine, sessionStatus, startsWaiting, waitingCount } from "./sessions.js";
import { cardText, clockText, describe, loopingWarning, outcome, outageText, pickOnLoad, reportsProgress, runRows,
  stoppedLine, storyStatusText, transcriptNote, waitingAlert, watchAlert } from "./view.js";

const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const server = new URL(query.get("server") || "/", location.href).toString().replace(/\/?$/, "/");
const token = fragment.get("token");
// The token never goes into a URL (proxies and their logs keep URLs): on the sidecar's own origin the
// page trades it once for an HttpOnly session cookie (POST /api/session) that the stream, the polls
// and the controls carry; a sidecar on another origin gets it as a header on polls (no stream then:
// an EventSource cannot send headers).
const sameOrigin = new URL(server).origin === location.origin;
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};

const MARK = { passed: "✅", running: "⏳", pending: "○", failed: "❌" };
const STORY_MARK = { passed: "✅", running: "⏳", queued: "○", failed: "❌", skipped: "⏭", cancelled: "⛔" };
const STATUS_LABEL = { live: "Live", polling: "Polling", reconnecting: "Reconnecting", connecting: "Connecting…" };
const TRANSCRIPT_SHOWN = 2000;
const NOTICES_KEPT = 3;

const runs = new Map();        // run -> full snapshot (from hello/reset/poll, folded live)
const summaries = new Map();   // run -> summary from /api/runs (includes history)
const transcripts = new Map(); // run -> {count, events}
const outputChunks = [];       // output text of the selected run not yet appended to the page
const notices = [];            // [{run, text}] new runs that started while the person watched another
const busy = new Set();        // control actions in flight
let selected = query.get("run");
let settled = Boolean(selected);   // the first pick is made; after it the page never switches by itself
let follow = true;
let pending = false;
let outage = null;
let loaded = false;                // the first snapshots arrived: later new runs get a notice
const alerts = new Alerts({ server, waiting: () => waitingCount(runs.values()) });
const agentPanel = new AgentPanel({ request: (path) => request(path), onChange: () => render() });

// -- talking to the sidecar ------------------------------------------------------------
function api(path) {
  return new URL(path.replace(/^\//, ""), server).toString();
}

async function request(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(api(path), { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  if (!response.ok) {
    const error = new Error(body?.message || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function setStatus(state, label = STATUS_LABEL[state] || state) {
  const pill = $("connection");
  setAttr(pill, "data-state", state);
  setText(pill.querySelector(".label"), label);
}

// -- the model: what the stream says ---------------------------------------------------------
function onSnapshots(list) {
  const known = new Set([...runs.keys(), ...summaries.keys()]);
  runs.clear();
  for (const snap of list) runs.set(snap.run, snap);
  resetOutput();
  if (loaded) for (const snap of list) if (!known.has(snap.run) && isLive(snap)) noticeNewRun(snap);
  loaded = true;
  if (selected) showAlerts(runs.get(selected) ?? null);
  render();
}

function onEvent(event) {
  const before = runs.get(event.run);
  const wasLive = before ? isLive(before) || before.status === "interrupted" : true;
  const fresh = !before && !summaries.has(event.run);
  const statusBefore = before?.status;
  const sessionBefore = { session: { state: before?.session?.state } };   // apply() changes `before` in place
  const snap = apply(before ?? null, event);
  runs.set(event.run, snap);
  agentPanel.onEvent(event);
  if (wasLive && FINISHED.includes(snap.status)) transcripts.delete(event.run);
  if (fresh || (event.type === "task_started" && before && !isLive(before))) noticeNewRun(snap);
  if (startsWaiting(sessionBefore, snap)) noticeWaiting(snap);
  if (event.run === selected) {
    if (event.type === "output" && typeof event.data?.text === "string" && event.data.text) {
      outputChunks.push(event.data.text);
    } else if (event.type === "task_started" && statusBefore && !isLive({ status: statusBefore })) {
      resetOutput();   // the run's id was used again: its output starts afresh
    }
    watch(snap, event, statusBefore);
    showAlerts(snap);   // now, not at the next frame: a hidden tab draws no frames, and its title is what shows
  }
  render();
}

// Title, icon and the screen-reader announcement as the state arrives: announced only when a frame
// is drawn, a change that came before the first frame after load (a run that ends just then) was lost.
function showAlerts(snap) {
  alerts.show(snap);
  alerts.announce(snap);
}

// A watched run finished, failed or stalled: a desktop notification when the tab is hidden.
function watch(snap, event, statusBefore) {
  const alert = watchAlert(snap, event, statusBefore);
  if (alert) alerts.notify(snap.run, alert.key, alert.title, alert.body);
}

// A Claude Code session started waiting for its user: one desktop notification per wait, whichever
// run is selected (the title's count says it too).
function noticeWaiting(snap) {
  const alert = waitingAlert(snap);
  alerts.notify(snap.run, alert.key, alert.title, alert.body);
  if (snap.run !== selected) showAlerts(runs.get(selected) ?? null);
}

function noticeNewRun(snap) {
  if (!settled || snap.run === selected || notices.some((n) => n.run === snap.run)) return;
  notices.unshift({ run: snap.run, text: `New run ${snap.task_name || snap.run}` });
  notices.length = Math.min(notices.length, NOTICES_KEPT);
}

const stream = new SharedStream({
  server,
  token,
  headers: sameOrigin ? {} : authHeaders,
  transport: query.get("transport") === "poll" || (token && !sameOrigin) ? "poll" : "sse",
  onStatus: (state) => setStatus(state),
  onOutage: (info) => { outage = info; render(); },
  onSnapshots,
  onEvent,
  getSnapshots: () => [...runs.values()],
});

async function loadHistory() {
  try {
    const { runs: list } = await request("/api/runs");
    summaries.clear();
    for (const s of list) summaries.set(s.run, s);
    render();
  } catch { /* the outage banner already says when the sidecar is away */ }
}

// The selected run's snapshot when the stream did not bring it (a finished run from history). A
// run that is not there yet (the URL `loop run` prints, opened before its first event) is waited
// for: its first event arrives on the stream; the sidecar is asked again every ASK_AGAIN_MS.
const ASK_AGAIN_MS = 5000;
const asked = new Map();   // run -> {at, missing}

let loadError = null;      // {run, text}: said until the run appears, then forgotten

async function ensureSnapshot(run) {
  const last = asked.get(run);
  if (runs.has(run) || (last && (last.pending || Date.now() - last.at < ASK_AGAIN_MS))) return;
  asked.set(run, { at: Date.now(), pending: true, missing: last?.missing ?? false });
  try {
    const snap = await request(`/api/runs/${encodeURIComponent(run)}`);
    if (!runs.has(run)) runs.set(run, snap);
    asked.delete(run);
  } catch (e) {
    asked.set(run, { at: Date.now(), pending: false, missing: e.status === 404 });
    if (e.status !== 404) {
      loadError = { run, text: `Could not load ${run}: ${e.message}` };
      showActionState(loadError.text, true);
    }
  }
  render();
}

async function ensureTranscript(snap) {
  const known = transcripts.get(snap.run);
  if (known && (known.loading || known.count === snap.event_count)) return;
  transcripts.set(snap.run, { loading: true, count: snap.event_count, events: known?.events || [] });
  try {
    const { events } = await request(`/api/runs/${encodeURIComponent(snap.run)}/transcript`);
    transcripts.set(snap.run, { count: snap.event_count, events });
  } catch (e) {
    transcripts.set(snap.run, { count: snap.event_count, events: [], error: e.message });
  }
  render();
}

// -- choosing the run shown -----------------------------------------------------------------------
function select(run) {
  if (run === selected) return;
  selected = run;
  settled = true;
  follow = true;
  resetOutput();
  const i = notices.findIndex((n) => n.run === run);
  if (i >= 0) notices.splice(i, 1);
  const params = new URLSearchParams(location.search);
  params.set("run", run);
  history.replaceState(null, "", `?${params}${location.hash}`);
  render();
}


// -- rendering ---------------------------------------------------------------------------
// At most one draw per animation frame and per FRAME_MS: a run printing 50 lines a second is
// drawn 20 times a second, which reads as live and leaves the main thread mostly idle.
const FRAME_MS = 50;
let lastDraw = 0;

function render() {
  if (pending) return;
  pending = true;
  const frame = () => requestAnimationFrame(() => {
    pending = false;
    lastDraw = performance.now();
    draw();
  });
  const wait = lastDraw + FRAME_MS - performance.now();
  if (wait > 0) setTimeout(frame, wait); else frame();
}

// The run shown: on load the live run (else the latest); afterwards only a person changes it. An
// empty page shows the first run that appears.
function draw() {
  const rows = runRows(summaries, runs);
  const pick = pickOnLoad(rows, settled ? selected : null);
  if (pick !== null) {
    selected = pick;
    settled = true;
  }
  const snap = selected ? runs.get(selected) ?? null : null;
  if (selected && !snap) ensureSnapshot(selected);
  forgetStaleError();
  for (const panel of PANELS) panel({ rows, snap });
}

function drawWaiting({ snap }) {
  const waiting = Boolean(selected && !snap && asked.get(selected)?.missing);
  setHidden($("waiting"), !waiting);
  if (waiting) setText($("waiting"), `Waiting for run ${selected} to start…`);
}

function drawOutage() {
  const box = $("outage");
  setHidden(box, !outage);
  if (!outage) return;
  const { what, doing } = outageText(outage, Date.now());
  setText($("outage-what"), what);
  setText($("outage-doing"), doing);
}

// An error about a run that could not be loaded is stale once the run is here.
function forgetStaleError() {
  if (!loadError || !(runs.has(loadError.run) || summaries.has(loadError.run))) return;
  if ($("action-state").textContent === loadError.text) showActionState("");
  loadError = null;
}

function drawNotices() {
  keyed($("notices"), notices, (n) => n.run, (n) => {
    const p = fromTemplate("new-run-notice");
    p.querySelector(".view").addEventListener("click", () => select(n.run));
    p.querySelector(".dismiss").addEventListener("click", () => {
      const i = notices.indexOf(n);
      if (i >= 0) notices.splice(i, 1);
      render();
    });
    return p;
  }, (p, n) => setText(p.querySelector(".new-run-text"), n.text));
}

function drawRunList({ rows }) {
  setHidden($("no-runs"), rows.length > 0);
  keyed($("run-list"), rows, (r) => r.run, (r) => {
    const li = fromTemplate("run-row");
    li.querySelector("button").addEventListener("click", () => select(r.run));
    setText(li.querySelector(".run-name"), r.run);
    return li;
  }, (li, r) => {
    setHidden(li.querySelector(".badge.live"), r.status !== "running");
    const status = li.querySelector(".run-status");
    const session = sessionStatus(r);             // a Claude Code session: its state in words
    setText(status, session ? session.word : r.status);
    setAttr(status, "data-status", session ? session.key : r.status);
    setAttr(li, "data-waiting", session?.key === "waiting" ? "" : null);
    setText(li.querySelector(".run-percent"), reportsProgress(r) ? ` · ${Math.round(r.percent || 0)}%` : "");
    setText(li.querySelector(".run-task"), session ? session.task : r.task_name || "");
    setAttr(li.querySelector("button"), "aria-current", String(r.run === selected));
  });
}

function drawHead({ snap }) {
  showAlerts(snap);
  setHidden($("panel"), !snap);
  if (!snap) return;
  const title = snap.task_name || snap.run;
  setText($("run-title"), title);
  setAttr($("run-title"), "data-command", snap.command === title ? "" : null);   // named by its command
  setText($("run-id"), snap.run);
  const command = snap.command ?? null;
  setHidden($("run-command"), command === null || command === title);
  setText($("run-command").querySelector("code"), command ?? "");
  const status = $("run-status");
  const session = sessionStatus(snap);
  setText(status, session ? session.word : snap.status);
  setAttr(status, "data-status", session ? session.key : snap.status);
  setHidden($("run-session"), !session);
  setText($("run-session"), session ? sessionLine(snap.session) : "");
}

function drawProgress({ snap }) {
  if (!snap) return;
  setHidden($("progress-row"), !reportsProgress(snap));
  const percent = Math.round(snap.percent || 0);
  const bar = $("progress");
  bar.querySelector(".fill").style.width = `${percent}%`;
  setAttr(bar, "data-status", snap.status);
  setAttr(bar, "aria-valuenow", String(percent));
  setText($("percent"), `${percent}%`);
  const stopped = stoppedLine(snap);
  setHidden($("stopped-at"), stopped === null);
  if (stopped !== null) setText($("stopped-at"), stopped);
}

function drawCounts({ snap }) {
  if (!snap) return;
  const c = snap.counts || {};
  for (const cell of document.querySelectorAll("#panel .story-count")) setHidden(cell, !c.total);
  setText($("c-completed"), `${c.completed ?? 0}${c.total ? ` / ${c.total}` : ""}`);
  setText($("c-running"), String(c.running ?? 0));
  setText($("c-queued"), String(c.queued ?? 0));
  setText($("c-failed"), String(c.failed ?? 0));
  setText($("c-skipped"), String(c.skipped ?? 0));
  setText($("c-cancelled"), String(c.cancelled ?? 0));
  setText($("c-rate"), snap.success_rate === null || snap.success_rate === undefined
    ? "—" : `${Math.round(snap.success_rate * 100)}%`);
  const clock = clockText(snap, Date.now() / 1000);
  setText($("elapsed"), clock.elapsed);
  setHidden($("remaining-box"), !reportsProgress(snap) && (snap.eta_s ?? null) === null);
  setText($("remaining"), clock.remaining);
}

function drawControls({ snap }) {
  if (!snap) return;
  for (const id of ["pause", "resume", "stop"]) setHidden($(id), Boolean(snap.session));   // Claude Code does not listen
  const live = isLive(snap);
  const control = snap.control || {};
  $("pause").disabled = busy.has("pause") || !(snap.status === "running" && !control.pause_requested) || Boolean(control.stop_requested);
  $("resume").disabled = busy.has("resume") || !(snap.status === "paused" || control.pause_requested);
  $("stop").disabled = busy.has("stop") || !live || Boolean(control.stop_requested);
  setText($("stop"), control.stop_requested ? "Stopping…" : "Stop…");
}

function drawNotice({ snap }) {
  if (!snap) return;
  const notice = $("notice");
  const finished = FINISHED.includes(snap.status) || snap.status === "interrupted";
  setHidden(notice, !finished);
  if (!finished) return;
  setAttr(notice, "data-status", snap.status);
  setText(notice, outcome(snap));
}

function drawCards({ snap }) {
  if (!snap) return;
  const running = (snap.stories || []).filter((s) => s.status === "running");
  keyed($("cards"), running.length > 1 ? running : [], (s) => s.id, () => fromTemplate("card"), (card, s) => {
    setText(card.querySelector("h4"), s.id);
    setText(card.querySelector(".card-title"), s.title || "");
    const lines = cardText(s);
    setText(card.querySelector(".card-progress"), lines.progress);
    setText(card.querySelector(".card-output"), lines.output);
  });
}

function drawChecklist({ snap }) {
  if (!snap) return;
  const story = (snap.stories || []).find((s) => s.id === snap.current_story);
  const box = $("current");
  setHidden(box, !story);
  const acs = story ? story.acceptance_criteria || [] : [];
  if (story) setText($("current-title"), `Current story: ${story.id} — ${story.title || ""}`);
  keyed($("checklist"), acs.map((ac, i) => ({ ac, key: `${story.id}#${i}` })), (x) => x.key,
    () => fromTemplate("ac-row"), (li, { ac }) => {
      setAttr(li, "data-status", ac.status);
      setText(li.querySelector(".mark"), MARK[ac.status] || "○");
      setText(li.querySelector(".ac-text"), ac.text);
      setText(li.querySelector(".ac-status"), ac.status === "pending" ? "" : ac.status);
      setText(li.querySelector(".ac-error"), ac.error || "");
    });
}

function drawStories({ snap }) {
  if (!snap) return;
  setHidden($("stories-box"), !(snap.stories || []).length);
  keyed($("stories"), snap.stories || [], (s) => s.id, () => fromTemplate("story-row"), (li, s) => {
    setAttr(li, "data-status", s.status);
    setText(li.querySelector(".mark"), STORY_MARK[s.status] || "○");
    setText(li.querySelector(".story-id"), s.id);
    setText(li.querySelector(".story-title"), s.title || "");
    const status = li.querySelector(".story-status");
    setText(status, storyStatusText(s));
    setAttr(status, "data-status", s.status === "passed" ? "" : s.status);
    const warning = loopingWarning(s);
    setHidden(li.querySelector(".story-warn"), warning === null);
    setText(li.querySelector(".story-warn"), warning ?? "");
  });
}

// -- output: appended, never re-set while the run goes on (output.js) ----------------------------
const output = new OutputView($("output"));

function resetOutput() {
  output.owner = null;
  outputChunks.length = 0;
}

function drawOutput({ snap }) {
  if (!snap) return;
  const pre = $("output");
  const text = snap.output || "";
  const changed = outputChunks.length > 0 || output.owner !== snap.run;
  if (output.owner === snap.run && outputChunks.length) {
    output.append(outputChunks.splice(0).join(""));
    output.trimTo(text.length);
  }
  if (output.owner !== snap.run || output.length !== text.length) {   // a new run, a reset, or a mismatch
    outputChunks.length = 0;
    output.reset(snap.run, text);
  }
  if (changed && follow) pre.scrollTop = pre.scrollHeight;
  setHidden($("truncated"), !snap.output_truncated);
  setHidden($("follow"), follow);
}

function drawLogs({ snap }) {
  if (!snap) return;
  setHidden($("log-box"), !(snap.log || []).length);
  drawLog($("log"), (snap.log || []).slice().reverse(), (entry) => entry);
  drawTranscript(snap);
}

function drawLog(list, entries, keyOf) {
  keyed(list, entries, keyOf, (entry) => {
    const li = fromTemplate("log-row");
    const time = li.querySelector("time");
    if (typeof entry.ts === "number") {
      const date = new Date(entry.ts * 1000);
      time.dateTime = date.toISOString();
      time.textContent = date.toLocaleTimeString();
    }
    li.querySelector(".log-type").textContent = entry.type;
    li.querySelector(".log-text").textContent = entry.text;
    return li;
  }, () => {});
}

function drawTranscript(snap) {
  const box = $("transcript-box");
  setHidden(box, isLive(snap));
  if (isLive(snap)) return;
  ensureTranscript(snap);
  const t = transcripts.get(snap.run);
  const events = t?.events || [];
  const shown = events.slice(-TRANSCRIPT_SHOWN);
  setText($("transcript-note"), transcriptNote(t, shown.length));
  drawLog($("transcript"), shown.map((e) => ({ id: `${snap.run} ${e.id}`, ts: e.ts, type: e.type, text: describe(e) })),
    (entry) => entry.id);
}

function drawNotifyToggle() {
  const button = $("notify-toggle");
  const permission = Alerts.permission();
  setHidden(button, permission === "unsupported");
  setText(button, { granted: "🔔 Notifications on", denied: "🔕 Notifications blocked" }[permission] || "🔔 Notify me");
  button.disabled = permission !== "default";
}

// One render function per panel, in page order; each gets {rows, snap} (snap: the selected run).
const PANELS = [drawOutage, drawNotices, drawNotifyToggle, drawRunList, drawWaiting, drawHead, drawProgress, drawCounts,
  drawControls, drawNotice, drawCards, drawChecklist, agentPanel.draw, drawStories, drawOutput, drawLogs];

// -- actions --------------------------------------------------------------------------------
function showActionState(text, isError = false) {
  const el = $("action-state");
  setText(el, text);
  el.classList.toggle("error", isError);
}

async function control(action, body = {}) {
  const run = selected;
  busy.add(action);
  showActionState(`${action[0].toUpperCase()}${action.slice(1)} requested for ${run}…`);
  render();
  try {
    const result = await request(`/api/runs/${encodeURIComponent(run)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    showActionState(result.requested ? `${action} sent to ${run}; the runner will act on it.`
      : `Nothing to do: ${run} is ${result.status}.`);
  } catch (e) {
    showActionState(`Could not ${action} ${run}: ${e.message}`, true);
  } finally {
    busy.delete(action);
    render();
  }
}

async function exportTranscript() {
  const run = selected;
  try {
    const data = await request(`/api/runs/${encodeURIComponent(run)}/transcript`);
    const blob = new Blob([JSON.stringify(withAgentSummary(data, runs.get(run)), null, 2)],
      { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `loop-${run}-transcript.json`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    showActionState(`Exported ${data.events.length} events of ${run}.`);
  } catch (e) {
    showActionState(`Could not export ${run}: ${e.message}`, true);
  }
}

// Enter (in the reason field or on the confirm button) stops the run; Escape or Cancel does not.
function wireStopDialog() {
  const dialog = $("stop-dialog");
  $("stop").addEventListener("click", () => {
    $("stop-reason").value = "";
    dialog.returnValue = "";
    dialog.showModal();
  });
  $("stop-cancel").addEventListener("click", () => dialog.close("cancel"));
  dialog.addEventListener("close", () => {
    if (dialog.returnValue === "confirm") {
      const reason = $("stop-reason").value.trim();
      control("stop", reason ? { reason } : {});
    }
  });
}

function wireOutput() {
  $("copy").addEventListener("click", async () => {
    const text = runs.get(selected)?.output || "";
    try {
      await navigator.clipboard.writeText(text);
      showActionState(`Copied ${text.length} characters of output.`);
    } catch {
      const range = document.createRange();
      range.selectNodeContents($("output"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      showActionState("Output selected: press Ctrl+C to copy.");
    }
  });
  const pre = $("output");
  pre.addEventListener("scroll", () => {
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (atBottom !== follow) {
      follow = atBottom;
      setHidden($("follow"), follow);
    }
  });
  $("follow").addEventListener("click", () => {
    follow = true;
    pre.scrollTop = pre.scrollHeight;
    setHidden($("follow"), true);
  });
}

function wire() {
  $("pause").addEventListener("click", () => control("pause"));
  $("resume").addEventListener("click", () => control("resume"));
  $("export").addEventListener("click", exportTranscript);
  $("notify-toggle").addEventListener("click", async () => {
    await Alerts.ask();
    render();
  });
  wireStopDialog();
  wireOutput();
}

// Same origin: the fragment's token becomes a session cookie before the stream opens, then leaves
// the address bar (and so the history and any screenshot of it).
async function startSession() {
  if (!token || !sameOrigin) return;
  try {
    const response = await fetch(api("/api/session"), {
      method: "POST", headers: { ...authHeaders, "Content-Type": "application/json" }, body: "{}",
    });
    if (!response.ok) return;
    fragment.delete("token");
    const rest = fragment.toString();
    history.replaceState(history.state, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
  } catch { /* the outage banner says when the sidecar is away */ }
}

wire();
setStatus("connecting");
startSession().finally(() => stream.start());
loadHistory();
setInterval(loadHistory, 15_000);
setInterval(render, 1000);   // elapsed, remaining and the outage banner tick between events
window.loopDashboard = {     // for the browser tests and the curious
  runs, stream, select,
  get connection() { return stream.connection; },
  get role() { return stream.role; },
};
