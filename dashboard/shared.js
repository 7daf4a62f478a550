// One stream for every tab of a browser. Browsers allow six HTTP/1.1 connections per host, and
// each EventSource holds one, so a seventh tab would never load. Instead the tabs elect a leader
// with the Web Locks API; the leader holds the Connection (EventSource + polling) and relays what
// it gets to the other tabs over a BroadcastChannel. When the leader closes, its lock is released
// and the next tab in the lock's queue takes over, resuming the stream from the last id it applied
// (so nothing is missed, and ids at or below it are dropped, so nothing is doubled).
// Where either API is missing, each tab connects by itself ("solo"). Pure of the DOM.
import { Connection, seen } from "./connection.js";

const ASK_EVERY_MS = 500;   // a tab without state asks for it this often until someone answers

export class SharedStream {
  // options: {server, token (names the shared stream only), headers, transport, onEvent(e), onSnapshots(runs, {reset}), onStatus(state),
  //           onOutage(info|null), onRole(role), getSnapshots() -> [snapshot], locks, Channel, makeConnection}
  constructor(options) {
    this.o = { locks: globalThis.navigator?.locks, Channel: globalThis.BroadcastChannel,
      makeConnection: (opts) => new Connection(opts), ...options };
    // Tabs share a stream only when they would have opened the same one (same sidecar, transport
    // and token): a tab never sees what its own URL would not let it read.
    this.name = `loop-stream ${this.o.server} ${this.o.transport || "sse"} ${this.o.token || ""}`;
    this.id = Math.random().toString(36).slice(2);
    this.role = null;          // "leader" | "follower" | "solo"
    this.cursor = null;        // the last event id this tab applied
    this.hasState = false;
    this.connection = null;
    this.channel = null;
    this.status = null;
    this.outage = null;
    this.askTimer = null;
  }

  start() {
    if (!this.o.locks || !this.o.Channel) {
      this.lead("solo");
      return;
    }
    this.channel = new this.o.Channel(this.name);
    this.channel.onmessage = (m) => this.onMessage(m.data);
    this.setRole("follower");
    this.ask();
    // Held until the tab goes away: the promise never settles, so the lock is released only then.
    this.o.locks.request(this.name, () => new Promise(() => this.lead("leader")));
  }

  setRole(role) {
    this.role = role;
    this.o.onRole?.(role);
  }

  // -- the leader: holds the connection, applies and relays ---------------------------------
  lead(role) {
    clearTimeout(this.askTimer);
    this.setRole(role);
    this.connection = this.o.makeConnection({
      server: this.o.server, headers: this.o.headers, transport: this.o.transport, cursor: this.cursor,
      onEvent: (event) => {
        this.apply(event);
        this.post({ kind: "event", event });
      },
      onSnapshots: (runs, info) => {
        this.cursor = this.connection.cursor;
        this.snapshots(runs, info);
        this.post({ kind: "snapshots", runs, cursor: this.connection.cursor, reset: Boolean(info?.reset) });
      },
      onStatus: (state) => {
        this.setStatus(state);
        this.post({ kind: "status", state });
      },
      onOutage: (info) => {
        this.setOutage(info);
        this.post({ kind: "outage", info });
      },
    });
    this.connection.start();
    // Tabs that joined while nobody led have no state yet: they asked, and now get an answer.
    if (this.hasState) this.answer(null);
  }

  post(message) {
    if (this.role === "leader") this.channel.postMessage(message);
  }

  answer(to) {
    this.post({ kind: "state", to, runs: this.o.getSnapshots(), cursor: this.cursor,
      state: this.status, outage: this.outage });
  }

  // -- every tab ----------------------------------------------------------------------------------
  apply(event) {
    if (seen(event.id, this.cursor)) return;
    this.cursor = event.id;
    this.o.onEvent?.(event);
  }

  snapshots(runs, info = {}) {
    this.hasState = true;
    this.o.onSnapshots?.(runs, info);
  }

  setStatus(state) {
    this.status = state;
    this.o.onStatus?.(state);
  }

  setOutage(info) {
    this.outage = info;
    this.o.onOutage?.(info);
  }

  // -- a follower ---------------------------------------------------------------------------------
  ask() {
    if (this.hasState || this.role !== "follower") return;
    this.channel.postMessage({ kind: "ask", from: this.id });
    this.askTimer = setTimeout(() => this.ask(), ASK_EVERY_MS);
  }

  onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.kind === "ask") {
      if (this.role === "leader" && this.hasState) this.answer(msg.from);
      return;
    }
    if (this.role !== "follower") return;
    const handler = {
      event: () => { if (this.hasState) this.apply(msg.event); },
      snapshots: () => {
        if (!msg.reset && !this.hasState) return;
        this.cursor = msg.cursor;
        this.snapshots(msg.runs, { reset: msg.reset });
      },
      state: () => {
        if (this.hasState || (msg.to && msg.to !== this.id)) return;
        this.cursor = msg.cursor;
        this.snapshots(msg.runs, { reset: true });
        if (msg.state) this.setStatus(msg.state);
        this.setOutage(msg.outage ?? null);
      },
      status: () => this.setStatus(msg.state),
      outage: () => this.setOutage(msg.info),
    }[msg.kind];
    handler?.();
  }
}
