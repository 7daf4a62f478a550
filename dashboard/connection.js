// One EventSource per page, with a polling fallback that carries the cursor over.
// Pure of the DOM: the page passes callbacks. Backoff arithmetic is tested in
// tests/js/connection.test.mjs.

export const BACKOFF_STEPS = [1, 2, 4, 8, 16, 30];
export const POLL_EVERY_S = 2;   // while the stream is down, and with ?transport=poll

// Seconds to wait before stream attempt n (0-based): 1, 2, 4, 8, 16, then 30 for ever.
export function backoffDelay(attempt) {
  const n = Math.max(0, Math.floor(attempt));
  return Math.min(30, 2 ** n);   // a power, not XOR (htmx once wrote 2 ^ n)
}

export const KNOWN_TYPES = [
  "task_started", "story_started", "ac_completed", "ac_failed", "story_completed", "task_completed",
  "error_occurred", "output", "progress", "stop_requested", "pause_requested", "resume_requested",
  "task_stopped", "task_paused", "task_resumed",
  "agent_init", "agent_text", "tool_call", "tool_result", "agent_result", "story_stalled",
];

// "1700000000000-42" -> [1700000000000, 42] (the epoch, the sequence in it); null for anything else.
export function parseId(id) {
  const m = /^(\d+)-(\d+)$/.exec(id || "");
  return m ? [Number(m[1]), Number(m[2])] : null;
}

// True when `id` was already applied by whoever's cursor is `cursor` (same epoch, not newer).
export function seen(id, cursor) {
  const a = parseId(id);
  const b = parseId(cursor);
  return Boolean(a && b && a[0] === b[0] && a[1] <= b[1]);
}

export class Connection {
  // options: {server, headers (sent with polls: Authorization for a sidecar on another origin),
  //           transport: "sse"|"poll", pollInterval (s), onEvent(e), onSnapshots(runs, {reset}),
  //           onStatus(state), onOutage(info|null), cursor (resume from), fetchImpl, EventSourceImpl,
  //           setTimeoutImpl, clearTimeoutImpl, now}
  // No token ever goes into a URL (proxies log URLs): the same-origin page holds a session cookie,
  // which the stream and the polls carry by themselves.
  // onOutage gets {since, retryAt, polling, pollOk, reason} (ms timestamps; reason: what the sidecar
  // said when it refused the stream, e.g. a 429's message) while the stream is down, null once back.
  constructor(options) {
    this.o = { pollInterval: POLL_EVERY_S, transport: "sse", fetchImpl: (...a) => fetch(...a),
      EventSourceImpl: globalThis.EventSource, setTimeoutImpl: (...a) => setTimeout(...a),
      clearTimeoutImpl: (t) => clearTimeout(t), now: () => Date.now(), ...options };
    this.cursor = this.o.cursor ?? null;   // the last event id applied (or the cursor a hello/reset gave)
    this.attempt = 0;
    this.es = null;
    this.pollTimer = null;
    this.retryTimer = null;
    this.polling = false;
    this.status = null;
    this.filling = null;
    this.outage = null;       // {since, retryAt, polling, pollOk, reason} while the sidecar cannot be streamed from
  }

  // Say what the page is doing while the stream is down (the banner), or that it is back (null).
  reportOutage(change) {
    if (change === null) {
      if (this.outage === null) return;
      this.outage = null;
    } else {
      this.outage = { since: this.o.now(), retryAt: null, polling: this.polling, pollOk: null, ...this.outage, ...change };
    }
    this.o.onOutage?.(this.outage && { ...this.outage });
  }

  url(path, params = {}) {
    const u = new URL(path, this.o.server || location.href);
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined) u.searchParams.set(k, v);
    return u.toString();
  }

  setStatus(state) {
    if (state !== this.status) {
      this.status = state;
      this.o.onStatus?.(state);
    }
  }

  start() {
    if (this.o.transport === "poll" || !this.o.EventSourceImpl) {
      this.startPolling();
    } else {
      this.openStream();
    }
  }

  stop() {
    this.es?.close();
    this.es = null;
    this.stopPolling();
    if (this.retryTimer) this.o.clearTimeoutImpl(this.retryTimer);
  }

  // -- the stream ---------------------------------------------------------------
  openStream() {
    this.retryTimer = null;
    const url = this.url("/stream/progress", { last_event_id: this.cursor });
    const es = new this.o.EventSourceImpl(url);
    this.es = es;
    es.onopen = () => {
      this.attempt = 0;
      this.stopPolling();
      this.setStatus("live");
      this.reportOutage(null);
    };
    es.onerror = () => {
      if (this.es !== es) return;
      es.close();                      // our own backoff, not the browser's fixed retry
      this.es = null;
      this.setStatus("reconnecting");
      this.startPolling();
      const delay = backoffDelay(this.attempt++);
      this.reportOutage({ retryAt: this.o.now() + delay * 1000, polling: true });
      this.retryTimer = this.o.setTimeoutImpl(() => this.openStream(), delay * 1000);
      this.askWhy(url);
    };
    es.addEventListener("hello", (m) => {
      const data = JSON.parse(m.data);
      this.cursor = data.cursor;      // before the callback, which may read it
      if (!data.resumed) this.o.onSnapshots?.(data.runs || [], { reset: true });
    });
    es.addEventListener("reset", (m) => {
      const data = JSON.parse(m.data);
      this.cursor = data.cursor;
      this.o.onSnapshots?.(data.runs || [], { reset: true, reason: data.reason });
    });
    es.addEventListener("heartbeat", (m) => this.checkGap(m.lastEventId));
    for (const type of KNOWN_TYPES) {
      es.addEventListener(type, (m) => this.receive(JSON.parse(m.data)));
    }
  }

  // EventSource hides why it failed. Ask the same URL once with fetch: a refusal's JSON message (a 429
  // naming the cap and what to do, a 401, a 503) goes to the outage banner; a stream that would open
  // now is cut at once. Nothing is said when the sidecar cannot be reached at all.
  async askWhy(url) {
    const abort = typeof AbortController === "function" ? new AbortController() : null;
    try {
      const response = await this.o.fetchImpl(url, { headers: this.o.headers || {}, signal: abort?.signal });
      if (response.ok) {
        abort?.abort();
        if (this.outage?.reason) this.reportOutage({ reason: null });
        return;
      }
      let body = null;
      try { body = await response.json(); } catch { /* not JSON: a proxy's page */ }
      const reason = body?.message || `${response.status} ${response.statusText || ""}`.trim();
      if (this.outage) this.reportOutage({ reason });
    } catch { /* unreachable, or cut by us */ }
  }

  // An event from either transport: apply it once, in order.
  receive(event) {
    if (seen(event.id, this.cursor)) return;
    const id = parseId(event.id);
    const cur = parseId(this.cursor);
    if (id && cur && id[0] === cur[0] && id[1] > cur[1] + 1) {
      // Ids are sequential within an epoch: the ones between were types this page has no
      // listener for. Fetch them, then this one, keeping the order.
      this.fill(event);
      return;
    }
    this.cursor = event.id;
    this.o.onEvent?.(event);
  }

  checkGap(lastEventId) {
    const id = parseId(lastEventId);
    const cur = parseId(this.cursor);
    if (id && cur && id[0] === cur[0] && id[1] > cur[1]) this.fill(null);
  }

  async fill(pending) {
    if (this.filling) {
      await this.filling;
      if (pending) this.receive(pending);
      return;
    }
    this.filling = this.pollOnce(pending ? parseId(pending.id)[1] : Infinity);
    try {
      await this.filling;
    } finally {
      this.filling = null;
    }
    if (pending) this.receive(pending);
  }

  // -- polling --------------------------------------------------------------------
  startPolling() {
    if (this.polling) return;
    this.polling = true;
    const tick = async () => {
      if (!this.polling) return;
      const ok = await this.pollOnce(Infinity);
      if (!this.polling) return;
      if (this.o.transport === "poll" || !this.es) this.setStatus(ok ? "polling" : "reconnecting");
      if (this.o.transport === "poll") {
        this.reportOutage(ok ? null : { retryAt: this.o.now() + this.o.pollInterval * 1000, polling: true, pollOk: false });
      } else if (this.outage) {
        this.reportOutage({ pollOk: ok });
      }
      this.pollTimer = this.o.setTimeoutImpl(tick, this.o.pollInterval * 1000);
    };
    tick();
  }

  stopPolling() {
    this.polling = false;
    if (this.pollTimer) this.o.clearTimeoutImpl(this.pollTimer);
    this.pollTimer = null;
  }

  // Read /api/events from the cursor (a first read asks from "0-0", which answers with a
  // reset carrying every snapshot and the head cursor). Applies events below `beforeSeq`.
  async pollOnce(beforeSeq) {
    try {
      for (let pages = 0; pages < 20; pages++) {
        const response = await this.o.fetchImpl(this.url("/api/events", { since: this.cursor || "0-0" }),
          { headers: this.o.headers || {} });
        if (!response.ok) return false;
        const page = await response.json();
        if (page.reset) {
          this.cursor = page.cursor;
          this.o.onSnapshots?.(page.runs || [], { reset: true, reason: "poll" });
          return true;
        }
        for (const event of page.events) {
          const id = parseId(event.id);
          if (id && id[1] >= beforeSeq) return true;
          if (!seen(event.id, this.cursor)) {
            this.cursor = event.id;
            this.o.onEvent?.(event);
          }
        }
        if (page.events.length < 1000) return true;   // a full page: there may be more
      }
      return true;
    } catch {
      return false;
    }
  }
}
