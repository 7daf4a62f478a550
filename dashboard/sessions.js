// Claude Code sessions reported by loop's hooks (snapshot.session, lib/loopstream/formats/hook_session.py):
// their state in words for the run list, the count of those waiting for their user (the tab title),
// and when one starts waiting (a desktop notification). Pure: no DOM.
import { LIVE } from "./state.js";

const WORDS = { working: "working", waiting_for_input: "waiting for you", idle: "idle", ended: "ended" };

// {word, key, task} for a run that is a session (null otherwise): key is the status the list styles
// ("waiting" stands out), task its project and, while it waits, what it waits for.
export function sessionStatus(run) {
  const s = run?.session;
  if (!s || typeof s !== "object") return null;
  const waiting = s.state === "waiting_for_input";
  const project = String(s.project ?? run.task_name ?? "");
  return {
    word: WORDS[s.state] ?? String(s.state),
    key: waiting ? "waiting" : String(s.state),
    task: waiting && s.waiting_for ? `${project} — ${String(s.waiting_for)}` : project,
  };
}

// How many live sessions wait for their user.
export function waitingCount(runs) {
  let n = 0;
  for (const r of runs) if (r?.session?.state === "waiting_for_input" && LIVE.includes(r.status)) n += 1;
  return n;
}

// "2 waiting · " before a title, or nothing.
export function waitingPrefix(n) {
  return n > 0 ? `${n} waiting · ` : "";
}

// The session started waiting with this event (it was not waiting before): one notification per wait.
export function startsWaiting(before, after) {
  return after?.session?.state === "waiting_for_input" && before?.session?.state !== "waiting_for_input";
}

// The selected session's line under its title: where it runs, what it waits for, its subagents.
export function sessionLine(s) {
  const parts = [`Claude Code session in ${String(s.cwd ?? "?")}`];
  if (s.state === "waiting_for_input") parts.push(`waiting for you: ${String(s.waiting_for ?? "")}`);
  if (s.model) parts.push(String(s.model));
  const subs = Array.isArray(s.subagents) ? s.subagents : [];
  const running = subs.filter((x) => x?.state === "running").length;
  if (subs.length) parts.push(`${subs.length} subagent${subs.length > 1 ? "s" : ""}${running ? ` (${running} running)` : ""}`);
  return parts.join(" · ");
}
