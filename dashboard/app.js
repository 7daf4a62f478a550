// The dashboard: one EventSource (with a polling fallback), the shared reducer, and a
// view built from <template> rows filled with textContent — event text is never markup.
import { apply, isLive, FINISHED } from "./state.js";
import { Connection } from "./connection.js";

const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const server = new URL(query.get("server") || "/", location.href).toString().replace(/\/?$/, "/");
const token = fragment.get("token");
const $ = (id) => document.getElementById(id);

const MARK = { passed: "✅", running: "⏳", pending: "○", failed: "❌" };
const STORY_MARK = { passed: "✅", running: "⏳", queued: "○", failed: "❌", skipped: "⏭", cancelled: "⛔" };
const STATUS_LABEL = { live: "Live", polling: "Polling", reconnecting: "Reconnecting", connecting: "Connecting…" };
const TRANSCRIPT_SHOWN = 2000;

const runs = new Map();        // run -> full snapshot (from hello/reset/poll, folded live)
const summaries = new Map();   // run -> summary from /api/runs (includes history)
const transcripts = new Map(); // run -> {count, events}
let selected = query.get("run");
let userPicked = Boolean(selected);
let follow = true;
let pending = false;
const busy = new Set();        // control actions in flight

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
  if (!response.ok) throw new Error(body?.message || `${response.status} ${response.statusText}`);
  return body;
}

function setStatus(state, label = STATUS_LABEL[state] || state) {
  const pill = $("connection");
  pill.dataset.state = state;
  pill.querySelector(".label").textContent = label;
}

const connection = new Connection({
  server,
  token,
  transport: query.get("transport") === "poll" ? "poll" : "sse",
  onStatus: (state) => setStatus(state),
  onSnapshots(list, { reset }) {
    if (reset) runs.clear();
    for (const snap of list) runs.set(snap.run, snap);
    render();
  },
  onEvent(event) {
    const before = runs.get(event.run);
    const wasLive = before ? isLive(before) || before.status === "interrupted" : true;
    const snap = apply(before ?? null, event);
    runs.set(event.run, snap);
    if (wasLive && FINISHED.includes(snap.status)) transcripts.delete(event.run);
    render();
  },
});

async function loadHistory() {
  try {
    const { runs: list } = await request("/api/runs");
    summaries.clear();
    for (const s of list) summaries.set(s.run, s);
    render();
  } catch { /* the stream indicator already says when the sidecar is away */ }
}

async function ensureSnapshot(run) {
  if (runs.has(run)) return;
  try {
    runs.set(run, await request(`/api/runs/${encodeURIComponent(run)}`));
    render();
  } catch (e) {
    showActionState(`Could not load ${run}: ${e.message}`, true);
  }
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

// -- rendering ---------------------------------------------------------------------------
function render() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    draw();
  });
}

function fromTemplate(id) {
  return $(id).content.firstElementChild.cloneNode(true);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function liveTimes(snap, now = Date.now() / 1000) {
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

function allRows() {
  const rows = new Map(summaries);
  for (const [run, snap] of runs) rows.set(run, snap);
  return [...rows.values()].sort((a, b) => (b.updated_at || 0) - (a.updated_at || 0));
}

function draw() {
  const rows = allRows();
  if (!userPicked || !selected) {
    const live = rows.find((r) => r.status === "running" || r.status === "paused");
    selected = (live || rows[0])?.run ?? null;
  }
  drawRunList(rows);
  const snap = selected ? runs.get(selected) : null;
  if (selected && !snap) ensureSnapshot(selected);
  drawPanel(snap);
}

function drawRunList(rows) {
  $("no-runs").hidden = rows.length > 0;
  $("run-list").replaceChildren(...rows.map((r) => {
    const li = fromTemplate("run-row");
    const button = li.querySelector("button");
    li.querySelector(".run-name").textContent = r.run;
    li.querySelector(".badge.live").hidden = r.status !== "running";
    const status = li.querySelector(".run-status");
    status.textContent = r.status;
    status.dataset.status = r.status;
    li.querySelector(".run-percent").textContent = `${Math.round(r.percent || 0)}%`;
    li.querySelector(".run-task").textContent = r.task_name || "";
    button.setAttribute("aria-current", String(r.run === selected));
    button.addEventListener("click", () => {
      selected = r.run;
      userPicked = true;
      follow = true;
      history.replaceState(null, "", `?${new URLSearchParams({ ...Object.fromEntries(query), run: r.run })}${location.hash}`);
      draw();
    });
    return li;
  }));
}

function drawPanel(snap) {
  const panel = $("panel");
  panel.hidden = !snap;
  if (!snap) return;
  const live = isLive(snap);
  $("run-title").textContent = snap.task_name || snap.run;
  $("run-id").textContent = snap.run;
  const status = $("run-status");
  status.textContent = snap.status;
  status.dataset.status = snap.status;

  const percent = Math.round(snap.percent || 0);
  $("progress").querySelector(".fill").style.width = `${percent}%`;
  $("progress").setAttribute("aria-valuenow", String(percent));
  $("percent").textContent = `${percent}%`;

  const c = snap.counts || {};
  $("c-completed").textContent = `${c.completed ?? 0}${c.total ? ` / ${c.total}` : ""}`;
  $("c-running").textContent = String(c.running ?? 0);
  $("c-queued").textContent = String(c.queued ?? 0);
  $("c-failed").textContent = String(c.failed ?? 0);
  $("c-rate").textContent = snap.success_rate === null || snap.success_rate === undefined
    ? "—" : `${Math.round(snap.success_rate * 100)}%`;
  const { elapsed, eta } = liveTimes(snap);
  $("elapsed").textContent = duration(elapsed);
  $("remaining").textContent = live ? (eta === null || eta === undefined ? "estimating…" : `~${duration(eta)}`) : "—";

  drawControls(snap);
  drawNotice(snap);
  drawCards(snap);
  drawChecklist(snap);
  drawStories(snap);
  drawOutput(snap);
  drawLog($("log"), (snap.log || []).slice().reverse());
  drawTranscript(snap);
}

function drawControls(snap) {
  const live = isLive(snap);
  const control = snap.control || {};
  $("pause").disabled = busy.has("pause") || !(snap.status === "running" && !control.pause_requested) || Boolean(control.stop_requested);
  $("resume").disabled = busy.has("resume") || !(snap.status === "paused" || control.pause_requested);
  $("stop").disabled = busy.has("stop") || !live || Boolean(control.stop_requested);
  $("stop").textContent = control.stop_requested ? "Stopping…" : "Stop…";
}

function drawNotice(snap) {
  const notice = $("notice");
  const finished = FINISHED.includes(snap.status) || snap.status === "interrupted";
  notice.hidden = !finished;
  if (!finished) return;
  notice.dataset.status = snap.status;
  const c = snap.counts || {};
  const words = { passed: "Run passed", failed: "Run failed", stopped: "Run stopped", interrupted: "Run interrupted" };
  const text = `${words[snap.status]}: ${c.completed ?? 0} passed, ${c.failed ?? 0} failed` +
    (c.skipped ? `, ${c.skipped} skipped` : "") + (c.cancelled ? `, ${c.cancelled} cancelled` : "") +
    ` in ${duration(snap.elapsed_s)}.`;
  if (notice.textContent !== text) notice.textContent = text;
}

function drawCards(snap) {
  const running = (snap.stories || []).filter((s) => s.status === "running");
  $("cards").replaceChildren(...(running.length > 1 ? running : []).map((s) => {
    const card = fromTemplate("card");
    card.querySelector("h4").textContent = s.id;
    card.querySelector(".card-title").textContent = s.title || "";
    const acs = s.acceptance_criteria || [];
    card.querySelector(".card-progress").textContent =
      `${acs.filter((a) => a.status === "passed").length}/${acs.length} criteria · attempt ${s.attempt || 1}`;
    card.querySelector(".card-output").textContent = (s.last_output || "").split("\n").filter(Boolean).slice(-3).join("\n");
    return card;
  }));
}

function drawChecklist(snap) {
  const story = (snap.stories || []).find((s) => s.id === snap.current_story);
  $("current").hidden = !story;
  if (!story) return;
  $("current-title").textContent = `Current story: ${story.id} — ${story.title || ""}`;
  $("checklist").replaceChildren(...(story.acceptance_criteria || []).map((ac) => {
    const li = fromTemplate("ac-row");
    li.dataset.status = ac.status;
    li.querySelector(".mark").textContent = MARK[ac.status] || "○";
    li.querySelector(".ac-text").textContent = ac.text;
    li.querySelector(".ac-status").textContent = ac.status === "pending" ? "" : ac.status;
    li.querySelector(".ac-error").textContent = ac.error || "";
    return li;
  }));
}

function drawStories(snap) {
  $("stories").replaceChildren(...(snap.stories || []).map((s) => {
    const li = fromTemplate("story-row");
    li.dataset.status = s.status;
    li.querySelector(".mark").textContent = STORY_MARK[s.status] || "○";
    li.querySelector(".story-id").textContent = s.id;
    li.querySelector(".story-title").textContent = s.title || "";
    const status = li.querySelector(".story-status");
    status.textContent = s.status + (s.duration_ms ? ` · ${duration(s.duration_ms / 1000)}` : "");
    status.dataset.status = s.status === "passed" ? "" : s.status;
    return li;
  }));
}

function drawOutput(snap) {
  const pre = $("output");
  const text = snap.output || "";
  if (pre.textContent !== text) {
    pre.textContent = text;
    if (follow) pre.scrollTop = pre.scrollHeight;
  }
  $("truncated").hidden = !snap.output_truncated;
  $("follow").hidden = follow;
}

function drawLog(list, entries) {
  list.replaceChildren(...entries.map((entry) => {
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
  }));
}

function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "output": return `${d.story_id ?? ""} ${d.stream ?? ""}: ${d.text ?? ""}`;
    case "story_started": return `${d.story_id} ${d.title ?? ""} (attempt ${d.attempt ?? 1})`;
    case "story_completed": return `${d.story_id} ${d.status}`;
    case "ac_completed": case "ac_failed": return `${d.story_id} [${d.ac_index}] ${d.ac_text ?? ""} ${d.error ?? ""}`;
    default: return typeof d.message === "string" ? d.message : JSON.stringify(d);
  }
}

function drawTranscript(snap) {
  const box = $("transcript-box");
  box.hidden = isLive(snap);
  if (isLive(snap)) return;
  ensureTranscript(snap);
  const t = transcripts.get(snap.run);
  const events = t?.events || [];
  const shown = events.slice(-TRANSCRIPT_SHOWN);
  $("transcript-note").textContent = t?.error ? `Transcript unavailable: ${t.error}`
    : events.length > shown.length ? `Showing the last ${shown.length} of ${events.length} events; export for all.`
      : `${events.length} events.`;
  drawLog($("transcript"), shown.map((e) => ({ ts: e.ts, type: e.type, text: describe(e) })));
}

// -- actions --------------------------------------------------------------------------------
function showActionState(text, isError = false) {
  const el = $("action-state");
  el.textContent = text;
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
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
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

function wire() {
  $("pause").addEventListener("click", () => control("pause"));
  $("resume").addEventListener("click", () => control("resume"));
  $("export").addEventListener("click", exportTranscript);
  $("stop").addEventListener("click", () => {
    $("stop-reason").value = "";
    $("stop-dialog").showModal();
  });
  $("stop-dialog").addEventListener("close", () => {
    if ($("stop-dialog").returnValue === "confirm") {
      const reason = $("stop-reason").value.trim();
      control("stop", reason ? { reason } : {});
    }
  });
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
      $("follow").hidden = follow;
    }
  });
  $("follow").addEventListener("click", () => {
    follow = true;
    pre.scrollTop = pre.scrollHeight;
    $("follow").hidden = true;
  });
}

wire();
setStatus("connecting");
connection.start();
loadHistory();
setInterval(loadHistory, 15_000);
setInterval(render, 1000);   // elapsed and remaining tick between events
window.loopDashboard = { connection, runs };   // for the browser tests and the curious
