// Telling a person what matters without making them watch: the tab's title and favicon carry the
// selected run's state (after the count of Claude Code sessions waiting for their user: "2 waiting · "),
// status changes are announced to screen readers (aria-live), and a watched run that finishes, fails
// or stalls, or a session that starts waiting, while the tab is hidden raises one desktop notification,
// once per run and event across all tabs (a Web Lock serialises the check in localStorage).
import { $, setText } from "./dom.js";
import { waitingPrefix } from "./sessions.js";

const TITLE_MARK = { passed: "✅", failed: "❌", stopped: "⛔", paused: "⏸", interrupted: "⚠", running: "⏳" };
const ICON_COLOUR = { passed: "#137333", failed: "#b3261e", stopped: "#b3261e", interrupted: "#b3261e",
  paused: "#8a5a00", running: "#1a56db" };

// `✅ passed · Demo`, `⏳ 2/4 · Demo`, `⏳ 40% · script`, `⏳ running · make test` (no progress reported).
export function titleFor(snap) {
  if (!snap) return "loop";
  const name = snap.task_name || snap.run;
  const mark = TITLE_MARK[snap.status] || "•";
  const c = snap.counts || {};
  let what = snap.status;
  if (snap.status === "running") {
    const done = (c.completed || 0) + (c.failed || 0) + (c.skipped || 0);
    what = c.total ? `${done}/${c.total}` : snap.progress ? `${Math.round(snap.percent || 0)}%` : "running";
  }
  return `${mark} ${what} · ${name}`;
}

// A small SVG: a disc in the status colour with the finished share as a ring.
export function faviconFor(snap) {
  const colour = ICON_COLOUR[snap?.status] || "#5d6470";
  const share = Math.max(0, Math.min(1, (snap?.percent || 0) / 100));
  const ring = 2 * Math.PI * 6;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">` +
    `<circle cx="8" cy="8" r="6" fill="none" stroke="#d9dce1" stroke-width="3"/>` +
    `<circle cx="8" cy="8" r="6" fill="none" stroke="${colour}" stroke-width="3" ` +
    `stroke-dasharray="${(ring * share).toFixed(2)} ${ring.toFixed(2)}" transform="rotate(-90 8 8)"/>` +
    `<circle cx="8" cy="8" r="3" fill="${colour}"/></svg>`;
  return `data:image/svg+xml,${encodeURIComponent(svg)}`;
}

export class Alerts {
  constructor({ server, locks = globalThis.navigator?.locks, waiting = () => 0 }) {
    this.server = server;
    this.waiting = waiting;        // how many Claude Code sessions wait for their user (the title says it)
    this.locks = locks;
    this.lastStatus = new Map();   // run -> status last announced
    this.icon = "";
  }

  // Title and favicon for the selected run (called on every draw; writes only on change).
  show(snap) {
    const title = waitingPrefix(this.waiting()) + titleFor(snap);
    if (document.title !== title) document.title = title;
    const icon = faviconFor(snap);
    if (icon !== this.icon) {
      this.icon = icon;
      $("favicon").href = icon;
    }
  }

  // Announce the selected run's status changes to screen readers.
  announce(snap) {
    if (!snap) return;
    const before = this.lastStatus.get(snap.run);
    this.lastStatus.set(snap.run, snap.status);
    if (before && before !== snap.status) {
      setText($("announce"), `${snap.task_name || snap.run}: ${snap.status}.`);
    }
  }

  // -- desktop notifications --------------------------------------------------------------
  static supported() {
    return typeof globalThis.Notification === "function";
  }

  static permission() {
    return Alerts.supported() ? Notification.permission : "unsupported";
  }

  // Asked from a click (browsers ignore or block a request that no gesture started).
  static async ask() {
    if (!Alerts.supported()) return "unsupported";
    return Notification.requestPermission();
  }

  // A watched run finished, failed or stalled: notify if the tab is hidden, once across tabs.
  async notify(run, key, title, body) {
    if (!document.hidden || Alerts.permission() !== "granted") return false;
    const once = () => {
      const mark = `loop-notified ${this.server} ${run} ${key}`;
      try {
        if (localStorage.getItem(mark)) return false;
        localStorage.setItem(mark, String(Date.now()));
      } catch { /* storage off: the notification tag still keeps it to one per run */ }
      const n = new Notification(title, { body, tag: `loop ${this.server} ${run}` });
      n.onclick = () => { window.focus(); n.close(); };
      return true;
    };
    if (!this.locks) return once();
    // One lock per notification, taken without waiting and held for the life of the tab that shows it:
    // the browser grants it to one tab only, so another finds it taken at once (localStorage reaches
    // other tabs' processes a moment later, so the mark alone let two hidden tabs both notify). The mark
    // still stops a tab opened later from notifying again.
    return new Promise((resolve) => {
      this.locks.request(`loop-notified ${this.server} ${run} ${key}`, { ifAvailable: true }, (lock) => {
        if (!lock) return resolve(false);
        resolve(once());
        return new Promise(() => {});
      }).catch(() => resolve(false));
    });
  }
}
